"""The one protocol every serving backend implements.

A backend is a configured instance (not a subclass tree): it knows how to start the servers a set
of members needs, wait for health, stop them, say which endpoint and model name a member's requests
use, and make a trained adapter live for a member. The orchestrator only ever talks to the returned
endpoints through `openai.AsyncOpenAI` (see `agora_cli.client`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from agora_cli.endpoint import Endpoint  # noqa: F401 - what every backend returns; re-exported


class ServingBackend(Protocol):
    """Lifecycle and routing for the members served by one configured backend."""

    name: str  # the key under `backends:` in the config

    def start(self) -> None:
        """Start (or attach to) every server these members need; return when all are healthy.

        Raises ServerError naming the log file when a server does not become healthy in time.
        """

    def attach(self, state: dict[str, Any]) -> bool:
        """Use the servers another agora process recorded (`state`, as its `state()` returned)
        instead of starting them; False, with nothing attached, when they are not all healthy."""

    def state(self) -> dict[str, Any]:
        """What `attach` needs to reach this backend's live servers (JSON-serialisable); written to
        the run's servers file by `agora serve`."""

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
