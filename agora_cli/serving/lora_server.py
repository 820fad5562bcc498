"""Runtime LoRA on a live server: what SGLang and vLLM agree on, once.

Both engines serve many adapters on one base model and load them while serving. A member's
adapters get versioned names (`<member>-v<N>`, never reused for other weights), and activation is:

  1. load the new version under its new name (`POST <load> {"lora_name", "lora_path"}`);
  2. check the server lists it (`GET /v1/models`), and only then switch the member to it, so the
     activation is recorded only when the new adapter answers;
  3. unload the old name in the background after a short grace period. Requests already in flight
     on the old adapter finish on it (SGLang's unload waits for them; the grace period covers
     requests the client resolved just before the switch). The unload is best-effort: a failure or
     a timeout there costs server memory only, is reported as an `adapter_unload_failed` event and
     never fails the activation (issue 10, item 8).

An engine differs only in the small facts of `LoraApi`: endpoint paths, how a request names an
adapter, how a refusal reads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agora_cli.errors import ServerError
from agora_cli.events import EventBus
from agora_cli.serving.process import Reply, http


@dataclass(frozen=True)
class LoraApi:
    """One engine's runtime-LoRA endpoints and wording."""

    engine: str  # for messages: "SGLang", "vLLM"
    load_path: str  # POST {"lora_name", "lora_path"}
    unload_path: str  # POST {"lora_name"}
    already_loaded: str  # lower-case text of the engine's "name already loaded" refusal
    model_name: Callable[[str, str | None], str]  # (base, lora_name or None) -> request `model`


class LoraServer:
    """The live adapter of each member of one backend, and the load/switch/unload sequence."""

    def __init__(
        self, api: LoraApi, backend: str, bus: EventBus, timeout_s: float, unload_grace_s: float
    ):
        self.api = api
        self.backend = backend
        self.bus = bus
        self.timeout_s = timeout_s
        self.unload_grace_s = unload_grace_s
        self.headers: dict[str, str] = {}  # e.g. Authorization for a server run with --api-key
        self.lock = threading.RLock()
        self.adapters: dict[str, str | None] = {}  # member -> live lora_name (None: the base)
        self._unloads: list[threading.Thread] = []
        self._hurry = threading.Event()  # set by finish(): pending unloads skip their grace

    def model(self, base: str, member: str) -> str:
        """The `model` field of `member`'s requests right now."""
        with self.lock:
            return self.api.model_name(base, self.adapters.get(member))

    def activate(self, url: str, member: str, adapter_dir: Path, version: int) -> str:
        """Load `adapter_dir` as `<member>-v<version>` on the server at `url`, switch the member to
        it, schedule the old name's unload; returns the new name. The member keeps its old model
        when anything before the switch fails."""
        name = f"{member}-v{version}"
        path = str(Path(adapter_dir).resolve())
        r = self._post(url, self.api.load_path, {"lora_name": name, "lora_path": path})
        if r.status != 200 or not _success(r):
            message = error_message(r)
            if self.api.already_loaded not in message.lower() or not self._loaded_from(
                url, name, path
            ):
                raise ServerError(
                    f"{self.api.engine} at {url} refused adapter {name} from {path}: {message}"
                )
        listed = self.listed_adapters(url)
        if listed is not None and name not in listed:
            raise ServerError(
                f"{self.api.engine} at {url} accepted {name} but /v1/models does not list it"
            )
        with self.lock:
            old = self.adapters.get(member)
            self.adapters[member] = name
            still_used = old is not None and old in self.adapters.values()
        if old and old != name and not still_used:
            self._unload_later(url, member, old)
        return name

    def finish(self, timeout_s: float = 30.0) -> None:
        """Run pending unloads now (no grace) and wait for them, at most `timeout_s` in all."""
        self._hurry.set()
        with self.lock:
            threads, self._unloads = self._unloads, []
        for t in threads:
            t.join(timeout=timeout_s)
        self._hurry.clear()

    def shutdown(self, processes: list) -> None:
        """Finish pending unloads, then stop the servers this backend launched (`ServerProcess`),
        announcing each: the stop sequence SGLang and vLLM share."""
        self.finish()
        for p in processes:
            p.stop(grace_s=30)
            self.bus.emit("server_stopped", backend=self.backend, url=p.url, log=str(p.log))

    # ------------------------------------------------------------------ internals

    def _unload_later(self, url: str, member: str, name: str) -> None:
        def run() -> None:
            self._hurry.wait(self.unload_grace_s)
            try:
                r = http("POST", f"{url}{self.api.unload_path}", {"lora_name": name},
                         timeout=self.timeout_s, headers=self.headers)
                error = None if r.status == 200 and _success(r) else error_message(r)
            except OSError as e:
                error = f"no answer ({e})"
            if error is not None:  # the new adapter is live; a leftover only costs memory
                self.bus.emit("adapter_unload_failed", backend=self.backend, member=member,
                              lora_name=name, error=error)

        thread = threading.Thread(target=run, name=f"unload {name}", daemon=True)
        with self.lock:
            self._unloads = [t for t in self._unloads if t.is_alive()] + [thread]
        thread.start()

    def _post(self, url: str, path: str, body: dict) -> Reply:
        try:
            return http("POST", f"{url}{path}", body, timeout=self.timeout_s, headers=self.headers)
        except OSError as e:
            raise ServerError(f"{self.api.engine} at {url} did not answer {path} ({e})") from e

    def listed_adapters(self, url: str) -> dict[str, str | None] | None:
        """lora_name -> path from `GET /v1/models`, or None when it lists no adapters at all."""
        try:
            data = http("GET", f"{url}/v1/models", timeout=10,
                        headers=self.headers).json.get("data", [])
        except (OSError, AttributeError):
            return None
        adapters = {d["id"]: d.get("root") for d in data if isinstance(d, dict) and d.get("parent")}
        return adapters or None

    def _loaded_from(self, url: str, name: str, path: str) -> bool:
        """An 'already loaded' refusal is success when that name holds this same adapter (a retry
        of an activation that got through); True too when the server cannot tell us the path."""
        listed = self.listed_adapters(url)
        if listed is None or name not in listed:
            return listed is None
        root = listed[name]
        return root is None or Path(root).resolve() == Path(path).resolve()


def _success(r: Reply) -> bool:
    return bool(r.json.get("success", True)) if isinstance(r.json, dict) else True


def error_message(r: Reply) -> str:
    """The refusal text of an engine reply: SGLang's `error_message`, vLLM's `error.message`, a
    FastAPI `detail`, or the raw body."""
    if isinstance(r.json, dict):
        nested = r.json.get("error")
        if isinstance(nested, dict) and nested.get("message"):
            return str(nested["message"])
        return str(r.json.get("error_message") or r.json.get("message") or r.json.get("detail")
                   or r.json)
    return f"HTTP {r.status}: {r.text[:300]}"
