"""Where agora keeps state: `AGORA_HOME` for caches shared across runs, a run directory per run."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
DATA_DIR = PACKAGE_DIR / "data"
# One Jinja template per role lives in the repo's top-level `prompts/` (docs/architecture.md); the
# package is installed editable (`pip install -e .`), and a config may point `prompts_dir` elsewhere.
PROMPTS_DIR = REPO_DIR / "prompts"
CONFIGS_DIR = REPO_DIR / "configs"


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
