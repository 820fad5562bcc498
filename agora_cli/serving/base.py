"""The one protocol every serving backend implements.

A backend is a configured instance (not a subclass tree): it knows how to start the servers a set
of members needs, wait for health, stop them, say which endpoint and model name a member's requests
use, and make a trained adapter live for a member. The orchestrator only ever talks to the returned
endpoints through `openai.AsyncOpenAI` (see `agora_cli.client`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class Endpoint:
    """Where one member's requests go. `api_key` is resolved at runtime, never written anywhere."""

    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str  # the `model` field of requests for this member
    api_key: str = "agora-local"
    extra_body: dict[str, Any] = field(default_factory=dict, hash=False)  # added to each request

    def __repr__(self) -> str:  # keep keys out of logs and tracebacks
        return f"Endpoint(base_url={self.base_url!r}, model={self.model!r})"


class ServingBackend(Protocol):
    """Lifecycle and routing for the members served by one configured backend."""

    name: str  # the key under `backends:` in the config

    def start(self) -> None:
        """Start (or attach to) every server these members need; return when all are healthy.

        Raises ServerError naming the log file when a server does not become healthy in time.
        """

    def health(self) -> bool:
        """True when every server answers its health check."""

    def stop(self) -> None:
        """Stop servers this process started (idempotent, also on Ctrl-C)."""

    def endpoint(self, member: str) -> Endpoint:
        """The endpoint and model name to use for `member` right now (changes after activate)."""

    def activate(self, member: str, adapter_dir: Path, version: int) -> Endpoint:
        """Make `adapter_dir` (a PEFT adapter, version `version`) live for `member`.

        Returns the member's new endpoint. Requests already in flight finish on the old model;
        no request is lost. Raises ServerError when the engine rejects the adapter.
        """

    def describe(self) -> list[str]:
        """Human-readable lines: commands that would be run / URLs served (for --dry-run)."""
