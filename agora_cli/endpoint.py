"""Where one member's requests go: the plain value a serving backend hands the client pool.

Its own module, below both `client.py` and `serving/`, so the client needs nothing from serving.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

NO_KEY = "agora-local"  # the key sent to servers that want none (local servers accept any key)


@dataclass(frozen=True)
class Endpoint:
    """Where one member's requests go. `api_key` is resolved at runtime, never written anywhere."""

    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str  # the `model` field of requests for this member
    api_key: str = NO_KEY
    extra_body: dict[str, Any] = field(default_factory=dict, hash=False)  # added to each request

    def __repr__(self) -> str:  # keep keys out of logs and tracebacks
        return f"Endpoint(base_url={self.base_url!r}, model={self.model!r})"
