"""API keys of the servers agora talks to, read from the environment variable a backend names.

The one home of that rule for the `openai`, `sglang` (servers run with `--api-key`) and `vllm`
backends: the key is read at start and lives only in memory. It never reaches logs, files, events
or reprs (`Endpoint.__repr__` hides it).
"""

from __future__ import annotations

import os

from agora_cli.errors import ServerError


def api_key(backend: str, env: str | None) -> str | None:
    """The key in `$env`, or None when the backend names no variable. A named variable that is
    unset or empty is an error now, before any request, rather than a 401 later."""
    if not env:
        return None
    value = os.environ.get(env)
    if not value:
        raise ServerError(
            f"backend {backend!r} reads its API key from ${env}, which is not set; "
            f"export {env}=... and run the command again"
        )
    return value


def bearer(key: str | None) -> dict[str, str]:
    """The HTTP headers that carry `key` (none without one)."""
    return {"Authorization": f"Bearer {key}"} if key else {}
