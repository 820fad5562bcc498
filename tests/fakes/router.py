"""A fake model-agnostic router: real HTTP on 127.0.0.1, in front of several replicas.

    router = FakeRouter([replica.url for replica in fakes], start=1).start()
    ...
    router.log      # [("POST", "/v1/chat/completions", replica_url), ...]: every request it saw

It forwards `POST /v1/chat/completions` to the replicas in turn (round-robin from index `start`),
with the request's body and `Authorization` header, and answers with the replica's reply. Every
other request is logged (replica None) and answered 404: like the routers checked against
run-time adapters (sglang-router, vllm-router), it is no place for adapter loads or listings.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agora_cli.serving.process import free_port


class FakeRouter:
    def __init__(self, replicas: list[str], start: int = 0):
        self.replicas = list(replicas)
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, replica it went to)
        self._next = start
        self._lock = threading.Lock()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def chats(self) -> list[str]:
        """The replica each forwarded chat request went to, in arrival order."""
        return [replica for _, path, replica in self.log if replica is not None]

    def _pick(self, method: str, path: str) -> str | None:
        with self._lock:
            replica = None
            if (method, path) == ("POST", "/v1/chat/completions"):
                replica = self.replicas[self._next % len(self.replicas)]
                self._next += 1
            self.log.append((method, path, replica))
            return replica

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        router = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                replica = router._pick(method, self.path)
                if replica is None:
                    self._answer(404, b'{"error": "not routed"}')
                    return
                headers = {"Content-Type": "application/json"}
                if self.headers.get("Authorization"):
                    headers["Authorization"] = self.headers["Authorization"]
                request = urllib.request.Request(replica + self.path, body, headers, method=method)
                try:
                    with urllib.request.urlopen(request, timeout=60) as r:
                        self._answer(r.status, r.read())
                except urllib.error.HTTPError as e:
                    self._answer(e.code, e.read())

            def _answer(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self._serve("GET")

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self._serve("POST")

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
                pass

        return Handler

    def start(self) -> FakeRouter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
