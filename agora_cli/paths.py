"""Where agora's files are: the prompt sets and configs it ships (from the repository in a source
tree, from inside the package in a wheel), `AGORA_HOME` for caches shared across runs, and a run
directory per run."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
DATA_DIR = PACKAGE_DIR / "data"
# The prompt sets (`prompts/`) and configs (`configs/`) live once, at the repository's top level.
# A source checkout (an editable install) reads them there; a wheel carries a copy of both under
# `agora_cli/_shipped/` (setup.py's build step puts them there), because an installed package has
# no repository beside it. This module is the one place that knows which of the two is in use.
SHIPPED_IN_PACKAGE = PACKAGE_DIR / "_shipped"
SHIPPED_DIR = SHIPPED_IN_PACKAGE if (SHIPPED_IN_PACKAGE / "prompts").is_dir() else REPO_DIR
PROMPTS_DIR = SHIPPED_DIR / "prompts"
CONFIGS_DIR = SHIPPED_DIR / "configs"


def resolve_shipped(value: str | Path) -> Path:
    """A path a config names (`prompts_dir`, a `chat_template` file): as given when it is absolute
    or exists (relative to the working directory), else the copy shipped with agora when there is
    one (`prompts/capable`, `configs/chat_templates/gemma3.jinja`), else as given (so the error
    names the user's own path). The same rule holds in a source tree and in a wheel."""
    path = Path(value)
    if path.is_absolute() or path.exists():
        return path
    shipped = SHIPPED_DIR / path
    return shipped if shipped.exists() else path


def resolve_extends(config_file: Path, parent: str) -> Path:
    """The file that `extends: PARENT` in `config_file` names: relative to the config file when it
    exists there, else the shipped config of that name (`extends: paper-mixed.yaml` in a copy made
    by `agora configs copy`), else the path relative to the file (missing: the caller reports it).
    A config beside the user's file therefore wins over the shipped one of the same name."""
    local = config_file.parent / parent
    if local.exists() or Path(parent).is_absolute() or ".." in Path(parent).parts:
        return local
    shipped = CONFIGS_DIR / parent
    return shipped if shipped.is_file() else local


def agora_home() -> Path:
    """Cache root (de-quantised models, merged adapters). Override with `AGORA_HOME`."""
    return Path(os.environ.get("AGORA_HOME", Path.home() / ".cache" / "agora")).expanduser()


def models_cache() -> Path:
    return agora_home() / "models"


def safe_join(root: Path, *parts: str) -> Path:
    """Join `parts` under `root` and refuse any result that escapes it (`..`, absolute parts)."""
    from agora_cli.errors import AgoraError

    root = root.resolve()
    out = root.joinpath(*parts).resolve()
    if out != root and root not in out.parents:
        raise AgoraError(f"path {'/'.join(parts)!r} escapes {root}")
    return out


class RunPaths:
    """The layout of one run directory. Everything a run writes lives below `root`."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    @property
    def store(self) -> Path:
        return self.root / "agora.sqlite"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def adapters(self) -> Path:
        return self.root / "adapters"

    @property
    def evals(self) -> Path:
        return self.root / "evals"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def servers(self) -> Path:
        """JSON file written by `agora serve` so other commands can attach to live servers."""
        return self.root / "servers.json"

    def adapter_dir(self, member: str, version: int) -> Path:
        return safe_join(self.adapters, member, f"v{version}")

    def ensure(self) -> RunPaths:
        for d in (self.root, self.logs, self.adapters, self.evals):
            d.mkdir(parents=True, exist_ok=True)
        return self
