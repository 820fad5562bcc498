"""A fake SGLang server: real HTTP on 127.0.0.1, SGLang's LoRA endpoints and error semantics.

    with FakeSGLang(base_model="/models/smol") as fake:
        cfg backend: {kind: sglang, launch: false, urls: {"/models/smol": fake.url}}
        ...
        fake.calls      # [("load", "smol-a-v1"), ("unload", "smol-a-v0"), ("chat", "smol-a-v1"), ...]
        fake.adapters   # lora_name -> lora_path currently loaded

Endpoints (as SGLang's http_server.py): GET /health, GET /v1/models (the base model, then each
loaded adapter with `root` = its path and `parent` = the base), POST /v1/chat/completions (`model`
is `<base>` or `<base>:<lora_name>`; the reply text names the adapter that served it),
POST /load_lora_adapter (400 `{"success": false, "error_message": "... already loaded"}` for a
name already loaded; 400 when the path does not exist), POST /unload_lora_adapter (400 for an
unknown name).

`responder` (the scripted responders of `tests.fakes.openai_server`, routed on the request's
X-Agora-Role header) writes the chat replies of a whole loop; `load_delay_s` stalls loads (a
hot-swap in progress); `loads` lists the adapter names asked to load. `hold(name)` keeps chat
requests on adapter `name` waiting until `release(name)`; `timeline` is `calls` with
("chat-done", name) added when such a request answers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from agora_cli.serving.process import free_port
from tests.fakes.openai_server import Reply, Responder, detect_role
from tests.fakes.openai_server import Request as ChatRequest


class FakeSGLang:
    def __init__(
        self,
        base_model: str,
        latency_s: float = 0.0,
        responder: Responder | None = None,
        unload_delay_s: float = 0.0,
        api_key: str | None = None,
        health_delay_s: float = 0.0,
        port: int | None = None,
    ):
        self.base_model = base_model
        self.api_key = api_key  # as `--api-key`: every route but /health* wants the bearer token
        self.health_delay_s = health_delay_s  # as /health generating a token on a busy server
        self.models_status = 200  # another status: /v1/models fails as on an overloaded server
        self.bodies: list[dict] = []  # chat request bodies in arrival order
        self.latency_s = latency_s
        self.responder = responder
        self.load_delay_s = 0.0
        self.unreadable: list[str] = []  # loads from under these folders fail as a missing path
        self.unload_delay_s = unload_delay_s  # as SGLang waiting for in-flight requests
        self.adapters: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []  # (kind, name) in arrival order
        self.timeline: list[tuple[str, str]] = []  # calls and ("chat-done", adapter), in order
        self.held: dict[str, threading.Event] = {}  # adapter -> set when its chats may answer
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._server = uvicorn.Server(
            uvicorn.Config(self._app(), host="127.0.0.1", port=self.port, log_level="warning")
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def loads(self) -> list[str]:
        return [name for kind, name in self.calls if kind == "load"]

    def _record(self, kind: str, name: str) -> None:
        with self._lock:
            if kind != "chat-done":
                self.calls.append((kind, name))
            self.timeline.append((kind, name))

    def hold(self, adapter: str) -> None:
        """Keep chat requests on `adapter` from answering until `release(adapter)`."""
        self.held[adapter] = threading.Event()

    def release(self, adapter: str) -> None:
        self.held.pop(adapter).set()

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def auth(request: Request, call_next: Any) -> Any:
            wanted = f"Bearer {self.api_key}"
            if (
                self.api_key
                and not request.url.path.startswith("/health")
                and (request.headers.get("authorization") != wanted)
            ):
                self._record("unauthorized", request.url.path)
                return JSONResponse({"error": "Unauthorized"}, status_code=401)
            return await call_next(request)

        @app.get("/health")
        async def health() -> dict:
            if self.health_delay_s:
                await asyncio.sleep(self.health_delay_s)
            return {"status": "ok"}

        @app.get("/model_info")
        def model_info() -> dict:
            return {"model_path": self.base_model, "is_generation": True}

        @app.get("/v1/models")
        def models() -> Any:
            if self.models_status != 200:
                return JSONResponse({"error": "Service Unavailable"}, status_code=self.models_status)
            data: list[dict[str, Any]] = [{"id": self.base_model, "object": "model", "root": self.base_model}]
            data += [
                {"id": n, "object": "model", "root": p, "parent": self.base_model}
                for n, p in self.adapters.items()
            ]
            return {"object": "list", "data": data}

        @app.post("/load_lora_adapter")
        async def load(request: Request) -> JSONResponse:
            body = await request.json()
            name, path = body["lora_name"], body["lora_path"]
            self._record("load", name)
            if self.load_delay_s:
                await asyncio.sleep(self.load_delay_s)
            if name in self.adapters:
                return _result(
                    False, f"Failed to load LoRA adapter {name} because it is already loaded", self.adapters
                )
            hidden = any(Path(path).resolve().is_relative_to(Path(u).resolve()) for u in self.unreadable)
            if hidden or not Path(path).exists():
                return _result(False, f"Can't find adapter at {path}", self.adapters)
            self.adapters[name] = path
            return _result(True, "", self.adapters)

        @app.post("/unload_lora_adapter")
        async def unload(request: Request) -> JSONResponse:
            name = (await request.json())["lora_name"]
            self._record("unload", name)
            if self.unload_delay_s:
                await asyncio.sleep(self.unload_delay_s)
            if name not in self.adapters:
                return _result(False, f"LoRA adapter {name} is not loaded", self.adapters)
            del self.adapters[name]
            return _result(True, "", self.adapters)

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> JSONResponse:
            body = await request.json()
            self.bodies.append(body)
            model = body["model"]
            base, _, adapter = model.partition(":") if model != self.base_model else (model, "", "")
            if base != self.base_model or (adapter and adapter not in self.adapters):
                self._record("chat-rejected", model)
                return JSONResponse(
                    {"object": "error", "message": f"unknown model {model}", "code": 400},
                    status_code=400,
                )
            served = adapter or "base"
            self._record("chat", served)
            gate = self.held.get(served)
            while gate is not None and not gate.is_set():
                await asyncio.sleep(0.01)
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            text = f"served by {served}"
            if self.responder is not None:
                req = ChatRequest(
                    model=model,
                    messages=list(body.get("messages") or []),
                    role=detect_role({k.lower(): v for k, v in request.headers.items()}),
                    body=body,
                )
                out = self.responder(req)
                text = out.text if isinstance(out, Reply) else str(out)
            self._record("chat-done", served)
            return JSONResponse(
                {
                    "id": "fake",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": text},
                        }
                    ],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
                }
            )

        return app

    def start(self) -> FakeSGLang:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake SGLang server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> FakeSGLang:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _result(success: bool, message: str, loaded: dict[str, str]) -> JSONResponse:
    return JSONResponse(
        {"success": success, "error_message": message, "loaded_adapters": dict(loaded)},
        status_code=200 if success else 400,
    )
