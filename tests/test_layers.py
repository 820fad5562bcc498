"""Arrows point down: agora's modules form layers, and no import reaches from a layer to one above.

The layers, bottom to top (a module belongs to the layer of the longest name in `LAYERS` that is
it or a package above it; every module must belong to one):

    base            errors, paths, shipped, stats, datasets, store, events, endpoint, lora_names, runlock,
                    model_facts, packing (folders as bytes), ray_cluster (joining Ray)
    config          the run configuration (schema, GPU plan, checks, loading)
    clients         models (weights on disk), client (HTTP to the members)
    protocol        the protocol's stages, prompts, answers
    records         steps (the loop's SQL), anchor_store (the anchors'), report_store (the report's
                    reads), audit (tallies)
    engines         serving, training, evaluation, metric_logging (the TensorBoard sink)
    loop            commit, step (the variants: AGORA, isolated, probes), loop: one step
    orchestration   runner (a run, resumes, rounds between steps), ablate (drives many runs)
    views           ui: live, plain and status views of a run's events and store
    cli             the commands

A module may import from its own layer or any layer below. Imports are read from the source
(`tests.test_imports.imports`), so a function-level import and one under `if TYPE_CHECKING:`
count like a module-level one: each is a dependency all the same. Importing `agora_cli.a.b` also
runs `agora_cli/a/__init__.py`, so that package is checked too.

An upward import is allowed only when `ALLOWED` names it with the reason; a new one needs a reason
a reviewer accepts, or the shared piece moves down to a layer both can import.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agora_cli.paths import PACKAGE_DIR
from tests.test_imports import ROOT, imports, module_names

pytestmark = pytest.mark.unit

# Bottom to top: (layer, the modules and packages in it, without the `agora_cli.` prefix).
LAYERS: list[tuple[str, list[str]]] = [
    (
        "base",
        [
            "",
            "errors",
            "paths",
            "shipped",
            "stats",
            "datasets",
            "store",
            "events",
            "endpoint",
            "lora_names",
            "runlock",
            "model_facts",
            "packing",
            "ray_cluster",
        ],
    ),
    ("config", ["config"]),
    ("clients", ["models", "client"]),
    ("protocol", ["protocol"]),
    ("records", ["steps", "anchor_store", "report_store", "audit"]),
    ("engines", ["serving", "training", "evaluation", "metric_logging"]),
    ("loop", ["commit", "step", "loop"]),
    ("orchestration", ["runner", "ablate"]),
    ("views", ["ui"]),
    ("cli", ["cli", "__main__"]),
]

# (importer, imported module) -> why this upward import is allowed. Importing the module also
# runs its packages' __init__ files, which the allowance covers.
ALLOWED: dict[tuple[str, str], str] = {
    ("agora_cli.config.checks", "agora_cli.protocol.prompts"): (
        "`agora validate` renders the prompt set a config names, so a broken template is a config "
        "error listed with the others; protocol.prompts itself imports only base modules and the "
        "import is inside the check, so loading a config does not load the protocol"
    ),
}


def _full(short: str) -> str:
    return f"{ROOT}.{short}" if short else ROOT


def layer_of(module: str, layers: list[tuple[str, list[str]]] = LAYERS) -> int | None:
    """Index of the layer `module` belongs to (longest matching name), None when none matches."""
    best: tuple[int, int] | None = None  # (length of the matching name, layer index)
    for index, (_, names) in enumerate(layers):
        for short in names:
            full = _full(short)
            # The package root ("") is its own `__init__` only, never a catch-all for new modules.
            if module == full or (short and module.startswith(full + ".")):
                if best is None or len(full) > best[0]:
                    best = (len(full), index)
    return None if best is None else best[1]


def upward_imports(
    package_dir: Path,
    layers: list[tuple[str, list[str]]] = LAYERS,
    allowed: dict[tuple[str, str], str] = ALLOWED,
) -> list[str]:
    """One line per import from a lower layer to a higher one that `allowed` does not name."""
    found = []
    for imp in imports(package_dir):
        if (imp.importer, imp.target) in allowed:
            continue
        here = layer_of(imp.importer, layers)
        assert here is not None, f"{imp.importer} is in no layer"
        for dep in sorted({imp.target} | imp.runs):
            there = layer_of(dep, layers)
            assert there is not None, f"{dep} is in no layer"
            if there > here:
                rel = imp.path.relative_to(package_dir.parent)
                found.append(
                    f"{rel}:{imp.lineno}: {imp.importer} ({layers[here][0]}) imports {dep} "
                    f"({layers[there][0]}): {imp.line.strip()}"
                )
    return found


def test_every_module_is_in_a_layer() -> None:
    """A new module must be placed; one outside every layer would escape the check."""
    unplaced = sorted(m for m in module_names(PACKAGE_DIR) if layer_of(m) is None)
    assert not unplaced, f"add these modules to a layer in LAYERS: {unplaced}"


def test_no_import_points_up_a_layer() -> None:
    found = upward_imports(PACKAGE_DIR)
    assert not found, "imports from a lower layer to a higher one (see this file's docstring):\n" + "\n".join(
        found
    )


def test_every_allowed_upward_import_still_exists() -> None:
    """An allowance whose import is gone would silently permit the next one."""
    seen = {(imp.importer, imp.target) for imp in imports(PACKAGE_DIR)}
    stale = sorted(key for key in ALLOWED if key not in seen)
    assert not stale, f"ALLOWED names imports that no longer exist; remove them: {stale}"
    for importer, target in ALLOWED:
        here, there = layer_of(importer), layer_of(target)
        assert here is not None and there is not None and there > here, (
            f"{importer} -> {target} is not an upward import; remove it from ALLOWED"
        )


# --------------------------------------------------------------------------- the checker itself


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    pkg = tmp_path / ROOT
    for rel, text in files.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return pkg


TOY_LAYERS: list[tuple[str, list[str]]] = [("low", ["", "low"]), ("mid", ["mid"]), ("top", ["top"])]


def test_the_checker_flags_upward_imports_at_every_level(tmp_path: Path) -> None:
    """Module level, function level, TYPE_CHECKING, relative, and a package __init__ it runs."""
    pkg = _package(
        tmp_path,
        {
            "__init__.py": "",
            "low.py": "from agora_cli.mid import thing\n",  # module level
            "mid/__init__.py": "thing = 1\n",
            "mid/lazy.py": "def f():\n    from agora_cli import top\n",  # function level
            "mid/typed.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import agora_cli.top.leaf\n"
            ),
            "mid/rel.py": "from ..top import leaf\n",  # relative
            "mid/down.py": "from agora_cli.low import x\n",  # downward: fine
            "top/__init__.py": "",
            "top/leaf.py": "from agora_cli.mid import down\n",  # downward: fine
        },
    )
    found = upward_imports(pkg, TOY_LAYERS, {})
    flagged = sorted(line.split(": ")[1] for line in found)
    assert flagged == [
        "agora_cli.low (low) imports agora_cli.mid (mid)",
        "agora_cli.mid.lazy (mid) imports agora_cli.top (top)",
        "agora_cli.mid.rel (mid) imports agora_cli.top (top)",
        "agora_cli.mid.rel (mid) imports agora_cli.top.leaf (top)",
        "agora_cli.mid.typed (mid) imports agora_cli.top (top)",
        "agora_cli.mid.typed (mid) imports agora_cli.top.leaf (top)",
    ]
    # An allowance covers exactly its import (and the packages it runs), nothing else.
    allowed = {("agora_cli.mid.rel", "agora_cli.top.leaf"): "test"}
    assert len(upward_imports(pkg, TOY_LAYERS, allowed)) == len(found) - 2


def test_a_planted_upward_import_in_a_copy_of_agora_fails(tmp_path: Path) -> None:
    """The real layers on a copy of the package with one lazy upward import planted."""
    copy = _package(
        tmp_path,
        {
            str(path.relative_to(PACKAGE_DIR)): path.read_text()
            for path in PACKAGE_DIR.rglob("*.py")
            if "__pycache__" not in path.parts
        },
    )
    assert upward_imports(copy) == []
    stats = copy / "stats.py"
    stats.write_text(stats.read_text() + "\n\ndef _planted():\n    from agora_cli.runner import run\n")
    found = upward_imports(copy)
    assert len(found) == 1
    assert "agora_cli.stats (base) imports agora_cli.runner (orchestration)" in found[0]
    assert found[0].startswith("agora_cli/stats.py:")
