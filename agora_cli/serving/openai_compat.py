"""The `openai` backend: any OpenAI-compatible endpoint named by URL.

Nothing is launched. The API key is read from the environment variable named by `api_key_env` at
start and lives only in memory: it never reaches logs, files, events or reprs (`Endpoint.__repr__`
hides it). Such members cannot load adapters (config validation already rejects LoRA on them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agora_cli.config import Config, Member, OpenAIBackend
from agora_cli.endpoint import NO_KEY, Endpoint
from agora_cli.errors import ServerError
from agora_cli.events import NULL_BUS, EventBus
from agora_cli.paths import RunPaths
from agora_cli.serving.keys import api_key, bearer
from agora_cli.serving.process import http
from agora_cli.serving.registry import register


class OpenAIServing:
    """Members served by one remote OpenAI-compatible endpoint."""

    def __init__(
        self,
        name: str,
        cfg: OpenAIBackend,
        members: list[Member],
        run_paths: RunPaths,
        bus: EventBus = NULL_BUS,
    ):
        self.name = name
        self.cfg = cfg
        self.members = {m.name: m for m in members}
        self.run_paths = run_paths
        self.bus = bus
        self._key: str | None = None

    def __repr__(self) -> str:
        return f"OpenAIServing(name={self.name!r}, base_url={self.cfg.base_url!r})"

    def _api_key(self) -> str:
        if self._key is None:  # read once, at start; kept in memory only
            self._key = api_key(self.name, self.cfg.api_key_env) or NO_KEY
        return self._key

    def start(self) -> None:
        self._api_key()  # fail now, not on the first request

    def attach(self, state: dict[str, Any]) -> bool:
        self._api_key()
        return True

    def state(self) -> dict[str, Any]:
        return {"kind": "openai", "base_url": self.cfg.base_url}  # never the key

    def health(self) -> bool:
        """True when the endpoint answers `GET /models` without a server error."""
        try:
            r = http(
                "GET",
                f"{self.cfg.base_url.rstrip('/')}/models",
                timeout=5.0,
                headers=bearer(self._api_key()),
            )
        except OSError:
            return False
        return r.status < 500

    def stop(self) -> None:
        pass

    def endpoint(self, member: str) -> Endpoint:
        return Endpoint(base_url=self.cfg.base_url, model=self.members[member].model, api_key=self._api_key())

    def activate(self, member: str, adapter_dir: Path, version: int) -> Endpoint:
        raise ServerError(
            f"member {member!r} is served by the OpenAI-compatible backend {self.name!r}, which "
            "cannot load LoRA adapters; set ablations.lora: false or serve it with "
            "transformers/sglang"
        )

    def describe(self) -> list[str]:
        key = f"key from ${self.cfg.api_key_env}" if self.cfg.api_key_env else "no key"
        models = ", ".join(f"{m.name}={m.model}" for m in self.members.values())
        return [f"{self.cfg.base_url} (OpenAI-compatible, {key}): {models}"]


@register(OpenAIBackend)
def build(
    name: str, spec: OpenAIBackend, members: list[Member], run_paths: RunPaths, bus: EventBus, config: Config
) -> OpenAIServing:
    """The `openai` backend named `name` (registered in serving/registry.py)."""
    return OpenAIServing(name, spec, members, run_paths, bus)
