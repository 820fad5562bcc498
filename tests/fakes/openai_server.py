"""A scripted OpenAI-compatible server for tests and benchmarks: real HTTP on 127.0.0.1.

    def responder(req: Request) -> str | Reply:
        return "VALID" if req.role == "verify" else r"x = 2, so \\boxed{4}"

    with FakeOpenAI(responder, latency_s=0.05) as fake:
        pool = ClientPool(resolve=lambda m: Endpoint(fake.url, model=m), limits=...)
        ...
        fake.requests  # everything received, in arrival order

The server is a small asyncio HTTP/1.1 server (keep-alive, Content-Length bodies) running its own
event loop in a background thread, so hundreds of concurrent requests each wait out `latency_s`
(and a reply's `delay_s`) concurrently, and a reply can drop the connection without answering,
which a framework server cannot do. Endpoints: POST /v1/chat/completions (non-streaming, with
usage token counts), GET /v1/models, GET /health.

Roles: `ClientPool.chat(..., role=...)` sends the role as the `X-Agora-Role` request header (the
prompts carry no marker a model could echo); `Request.role` is that header, or "chat" without it.
The responder runs on the server's event loop thread, one call at a time, so a stateful responder
(a counter, a list of canned replies) needs no lock of its own.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

ROLE_HEADER = "x-agora-role"  # lower-case: header names are read case-insensitively


@dataclass
class Request:
    """One chat request as the server received it."""

    model: str
    messages: list[dict]
    role: str
    body: dict = field(default_factory=dict)

    @property
    def system(self) -> str:
        return "\n".join(m.get("content") or "" for m in self.messages if m.get("role") == "system")

    @property
    def user(self) -> str:
        """The last user message (the prompt proper)."""
        users = [m.get("content") or "" for m in self.messages if m.get("role") == "user"]
        return users[-1] if users else ""

    @property
    def text(self) -> str:
        """All message contents joined, for `in` checks."""
        return "\n".join(str(m.get("content") or "") for m in self.messages)


@dataclass
class Reply:
    """What to answer. `status != 200` sends an OpenAI-style error; `drop` closes the connection.

    `wait_for` holds the reply until the event is set (at most `wait_timeout_s`), so a test
    orders requests by what happened, not by a sleep.
    """

    text: str = ""
    status: int = 200
    delay_s: float = 0.0
    drop: bool = False
    wait_for: threading.Event | None = None
    wait_timeout_s: float = 60.0
    cached_tokens: int | None = None  # reported as usage.prompt_tokens_details, as vLLM does


Responder = Callable[[Request], "str | Reply"]


def detect_role(headers: dict[str, str]) -> str:
    """The request's role: its X-Agora-Role header (names lower-cased), else "chat"."""
    return headers.get(ROLE_HEADER, "").strip() or "chat"


def _count_tokens(text: str) -> int:
    # Whitespace words: stable and cheap; tests only need a plausible non-zero count.
    return len(text.split())


def scripted(role_handlers: dict[str, Callable[[Request], str | Reply]]) -> Responder:
    """Dispatch by `Request.role`; a `"*"` handler catches other roles. Unknown role -> HTTP 400.

    A handler may also be a plain string (always that reply).
    """

    def respond(req: Request) -> str | Reply:
        handler = role_handlers.get(req.role, role_handlers.get("*"))
        if handler is None:
            return Reply(text=f"fake server has no handler for role {req.role!r}", status=400)
        return handler if isinstance(handler, str) else handler(req)

    return respond


class FakeOpenAI:
    """A real HTTP server on 127.0.0.1 (random free port) answering with `responder`."""

    def __init__(
        self,
        responder: Responder,
        latency_s: float = 0.0,
        *,
        models: Sequence[str] = ("fake",),
    ):
        self.responder = responder
        self.latency_s = latency_s
        self.models = list(models)
        self.requests: list[Request] = []
        self.port = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._conns: set[asyncio.Task] = set()

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL for the OpenAI client, e.g. http://127.0.0.1:PORT/v1."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAI:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="fake-openai", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise RuntimeError(f"fake OpenAI server failed to start: {self._error}")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(self._shutdown)
        thread.join(10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def requests_for(self, role: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.role == role]

    # -- server thread ------------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=2048)
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as e:  # noqa: BLE001 - reported by start()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _shutdown(self) -> None:
        assert self._loop is not None
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()

        async def _finish() -> None:
            if self._conns:
                await asyncio.gather(*self._conns, return_exceptions=True)
            if self._server is not None:
                await self._server.wait_closed()
            self._loop.stop()  # type: ignore[union-attr]

        self._loop.create_task(_finish())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    break
                method, path, _ = (request_line.decode("latin-1").split(" ", 2) + ["", ""])[:3]
                headers: dict[str, str] = {}
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = line.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0") or 0)
                body = await reader.readexactly(length) if length else b""
                keep = await self._dispatch(method, path.split("?", 1)[0], headers, body, writer)
                if not keep or headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._conns.discard(task)
            try:
                writer.close()
            except Exception:  # noqa: BLE001
                pass

    async def _dispatch(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Answer one request; False when the connection must be closed."""
        if method == "GET" and path in ("/health", "/v1/health"):
            return await self._send(writer, 200, {"status": "ok"})
        if method == "GET" and path == "/v1/models":
            data = [{"id": m, "object": "model", "owned_by": "fake"} for m in self.models]
            return await self._send(writer, 200, {"object": "list", "data": data})
        if method == "POST" and path == "/v1/chat/completions":
            return await self._chat(headers, body, writer)
        return await self._send(writer, 404, _error(f"no route {method} {path}", 404))

    async def _chat(self, headers: dict[str, str], raw: bytes, writer: asyncio.StreamWriter) -> bool:
        try:
            body: dict[str, Any] = json.loads(raw or b"{}")
            messages = list(body.get("messages") or [])
        except (ValueError, TypeError):
            return await self._send(writer, 400, _error("body is not JSON", 400))
        req = Request(
            model=str(body.get("model", "")),
            messages=messages,
            role=detect_role(headers),
            body=body,
        )
        with self._lock:
            self.requests.append(req)
        try:
            out = self.responder(req)
        except Exception as e:  # noqa: BLE001 - a failing responder is a 500, like a real server
            out = Reply(text=f"responder raised {type(e).__name__}: {e}", status=500)
        reply = out if isinstance(out, Reply) else Reply(text=str(out))
        if reply.wait_for is not None:
            await asyncio.to_thread(reply.wait_for.wait, reply.wait_timeout_s)
        wait = self.latency_s + reply.delay_s
        if wait > 0:
            await asyncio.sleep(wait)
        if reply.drop:
            writer.transport.abort()  # no response at all: the client sees a broken connection
            return False
        if reply.status != 200:
            return await self._send(writer, reply.status, _error(reply.text, reply.status))
        prompt_tokens = sum(_count_tokens(str(m.get("content") or "")) for m in messages)
        completion_tokens = _count_tokens(reply.text)
        payload = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        if reply.cached_tokens is not None:
            payload["usage"]["prompt_tokens_details"] = {"cached_tokens": reply.cached_tokens}
        return await self._send(writer, 200, payload)

    async def _send(self, writer: asyncio.StreamWriter, status: int, payload: dict) -> bool:
        data = json.dumps(payload).encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n"
            "Connection: keep-alive\r\n\r\n"
        ).encode()
        writer.write(head + data)
        await writer.drain()
        return True


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    408: "Request Timeout",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def _error(message: str, status: int) -> dict:
    return {"error": {"message": message, "type": "fake_error", "code": status}}


def pool_for(
    fake: FakeOpenAI,
    members: Sequence[str],
    *,
    max_retries: int = 1,
    max_concurrency: int = 64,
    timeout_s: float = 30.0,
    bus: Any = None,
) -> Any:
    """A real `ClientPool` whose every member resolves to `fake` (model name = member name)."""
    from agora_cli.client import ClientPool, MemberLimits
    from agora_cli.config import ClientSettings
    from agora_cli.endpoint import Endpoint
    from agora_cli.events import NULL_BUS

    return ClientPool(
        resolve=lambda m: Endpoint(fake.url, model=m),
        limits={m: MemberLimits(max_concurrency=max_concurrency, timeout_s=timeout_s) for m in members},
        settings=ClientSettings(max_retries=max_retries, backoff_initial_s=0.01, backoff_max_s=0.05),
        bus=bus if bus is not None else NULL_BUS,
    )
