"""Arrows point down: no import cycle between agora's own modules, and any import order works.

The graph is read from the source (ast), not from a running interpreter, so a cycle hidden behind
a function-level (lazy) import or an `if TYPE_CHECKING:` block counts too: a lazy import is
still a dependency, and a cycle through one is a design knot that only waits for someone to move
the import to the top. An import whose line carries the marker `# import-cycle-ok: <why>` is left
out; no module uses it today, and a new one should need a reason a reviewer accepts.

Edges: `import agora_cli.a.b` and `from agora_cli.a import b` (b a module) point at the module;
`from agora_cli.a import name` points at the package `agora_cli.a`. Importing `agora_cli.a.b`
also runs the package `agora_cli/a/__init__.py`, so the importer gets an edge to each package
above the target as well, except its own enclosing packages (they are already importing).
"""

from __future__ import annotations

import ast
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agora_cli.paths import PACKAGE_DIR

MARKER = "# import-cycle-ok:"
ROOT = "agora_cli"


def module_names(package_dir: Path) -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(base: str, names: list[str], modules: dict[str, Path]) -> list[str]:
    """Targets of `from base import names` (or `import base` when names is empty)."""
    if not names:
        return [base] if base in modules else []
    out = []
    for n in names:
        sub = f"{base}.{n}"
        if sub in modules:
            out.append(sub)
        elif base in modules:
            out.append(base)
    return out


@dataclass(frozen=True)
class Import:
    """One import statement of an agora module, resolved."""

    importer: str  # dotted module name
    path: Path
    lineno: int
    line: str  # the source line (for markers and messages)
    target: str  # the agora module it names
    runs: frozenset[str]  # what importing it runs besides: packages above it, not the importer's own


def imports(package_dir: Path) -> Iterator[Import]:
    """Every import of an agora module, at any level of the file (see the module doc)."""
    modules = module_names(package_dir)
    for name, path in modules.items():
        source = path.read_text()
        lines = source.splitlines()
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(source, str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == ROOT:
                        targets += _resolve(alias.name, [], modules)
            else:
                if node.level:  # relative: from the importer's package upward
                    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                    pkg = pkg[: len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                if base.split(".")[0] != ROOT:
                    continue
                targets += _resolve(base, [a.name for a in node.names], modules)
            own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
            if is_pkg:
                own.add(name)
            for t in dict.fromkeys(targets):  # `from m import a, b` names m once
                parts = t.split(".")
                above = {".".join(parts[:i]) for i in range(1, len(parts))}
                runs = frozenset(dep for dep in above - own if dep != name and dep in modules)
                yield Import(name, path, node.lineno, lines[node.lineno - 1], t, runs)


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """module -> the agora modules it imports, at any level of the file (see the module doc)."""
    graph: dict[str, set[str]] = {m: set() for m in module_names(package_dir)}
    for imp in imports(package_dir):
        if MARKER in imp.line:
            continue
        graph[imp.importer] |= {dep for dep in {imp.target} | imp.runs if dep != imp.importer}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def a_cycle(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    """One concrete cycle inside a component, for the failure message."""
    members = set(comp)
    start = comp[0]
    path = [start]
    seen = {start}
    while True:
        nxt = sorted(w for w in graph[path[-1]] if w in members)
        back = [w for w in nxt if w in seen]
        if back:
            return path[path.index(back[0]) :] + [back[0]]
        path.append(nxt[0])
        seen.add(nxt[0])


@pytest.mark.unit
def test_the_graph_sees_what_a_cycle_needs(tmp_path: Path) -> None:
    """The reader itself: lazy, TYPE_CHECKING, relative and package-__init__ edges all count."""
    pkg = tmp_path / ROOT
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from agora_cli import b\n")  # lazy
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from agora_cli.a import f\n"
    )
    (pkg / "sub" / "__init__.py").write_text("from .leaf import X\n")
    (pkg / "sub" / "leaf.py").write_text("X = 1\n")
    (pkg / "c.py").write_text("from agora_cli.sub.leaf import X\n")
    (pkg / "d.py").write_text("import agora_cli.c  # import-cycle-ok: test of the marker\n")
    g = import_graph(pkg)
    assert g["agora_cli.a"] == {"agora_cli.b"}
    assert g["agora_cli.b"] == {"agora_cli.a"}
    assert g["agora_cli.sub"] == {"agora_cli.sub.leaf"}  # its own package is not an edge
    assert g["agora_cli.sub.leaf"] == set()
    assert g["agora_cli.c"] == {"agora_cli.sub.leaf", "agora_cli.sub"}  # runs sub/__init__
    assert g["agora_cli.d"] == set()
    assert cycles(g) == [["agora_cli.a", "agora_cli.b"]]


@pytest.mark.unit
def test_no_import_cycle_between_agora_modules() -> None:
    graph = import_graph(PACKAGE_DIR)
    assert len(graph) > 50  # the whole package was read
    found = cycles(graph)
    assert not found, "import cycles (arrows must point down; see docs/contributing.md):\n" + "\n".join(
        " -> ".join(a_cycle(graph, comp)) for comp in found
    )


def importable_modules() -> list[str]:
    """Every module but `agora_cli.__main__`, which runs the CLI when imported (by design)."""
    return sorted(m for m in module_names(PACKAGE_DIR) if not m.endswith(".__main__"))


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_DIR.parent)}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=PACKAGE_DIR.parent,
    )


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_each_module_imports_first_in_a_fresh_interpreter() -> None:
    """Every module imported on its own, with no agora module loaded before it."""
    names = importable_modules()
    code = f"""
import importlib, sys
failed = []
for name in {names!r}:
    for loaded in [m for m in sys.modules if m == "agora_cli" or m.startswith("agora_cli.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as e:
        failed.append(f"{{name}}: {{type(e).__name__}}: {{e}}")
print("\\n".join(failed))
"""
    res = _run(code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "", res.stdout


# Two orders drawn from the session's seed (tests/conftest.py): fresh ones each session, yet the
# same test ids in every pytest-xdist worker.
SEEDS = random.Random(int(os.environ["AGORA_TEST_SEED"])).sample(range(10**6), 2)


@pytest.mark.integration
@pytest.mark.timeout(600)
@pytest.mark.parametrize("seed", SEEDS)
def test_all_modules_import_in_a_random_order(seed: int) -> None:
    """All modules in one fresh interpreter, in a random order (the seed is in the test id)."""
    names = importable_modules()
    random.Random(seed).shuffle(names)
    res = _run("import importlib\n" + "".join(f"importlib.import_module({n!r})\n" for n in names))
    assert res.returncode == 0, f"seed {seed}: {res.stderr[-2000:]}"
