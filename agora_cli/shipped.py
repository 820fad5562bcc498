"""The configs that ship with agora: list them with a one-line description, write an editable copy.

They are read from agora_cli/paths.py's CONFIGS_DIR (the repository's `configs/` in a source tree,
the copy inside the package in a wheel). A config's name is its path below that folder
(`tiny.yaml`, `ablations/no-fem.yaml`); its description is the first sentence of its header
comment, after the line holding the command that runs it.

A copy keeps its comments and stays a config of its own: a config that `extends:` another shipped
config has that line rewritten to the parent's shipped name (`ablations/no-fem.yaml`'s
`../paper-mixed.yaml` becomes `paper-mixed.yaml`), which config loading resolves beside the copy
first and then among the shipped configs (paths.resolve_extends). So the copy validates anywhere,
follows the installed agora's parent, and a parent copied beside it (to edit both) wins.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from agora_cli.errors import AgoraError, ShippedConfigError
from agora_cli.paths import CONFIGS_DIR

_EXTENDS = re.compile(r"^extends:[ \t]*(?P<q>['\"]?)(?P<value>[^'\"#\n]+?)(?P=q)[ \t]*(?P<rest>#.*)?$", re.M)
_SENTENCE_END = re.compile(r"\s+[A-Z`\"']")


@dataclass(frozen=True)
class ShippedConfig:
    name: str  # the path below CONFIGS_DIR, e.g. "ablations/no-fem.yaml"
    path: Path
    description: str


def describe(text: str) -> str:
    """The one-line description in a config's header comment: the first sentence of the first
    paragraph after the `# agora run ...` line ("" when the header has none)."""
    paragraph: list[str] = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        body = line.lstrip("#").strip()
        if body.startswith("agora ") and not paragraph:
            continue  # the command that runs the config
        if not body:
            if paragraph:
                break
            continue
        paragraph.append(body)
    return _first_sentence(" ".join(paragraph))


def _first_sentence(text: str) -> str:
    """Up to the first `.`, `!` or `?` outside brackets that a capital letter follows (so "e.g. 1.5x"
    and "(see README. Then ...)" do not end it)."""
    depth = 0
    for i, ch in enumerate(text):
        depth += (ch in "([{") - (ch in ")]}")
        if ch in ".!?" and depth <= 0 and _SENTENCE_END.match(text, i + 1):
            return text[: i + 1]
    return text


def shipped_configs() -> list[ShippedConfig]:
    """Every shipped config, top-level ones first, each with its description."""
    paths = sorted(CONFIGS_DIR.rglob("*.yaml"), key=lambda p: (len(p.relative_to(CONFIGS_DIR).parts), p))
    if not paths:  # a wheel built without setup.py's step that ships them
        raise AgoraError(
            f"no shipped configs in {CONFIGS_DIR}: this agora install is incomplete; reinstall it"
        )
    return [
        ShippedConfig(p.relative_to(CONFIGS_DIR).as_posix(), p, describe(p.read_text(encoding="utf-8")))
        for p in paths
    ]


def find_config(name: str) -> ShippedConfig:
    """The shipped config called `name` (`.yaml` may be left off); an error listing every name
    otherwise."""
    configs = shipped_configs()
    wanted = name.removeprefix("configs/")
    for c in configs:
        if wanted in (c.name, c.name.removesuffix(".yaml")):
            return c
    raise ShippedConfigError(
        f"no shipped config {name!r}; shipped: {', '.join(c.name for c in configs)} "
        "(`agora configs list` describes them)"
    )


def copy_text(config: ShippedConfig, dest: Path) -> str:
    """The text of an editable copy of `config` at `dest`: the same file, with its `extends:`
    naming the shipped parent and its run command naming the copy."""
    text = config.path.read_text(encoding="utf-8")
    match = _EXTENDS.search(text)
    if match:
        parent = (config.path.parent / match["value"]).resolve()
        if parent.is_relative_to(CONFIGS_DIR.resolve()):
            rest = f"  {match['rest']}" if match["rest"] else ""
            line = f"extends: {parent.relative_to(CONFIGS_DIR.resolve()).as_posix()}{rest}"
            text = text[: match.start()] + line + text[match.end() :]
    return re.sub(
        rf"^# agora run configs/{re.escape(config.name)}$", f"# agora run {dest}", text, count=1, flags=re.M
    )


def copy_config(name: str, dest: Path | str, force: bool = False) -> tuple[ShippedConfig, Path]:
    """Write an editable copy of the shipped config `name` to `dest` (a file, or a directory to
    put it in under its own file name). Refuses to overwrite an existing file unless `force`."""
    config = find_config(name)
    as_dir = str(dest).endswith(("/", os.sep)) or Path(dest).is_dir()  # `DIR/` names a folder to make
    dest = Path(dest) / config.path.name if as_dir else Path(dest)
    if dest.exists() and not force:
        raise ShippedConfigError(f"{dest} exists; pass --force to overwrite it, or choose another path")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(copy_text(config, dest), encoding="utf-8")
    return config, dest
