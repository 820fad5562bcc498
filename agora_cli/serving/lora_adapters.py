"""Runtime LoRA adapters on live servers: what SGLang and vLLM agree on, once.

Both engines serve many adapters on one base model and load them while serving. A member's
adapters get versioned names (`<member>-v<N>`, never reused for other weights: SGLang remembers
every name it has seen, and vLLM serves a reloaded name from stale prefix-cache blocks), and
activation is:

  1. load the new version under its new name (`POST <load> {"lora_name", "lora_path"}`) on every
     replica (every server of the base model) that answers, and check each lists it
     (`GET /v1/models`); routers do not pass these admin calls on, so agora calls each replica;
  2. only then switch the member to it, so no request names it on a replica that lacks it; a
     replica that failed takes none of the member's requests until `sync` has loaded it there;
  3. unload the old name on each replica once no request uses it there. Every request takes a
     lease (`LoraServing.lease`): its replica and adapter name are chosen and counted in flight
     under one lock, the request is sent with that name, and the count drops when it completes or
     fails. The old name is unloaded (in the background) when it is switched away from with
     nothing in flight on that replica, or else when its last request there finishes; a request
     resolved after the switch gets the new name. So no request names an adapter after its
     unload: SGLang would load it again, behind agora's back, to stay for good. The unload is
     best-effort: a failure or a timeout costs server memory only, is reported as an
     `adapter_unload_failed` event and never fails the activation.

Each request goes to the replica with the fewest requests in flight among those that answer and
hold the member's live adapter (agora is the servers' only client, so its own count is the load),
or, when a router fronts the base model's replicas, to the router, which picks the replica itself:
agora then cannot know which replica serves it, so the request counts in flight on every replica
of the base model, and none unloads the name it uses before it ends.

A load names a path the replica's server can read: the adapter directory itself, or what the
`deliver` hook returns for that replica (Ray replicas copy it to their own node first,
`ray_replicas.Delivery`); `paths` keeps the driver's directory, the durable record.

An engine differs only in the small facts of `LoraApi`: endpoint paths, how a request names an
adapter, how a refusal reads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
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
    """The live adapter of each member of one backend, what each replica (one server URL) holds,
    and the load-everywhere / switch / unload-when-idle sequence."""

    def __init__(self, api: LoraApi, backend: str, bus: EventBus, timeout_s: float):
        self.api = api
        self.backend = backend
        self.bus = bus
        self.timeout_s = timeout_s
        self.headers: dict[str, str] = {}  # Authorization: load/unload are admin calls
        self.lock = threading.RLock()
        self.adapters: dict[str, str | None] = {}  # member -> live lora_name (None: the base)
        self.paths: dict[str, str] = {}  # lora_name -> adapter dir, for a replica that syncs late
        self.up: dict[str, bool] = {}  # replica url -> answering; a down one gets no requests
        self.loaded: dict[str, set[str]] = {}  # replica url -> names it holds, as far as agora knows
        self.busy: dict[str, int] = {}  # replica url -> requests in flight on it
        self.in_flight: dict[tuple[str, str], int] = {}  # (url, lora_name) -> requests not finished
        self.retired: dict[tuple[str, str], str] = {}  # (url, lora_name) -> member: unload when idle
        self._unloads: list[threading.Thread] = []
        self._syncing: set[str] = set()  # replicas a `sync` is loading adapters on right now
        self.lists: set[str] = set()  # replicas seen listing adapters in `GET /v1/models`
        # (replica url, lora_name, driver's adapter dir) -> the path that replica loads it from
        self.deliver: Callable[[str, str, str], str] = lambda url, name, path: path
        # (replica url, lora_name): unloaded there; its copy (if any) may go
        self.discard: Callable[[str, str], None] = lambda url, name: None

    def add_replica(self, url: str, loaded: Iterable[str] = (), up: bool = True) -> None:
        """Count `url` as a replica that holds `loaded`, taking requests when `up` (else only once
        `sync` has loaded the live adapters there)."""
        with self.lock:
            self.up[url] = up
            self.loaded.setdefault(url, set()).update(loaded)
            self.busy.setdefault(url, 0)

    def lost(self, url: str) -> set[str]:
        """Names agora counts on `url` holding that its `GET /v1/models` no longer lists (the server
        restarted behind agora's back); empty when it cannot tell (it does not answer, or it has
        never been seen listing an adapter: a server that lists none may just not list them)."""
        with self.lock:
            before = set(self.loaded.get(url, ()))
        if not before:
            return set()
        listed = self._listing(url)
        if listed is None or (not listed and url not in self.lists):
            return set()
        with self.lock:  # a name unloaded meanwhile has left `loaded` first: not lost
            return (before - set(listed)) & self.loaded.get(url, set())

    def pick(self, urls: list[str], member: str) -> str | None:
        """The replica for `member`'s next request: among `urls` that answer and hold its live
        adapter, the one with the fewest requests in flight (ties: the first listed); None when
        no replica qualifies. Agora is the servers' only client, so its own count is the load."""
        with self.lock:
            name = self.adapters.get(member)
            ready = [u for u in urls if self.up.get(u) and (name is None or name in self.loaded.get(u, ()))]
            return min(ready, key=lambda u: self.busy.get(u, 0)) if ready else None

    def hold(self, urls: list[str], member: str) -> str | None:
        """Count one more request with `member`'s live adapter on each replica in `urls` and return
        its name (None: the base): the replica `pick` chose, or, for a request sent through a
        router (which picks the replica itself), every replica of the base model. The caller holds
        `lock` from `pick` on, so both name the same adapter."""
        with self.lock:
            name = self.adapters.get(member)
            for url in urls:
                self.busy[url] = self.busy.get(url, 0) + 1
                if name is not None:
                    self.in_flight[url, name] = self.in_flight.get((url, name), 0) + 1
            return name

    def release(self, urls: list[str], name: str | None) -> None:
        """A request `hold` counted on `urls` with `name` finished (or failed): unload `name` on
        each replica where it was retired and this was its last request."""
        idle: list[tuple[str, str]] = []  # (url, member it was retired from)
        with self.lock:
            for url in urls:
                self.busy[url] = max(0, self.busy.get(url, 0) - 1)
                if name is None:
                    continue
                left = self.in_flight.get((url, name), 0) - 1
                if left > 0:
                    self.in_flight[url, name] = left
                    continue
                self.in_flight.pop((url, name), None)
                retired = self.retired.pop((url, name), None)
                if retired is not None:
                    idle.append((url, retired))
        for url, member in idle:
            self._unload(url, member, name or "")

    def mark_down(self, url: str, error: str) -> None:
        """`url` stopped answering: it gets no request until `sync` has loaded its members' live
        adapters again (a restarted server has lost them all)."""
        with self.lock:
            was_up = self.up.get(url, False)
            self.up[url] = False
            self.loaded[url] = set()
            for key in [k for k in self.retired if k[0] == url]:  # nothing left there to unload
                del self.retired[key]
        if was_up:
            self.bus.emit("replica_down", backend=self.backend, url=url, error=error)

    def activate(self, urls: list[str], member: str, adapter_dir: Path, version: int) -> str:
        """Load `adapter_dir` as `<member>-v<version>` on every replica in `urls` that answers,
        then switch the member to it and retire the old name on each replica (unloaded there once
        no request uses it); returns the new name.

        Two phases, so no request names the new adapter on a replica that lacks it: every load
        first, then the switch. A replica that fails its load keeps serving the member's other
        requests no longer
        (`pick` wants the live name) until `sync` loads it; one that does not answer is marked
        down. When no replica loads it, the member keeps its old adapter."""
        name = f"{member}-v{version}"
        path = str(Path(adapter_dir).resolve())  # the driver's: each replica may load a copy
        with self.lock:
            targets = [u for u in urls if self.up.get(u)]
        if not targets:
            raise ServerError(f"no {self.api.engine} replica of backend {self.backend!r} answers: {urls}")
        failed: dict[str, ServerError] = {}
        for url in targets:  # phase 1: deliver and load everywhere
            try:
                self._load(url, name, self.deliver(url, name, path))
            except ServerError as e:
                failed[url] = e
        if len(failed) == len(targets):
            raise next(iter(failed.values()))
        idle_on: list[str] = []
        with self.lock:  # phase 2: switch, retire the old name replica by replica
            self.paths[name] = path
            for url in targets:
                if url not in failed:
                    self.loaded.setdefault(url, set()).add(name)
            old = self.adapters.get(member)
            self.adapters[member] = name
            for url in urls:
                self.retired.pop((url, name), None)  # live again (a retried activation): keep it
            if old and old != name and old not in self.adapters.values():
                for url in urls:
                    if old not in self.loaded.get(url, ()):
                        continue
                    self.loaded[url].discard(old)
                    if self.in_flight.get((url, old)):
                        self.retired[url, old] = member  # its last request's `release` unloads it
                    else:
                        idle_on.append(url)
        for url, error in failed.items():
            if isinstance(error.__cause__, OSError) and len(urls) > 1:  # one server stays in: no other
                self.mark_down(url, str(error))
            else:
                self.bus.emit("replica_out", backend=self.backend, url=url, lora_name=name, error=str(error))
        for url in idle_on:
            self._unload(url, member, old or "")
        return name

    def sync(self, url: str, members: list[str]) -> bool:
        """Load on `url` each live adapter of `members` it lacks, then let it take requests again;
        False (it stays out) when it does not answer or refuses one."""
        with self.lock:
            if url in self._syncing:  # another pass is at it (the background check, a health call)
                return False
            self._syncing.add(url)
        try:
            return self._sync(url, members)
        finally:
            with self.lock:
                self._syncing.discard(url)

    def _sync(self, url: str, members: list[str]) -> bool:
        with self.lock:
            was_up = self.up.get(url, False)
            wanted = sorted({n for m in members if (n := self.adapters.get(m))} - self.loaded.get(url, set()))
        for name in wanted:
            try:
                if name not in self.paths:  # attached from a file that did not record it
                    raise ServerError(f"no adapter directory is known for {name}")
                self._load(url, name, self.deliver(url, name, self.paths[name]))
            except ServerError as e:
                if isinstance(e.__cause__, OSError):
                    self.mark_down(url, str(e))
                else:
                    self.bus.emit("replica_out", backend=self.backend, url=url, lora_name=name, error=str(e))
                return False
            with self.lock:
                live = name in self.adapters.values()
                if live:
                    self.loaded.setdefault(url, set()).add(name)
            if not live:  # switched away while it loaded: nothing will name it
                self._unload(url, "", name)
        with self.lock:
            self.up[url] = True
            self.busy.setdefault(url, 0)
        if not was_up:
            self.bus.emit("replica_synced", backend=self.backend, url=url, loaded=wanted)
        return True

    def finish(self, timeout_s: float = 30.0) -> None:
        """Wait for the unloads already started, at most `timeout_s` each."""
        with self.lock:
            threads, self._unloads = self._unloads, []
        for t in threads:
            t.join(timeout=timeout_s)

    def shutdown(self, processes: list) -> None:
        """Finish pending unloads, then stop the servers this backend launched (`ServerProcess`),
        announcing each: the stop sequence SGLang and vLLM share."""
        self.finish()
        for p in processes:
            p.stop(grace_s=30)
            self.bus.emit("server_stopped", backend=self.backend, url=p.url, log=str(p.log))

    # ------------------------------------------------------------------ internals

    def _load(self, url: str, name: str, path: str) -> None:
        """Load `name` from `path` on the replica at `url` and check it lists it."""
        r = self._post(url, self.api.load_path, {"lora_name": name, "lora_path": path})
        if r.status != 200 or not _success(r):
            message = error_message(r)
            if self.api.already_loaded not in message.lower() or not self._loaded_from(url, name, path):
                raise ServerError(f"{self.api.engine} at {url} refused adapter {name} from {path}: {message}")
        listed = self.listed_adapters(url)
        if listed is not None and name not in listed:
            raise ServerError(f"{self.api.engine} at {url} accepted {name} but /v1/models does not list it")

    def _unload(self, url: str, member: str, name: str) -> None:
        """Unload `name` in the background (callers include the event loop, which must not wait
        on the server)."""

        def run() -> None:
            try:
                r = http(
                    "POST",
                    f"{url}{self.api.unload_path}",
                    {"lora_name": name},
                    timeout=self.timeout_s,
                    headers=self.headers,
                )
                error = None if r.status == 200 and _success(r) else error_message(r)
            except OSError as e:
                error = f"no answer ({e})"
            if error is None:
                self.discard(url, name)
            else:  # the new adapter is live; a leftover only costs memory
                self.bus.emit(
                    "adapter_unload_failed", backend=self.backend, member=member, lora_name=name, error=error
                )

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
        """lora_name -> path from `GET /v1/models`, or None when it lists no adapters at all (or
        gives no listing)."""
        return self._listing(url) or None

    def _listing(self, url: str) -> dict[str, str | None] | None:
        """The adapters `GET /v1/models` lists (lora_name -> path, maybe empty), or None when no
        listing came back: no answer in time, an error status, a body that is not one. A busy
        server may time out here and still hold every adapter, so None never means lost."""
        try:
            r = http("GET", f"{url}/v1/models", timeout=10, headers=self.headers)
        except OSError:
            return None
        data = r.json.get("data") if r.status == 200 and isinstance(r.json, dict) else None
        if not isinstance(data, list):
            return None
        adapters = {d["id"]: d.get("root") for d in data if isinstance(d, dict) and d.get("parent")}
        if adapters:
            self.lists.add(url)
        return adapters

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
        return str(r.json.get("error_message") or r.json.get("message") or r.json.get("detail") or r.json)
    return f"HTTP {r.status}: {r.text[:300]}"
