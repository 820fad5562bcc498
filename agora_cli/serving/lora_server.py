"""Runtime LoRA on a live server: what SGLang and vLLM agree on, once.

Both engines serve many adapters on one base model and load them while serving. A member's
adapters get versioned names (`<member>-v<N>`, never reused for other weights), and activation is:

  1. load the new version under its new name (`POST <load> {"lora_name", "lora_path"}`);
  2. check the server lists it (`GET /v1/models`), and only then switch the member to it, so the
     activation is recorded only when the new adapter answers;
  3. unload the old name once no request uses it. Every request takes a lease on its member's
     endpoint (`LoraServing.lease`): its adapter name is resolved and counted in flight under one
     lock, the request is sent with that name, and the count drops when it completes or fails. The
     old name is unloaded (in the background) when it is switched away from with nothing in flight,
     or else when its last request finishes; a request resolved after the switch gets the new name.
     So no request names an adapter after its unload: that matters because SGLang remembers every
     name it ever loaded, and a request naming an unloaded one loads it again, behind agora's back,
     to stay for good. The unload is best-effort: a failure or a timeout costs server memory only,
     is reported as an `adapter_unload_failed` event and never fails the activation.

An engine differs only in the small facts of `LoraApi`: endpoint paths, how a request names an
adapter, how a refusal reads.

Replicas: with `launch: false` a base model may be served by several servers (a URL list, started
by any other means). Routers do not pass adapter loads on to every worker, so agora sends every
load and unload to each replica itself, and routes each request to the replica with the fewest
requests in flight among those that answer and hold the member's live adapter (agora is the only
client, so its own count is the load). Activation loads on every replica first and switches only
then; a replica that fails or is down takes none of the member's requests until `sync` has
loaded the live adapters on it; the old name is unloaded replica by replica, each after its own
last request there.

`LoraServing` is the backend both engines are: one server per base model (members sharing a base
share its server, each with its own adapters), or its replicas; started one after another, each
ready before the next; routing, activation, attach/state/health/stop. An engine's module keeps
only what differs: its `LoraApi`, its command line and environment (`_launch`), its readiness
check (`_ready`), and the two SGLang-only hooks (`_extra_body`, `_check_adapter`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai

from agora_cli.config import Member, SGLangBackend, VLLMBackend
from agora_cli.config.schema import Cluster, ReplicaPlacement
from agora_cli.endpoint import NO_KEY, Endpoint
from agora_cli.errors import ServerError
from agora_cli.events import NULL_BUS, EventBus
from agora_cli.models import cached_path, prepare
from agora_cli.paths import RunPaths
from agora_cli.serving.keys import bearer, server_key
from agora_cli.serving.process import Reply, ServerProcess, free_port, http

REPLICA_CHECK_S = 5.0  # how often a base model's replicas are re-checked (`LoraServing.check_replicas`)


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

    def add_replica(self, url: str, loaded: Iterable[str] = ()) -> None:
        """Count `url` as a replica that answers and holds `loaded`."""
        with self.lock:
            self.up[url] = True
            self.loaded.setdefault(url, set()).update(loaded)
            self.busy.setdefault(url, 0)

    def pick(self, urls: list[str], member: str) -> str | None:
        """The replica for `member`'s next request: among `urls` that answer and hold its live
        adapter, the one with the fewest requests in flight (ties: the first listed); None when
        no replica qualifies. Agora is the servers' only client, so its own count is the load."""
        with self.lock:
            name = self.adapters.get(member)
            ready = [u for u in urls if self.up.get(u) and (name is None or name in self.loaded.get(u, ()))]
            return min(ready, key=lambda u: self.busy.get(u, 0)) if ready else None

    def hold(self, url: str, member: str) -> str | None:
        """Count one more request on `url` with `member`'s live adapter and return its name (None:
        the base). The caller holds `lock` from `pick` on, so both name the same adapter."""
        with self.lock:
            name = self.adapters.get(member)
            self.busy[url] = self.busy.get(url, 0) + 1
            if name is not None:
                self.in_flight[url, name] = self.in_flight.get((url, name), 0) + 1
            return name

    def release(self, url: str, name: str | None) -> None:
        """One request on `url` with `name` finished (or failed): unload `name` there when it was
        retired and this was its last request on that replica."""
        with self.lock:
            self.busy[url] = max(0, self.busy.get(url, 0) - 1)
            if name is None:
                return
            left = self.in_flight.get((url, name), 0) - 1
            if left > 0:
                self.in_flight[url, name] = left
                return
            self.in_flight.pop((url, name), None)
            retired = self.retired.pop((url, name), None)
        if retired is not None:
            self._unload(url, retired, name)

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
        path = str(Path(adapter_dir).resolve())
        with self.lock:
            targets = [u for u in urls if self.up.get(u)]
        if not targets:
            raise ServerError(f"no {self.api.engine} replica of backend {self.backend!r} answers: {urls}")
        failed: dict[str, ServerError] = {}
        for url in targets:  # phase 1: load everywhere
            try:
                self._load(url, name, path)
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
            if isinstance(error.__cause__, OSError):
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
                self._load(url, name, self.paths[name])
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
            if error is not None:  # the new adapter is live; a leftover only costs memory
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
        """lora_name -> path from `GET /v1/models`, or None when it lists no adapters at all."""
        try:
            data = http("GET", f"{url}/v1/models", timeout=10, headers=self.headers).json.get("data", [])
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


class LoraServing:
    """Members of one multi-LoRA backend (`sglang`, `vllm`): one server per base model.

    An engine subclass sets `kind` (the config's backend kind) and `API`, and implements `_launch`
    and `_ready`; `cfg` is its backend config (host, base_port, launch, urls, startup_timeout_s,
    api_key_env). With `launch: false` the servers are started elsewhere and `cfg.urls` maps
    base model to URL.
    """

    kind: str  # "sglang", "vllm": the state's kind and the log files' prefix
    API: LoraApi
    # (cluster, this backend's replicas) when the config places its servers with Ray (`Serving`)
    placement: tuple[Cluster, ReplicaPlacement] | None = None

    def __init__(
        self,
        name: str,
        cfg: SGLangBackend | VLLMBackend,
        members: list[Member],
        run_paths: RunPaths,
        bus: EventBus = NULL_BUS,
    ):
        self.name = name
        self.cfg = cfg
        self.members = {m.name: m for m in members}
        self.run_paths = run_paths
        self.bus = bus
        self._base: dict[str, str] = {}  # member -> base model path / hub id
        self._urls: dict[str, list[str]] = {}  # base -> its replicas' root URLs
        self._processes: dict[str, ServerProcess] = {}  # base -> process we launched
        self.lora = LoraServer(self.API, name, bus, timeout_s=cfg.startup_timeout_s)
        self._key: str | None = None
        self._checker: threading.Thread | None = None  # re-checks replicas (`check_replicas`)
        self._stopping = threading.Event()
        self._placed: Any = None  # ray_replicas.Placed: the actors this backend started

    # ------------------------------------------------------------------ engine hooks

    def _launch(
        self, base: str, member_names: list[str], port: int, dry_run: bool
    ) -> tuple[list[str], dict[str, str]]:
        """The server command line and extra environment for one base model (`dry_run`: for
        `describe`, writing and checking nothing)."""
        raise NotImplementedError

    def _ready(self, url: str) -> bool:
        """True when the server at `url` answers (without making it generate)."""
        raise NotImplementedError

    def _api_key(self) -> str | None:
        """The key the servers want: `$api_key_env`, else the run's own key for servers agora
        launches (`keys.server_key`), else None. Read once, kept in memory only."""
        if self._key is None:
            self._key = server_key(self.name, self.cfg.api_key_env, self.run_paths.root, self.cfg.launch)
        return self._key

    def _extra_body(self, lora: str | None) -> dict:
        """Fields added to each request of a member whose live adapter is `lora`."""
        return {}

    def _check_adapter(self, member: str, adapter_dir: Path) -> None:
        """Refuse, before the engine sees it, an adapter its server cannot load."""

    # ------------------------------------------------------------------ plan

    def _bases(self, planned: bool = False) -> dict[str, list[str]]:
        """base model -> members sharing it, in a stable order (ports follow it). `planned`: the
        paths `prepare` would give, without preparing anything (for `describe`)."""
        out: dict[str, list[str]] = {}
        for m in self.members.values():
            if planned:
                path = cached_path(m)
                base = str(path) if path else m.model
            else:
                if m.name not in self._base:
                    self._base[m.name] = str(prepare(m))
                base = self._base[m.name]
            out.setdefault(base, []).append(m.name)
        return dict(sorted(out.items()))

    def _port(self, i: int, dry_run: bool = False) -> int:
        """The i-th server's port: base_port + i, or a free one when base_port is 0 (0 in a
        dry run)."""
        if self.cfg.base_port:
            return self.cfg.base_port + i
        return 0 if dry_run else free_port(self.cfg.host)

    def _log(self, base: str) -> Path:
        return self.run_paths.logs / f"{self.kind}-{self.name}-{slug(base)}.log"

    def _servers(self, i: int, base: str, member_names: list[str]) -> list[ServerProcess]:
        """The i-th base model's server to launch, or (`launch: false`) its replicas already
        running elsewhere, one per URL."""
        if self._placed is not None:  # started as Ray actors (`start`): reached like any replica
            return [
                ServerProcess(name=f"{self.API.engine} replica", cmd=[], url=url, log=self._log(base))
                for url in self._placed.urls[base]
            ]
        if not self.cfg.launch:
            urls = self.cfg.urls.get(base)
            if not urls:
                raise ServerError(
                    f"backend {self.name!r} has launch: false but no URL for base model "
                    f"{base!r}; add it under backends.{self.name}.urls"
                )
            return [
                ServerProcess(
                    name=f"{self.API.engine} server", cmd=[], url=url.rstrip("/"), log=self._log(base)
                )
                for url in urls
            ]
        return [self._server(i, base, member_names)]

    def _server(self, i: int, base: str, member_names: list[str]) -> ServerProcess:
        """The i-th base model's server, to launch."""
        port = self._port(i)
        cmd, env = self._launch(base, member_names, port, dry_run=False)
        return ServerProcess(
            name=f"{self.API.engine} server ({Path(base).name})",
            cmd=cmd,
            url=f"http://{self.cfg.host}:{port}",
            log=self._log(base),
            env=env,
            secret=self._api_key(),  # kept out of the server's log
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Launch (or, with `launch: false`, find) one server per base model, one after another,
        each healthy before the next starts (on one GPU each sizes its memory from what is free
        when it starts; on CPU they would fight for the cores while loading). A base model served
        by several replicas gets a background check that takes a replica that stopped answering
        out of routing and brings it back once synced (`check_replicas`)."""
        bases = self._bases()
        self.lora.headers = bearer(self._api_key())  # load/unload are admin calls: key them too
        try:
            if self.placement is not None:
                from agora_cli.serving import ray_replicas  # only with a cluster: else no ray import

                self._placed = ray_replicas.place(self, *self.placement)
            for i, (base, member_names) in enumerate(bases.items()):
                for process in self._servers(i, base, member_names):
                    if self.cfg.launch and self._placed is None:
                        process.start()
                        self._processes[base] = process
                    process.wait_healthy(self.cfg.startup_timeout_s)
                    self._urls.setdefault(base, []).append(process.url)
                    self.lora.add_replica(process.url)
                    self.bus.emit(
                        "server_started", backend=self.name, url=process.url, model=base, log=str(process.log)
                    )
        except BaseException:
            self.stop()
            raise
        with self.lora.lock:
            for m in self.members:
                self.lora.adapters.setdefault(m, None)
        self._watch_replicas()

    def attach(self, state: dict[str, Any]) -> bool:
        """Take over the servers a previous process recorded (`state()`), when they are the ones
        this config needs and all answer; False (nothing changed) otherwise."""
        servers = {b: [u] if isinstance(u, str) else list(u) for b, u in state.get("servers", {}).items()}
        adapters, loaded = state.get("adapters", {}), state.get("loaded", {})
        urls = [u for replicas in servers.values() for u in replicas]
        if set(self._bases()) != set(servers) or not all(self._ready(u) for u in urls):
            return False
        key = self._api_key()
        with self.lora.lock:
            self.lora.headers = bearer(key)
            self._urls = {b: [u.rstrip("/") for u in replicas] for b, replicas in servers.items()}
            self.lora.adapters = {m: adapters.get(m) for m in self.members}
            self.lora.paths.update(state.get("paths", {}))
            live = {n for n in self.lora.adapters.values() if n}
            for u in urls:  # an older file has no `loaded`: it had one server, holding every live name
                self.lora.add_replica(u.rstrip("/"), loaded.get(u, live))
        self._watch_replicas()
        return True

    def state(self) -> dict[str, Any]:
        """What `attach` needs: replica URLs, live adapters and where each replica holds them
        (never the key)."""
        with self.lora.lock:
            return {
                "kind": self.kind,
                "servers": {b: list(u) for b, u in self._urls.items()},
                "adapters": dict(self.lora.adapters),
                "paths": dict(self.lora.paths),
                "loaded": {u: sorted(n) for u, n in self.lora.loaded.items()},
            }

    def health(self) -> bool:
        """Re-check every replica (`check_replicas`); True when each base model has one that
        takes requests."""
        self.check_replicas()
        with self.lora.lock:
            return all(any(self.lora.up.get(u) for u in urls) for urls in self._urls.values())

    def check_replicas(self) -> None:
        """One pass over every replica: one that does not answer is taken out of routing; one that
        answers is given the live adapters of its members that it lacks (`LoraServer.sync`), and
        only then takes requests again."""
        for base, urls in list(self._urls.items()):
            members = [m for m, b in self._base.items() if b == base]
            for url in urls:
                if not self._ready(url):
                    self.lora.mark_down(url, "does not answer its readiness check")
                else:
                    self.lora.sync(url, members)

    def _watch_replicas(self) -> None:
        """Run `check_replicas` every REPLICA_CHECK_S in the background when a base model has
        several replicas (one server has nowhere else to send its requests)."""
        if self._checker is not None or all(len(u) < 2 for u in self._urls.values()):
            return
        self._stopping.clear()

        def run() -> None:
            while not self._stopping.wait(REPLICA_CHECK_S):
                try:
                    self.check_replicas()
                except Exception as e:  # noqa: BLE001 - a failed pass is retried on the next one
                    self.bus.emit("replica_check_failed", backend=self.name, error=f"{type(e).__name__}: {e}")

        self._checker = threading.Thread(target=run, name=f"replicas {self.name}", daemon=True)
        self._checker.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._checker is not None:
            self._checker.join(timeout=60)
            self._checker = None
        processes, self._processes = list(self._processes.values()), {}
        self.lora.shutdown(processes)
        if self._placed is not None:
            from agora_cli.serving import ray_replicas

            placed, self._placed = self._placed, None
            ray_replicas.remove(placed)

    # ------------------------------------------------------------------ routing

    def _endpoint(self, base: str, url: str, name: str | None) -> Endpoint:
        return Endpoint(
            base_url=f"{url}/v1",
            model=self.API.model_name(base, name),
            api_key=self._api_key() or NO_KEY,
            extra_body=self._extra_body(name),
        )

    def _route(self, member: str) -> tuple[str, str]:
        """(base, replica url) for `member`'s next request; the caller holds `lora.lock`."""
        base = self._base.get(member)
        if base is None or base not in self._urls:
            raise ServerError(
                f"member {member!r} has no live server on backend {self.name!r}; start the servers first"
            )
        url = self.lora.pick(self._urls[base], member)
        if url is None:
            raise ServerError(
                f"no replica of {base!r} on backend {self.name!r} answers with member {member!r}'s "
                f"adapter ({', '.join(self._urls[base])}); see the replica_down events"
            )
        return base, url

    def endpoint(self, member: str) -> Endpoint:
        """Where `member`'s next request would go (the least busy replica holding its adapter)."""
        with self.lora.lock:
            base, url = self._route(member)
            return self._endpoint(base, url, self.lora.adapters.get(member))

    @contextmanager
    def lease(self, member: str) -> Iterator[Endpoint]:
        """`member`'s endpoint for one request: the replica with the fewest requests in flight
        among those holding its live adapter, that adapter counted in flight there until the block
        ends so it is not unloaded under the request (`LoraServer.release`). A replica that refuses
        the connection is taken out of routing; the client's retry goes elsewhere."""
        with self.lora.lock:
            base, url = self._route(member)
            name = self.lora.hold(url, member)
        try:
            yield self._endpoint(base, url, name)
        except Exception as e:
            if _unreachable(e):
                self.lora.mark_down(url, f"{type(e).__name__}: {e}")
            raise
        finally:
            self.lora.release(url, name)

    def activate(self, member: str, adapter_dir: Path, version: int) -> Endpoint:
        """Load the adapter under `<member>-v<version>` on every replica, then switch the member,
        retire the old one (`LoraServer.activate`)."""
        if member not in self.members:
            raise ServerError(f"member {member!r} is not served by backend {self.name!r}")
        base = self._base.get(member)
        if base is None or base not in self._urls:
            raise ServerError(f"backend {self.name!r} is not started; call start() first")
        self._check_adapter(member, adapter_dir)
        self.lora.activate(self._urls[base], member, adapter_dir, version)
        return self.endpoint(member)

    def describe(self) -> list[str]:
        """One line per server: its environment and command line, or the external URL."""
        lines = []
        for i, (base, members) in enumerate(self._bases(planned=True).items()):
            who = ", ".join(members)
            if self.cfg.launch:
                cmd, env = self._launch(base, members, self._port(i, dry_run=True), dry_run=True)
                line = " ".join([*(f"{k}={v}" for k, v in env.items()), *cmd])
            else:
                line = f"(external) {', '.join(self.cfg.urls.get(base, ['<no url>']))} serves {base}"
            lines.append(f"{line}    # {who}")
        return lines


def _unreachable(e: BaseException) -> bool:
    """The request never reached a server (refused, reset): that replica is down. A timeout is not
    (the server may only be slow)."""
    if isinstance(e, openai.APIConnectionError):
        return not isinstance(e, openai.APITimeoutError)
    return isinstance(e, ConnectionError)


def slug(base: str) -> str:
    """A base model's short name for file names."""
    return Path(base).name.replace(":", "-")[:48]


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
