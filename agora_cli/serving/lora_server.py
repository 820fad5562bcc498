"""The multi-LoRA backend SGLang and vLLM share (`LoraServing`), over the adapter sequence of
`lora_adapters.py`.

`LoraServing` is one server per base model (members sharing a base share its server, each with
its own adapters), or several replicas of it: listed by URL with `launch: false` (started by any
other means), or started as Ray actors when the config's `cluster` section names the backend
(`ray_replicas.py`, imported only then: found by actor name when they already run, and each
adapter delivered to their nodes). Servers start one after another, each ready before the
next; then routing (by agora, or by a router in front of a base model's replicas for the data
requests only), activation, attach/state/health/stop. A background check re-tests a base
model's replicas every REPLICA_CHECK_S: one that stopped answering leaves routing; one that
restarted (a Ray actor's new incarnation or URL, or a server whose `GET /v1/models` no longer lists
adapters agora loaded there) leaves it too; each is synced before it takes requests again. An
engine's module keeps only what differs: its `LoraApi`, its command line and environment
(`_launch`), its readiness check (`_ready`), and the two SGLang-only hooks (`_extra_body`,
`_check_adapter`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
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
from agora_cli.serving.lora_adapters import LoraApi, LoraServer, error_message
from agora_cli.serving.process import ServerProcess, free_port

REPLICA_CHECK_S = 5.0  # how often a base model's replicas are re-checked (`LoraServing.check_replicas`)


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
        self, base: str, member_names: list[str], port: int, dry_run: bool, replica: tuple[int, int] = (0, 1)
    ) -> tuple[list[str], dict[str, str]]:
        """The server command line and extra environment for one base model (`dry_run`: for
        `describe`, writing and checking nothing; `replica`: (index, count) among its Ray
        replicas)."""
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

    def _log(self, base: str, replica: int | None = None) -> Path:
        """A server's log: one per base model, or per Ray replica of it (`replica`: its index)."""
        suffix = "" if replica is None else f".{replica}"
        return self.run_paths.logs / f"{self.kind}-{self.name}-{slug(base)}{suffix}.log"

    def _servers(self, i: int, base: str, member_names: list[str]) -> list[ServerProcess]:
        """The i-th base model's server to launch, or (`launch: false`) its replicas already
        running elsewhere, one per URL."""
        if self._placed is not None:  # started as Ray actors (`start`): reached like any replica
            return [
                ServerProcess(name=f"{self.API.engine} replica", cmd=[], url=url, log=self._log(base, r))
                for r, url in enumerate(self._placed.urls[base])
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
        self._urls = {}  # a failed attach may have left some
        self.lora.headers = bearer(self._api_key())  # load/unload are admin calls: key them too
        try:
            if self.placement is not None:
                from agora_cli.serving import ray_replicas  # only with a cluster: else no ray import

                self._use_placed(ray_replicas.place(self, *self.placement))
            for i, (base, member_names) in enumerate(bases.items()):
                for process in self._servers(i, base, member_names):
                    self.bus.emit(
                        "server_starting",
                        backend=self.name,
                        url=process.url,
                        model=base,
                        log=str(process.log),
                        launch=self.cfg.launch,
                    )
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

    def _use_placed(self, placed: Any) -> None:
        """Serve through Ray replicas (`ray_replicas.Placed`): each load names the copy of the
        adapter that `Delivery` put on that replica's node."""
        from agora_cli.serving import ray_replicas

        assert self.placement is not None
        self._placed = placed
        delivery = ray_replicas.Delivery(
            self.placement[0], ray_replicas.run_id(self.run_paths.root), placed, self.cfg.startup_timeout_s
        )
        self.lora.deliver, self.lora.discard = delivery.deliver, delivery.discard

    def attach_by_name(self, state: dict[str, Any]) -> bool:
        """Take over Ray replicas an earlier process of this run started, found by actor name
        (they outlive it), with the live adapters `state` recorded (the servers file; its
        writer may be gone). What each replica holds is read from the replica itself. False
        (nothing kept) unless every replica is there and answers."""
        from agora_cli.serving import ray_replicas

        assert self.placement is not None
        placed = ray_replicas.find(self, *self.placement)
        if placed is None:
            return False
        urls = placed.urls
        if not all(self._ready(u) for reps in urls.values() for u in reps):
            return False
        self._use_placed(placed)
        adapters = state.get("adapters", {})
        with self.lora.lock:
            self.lora.headers = bearer(self._api_key())
            self._urls = urls
            self.lora.adapters = {m: adapters.get(m) for m in self.members}
            self.lora.paths.update(state.get("paths", {}))
        for reps in urls.values():
            for u in reps:
                self.lora.add_replica(u, self.lora.listed_adapters(u) or {}, up=False)
        self.check_replicas()  # each takes requests once it holds its members' live adapters
        self._watch_replicas()
        return True

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
        answers and takes requests."""
        answered = self.check_replicas()
        with self.lora.lock:
            return all(
                any(u in answered and self.lora.up.get(u) for u in urls) for urls in self._urls.values()
            )

    def check_replicas(self) -> set[str]:
        """One pass over every replica: one that does not answer is taken out of routing; one that
        answers is given the live adapters of its members that it lacks (`LoraServer.sync`), and
        only then takes requests again. A replica that restarted behind agora's back (its Ray
        actor reports a new incarnation, or its listing lacks adapters agora loaded there) is
        taken out first, and one that moved to a new URL is followed there. Returns the URLs that
        answered."""
        silent = self._follow_actors() if self._placed is not None else set()
        answered = set()
        for base, urls in list(self._urls.items()):
            members = [m for m, b in self._base.items() if b == base]
            for url in list(urls):
                if url in silent:  # its actor is restarting: whatever still answers there is ending
                    continue
                if self._ready(url):
                    answered.add(url)
                    lost = self.lora.lost(url)
                    if lost:
                        self.lora.mark_down(url, f"no longer lists {', '.join(sorted(lost))} (restarted?)")
                    self.lora.sync(url, members)
                elif len(urls) > 1:  # a lone server stays in routing: the client's retries wait for it
                    self.lora.mark_down(url, "does not answer its readiness check")
        return answered

    def _follow_actors(self) -> set[str]:
        """Apply what the Ray replicas' actors report (`ray_replicas.follow`): one that restarted
        leaves routing until synced, under its new URL when it has one. Returns the URLs whose
        actor did not answer (left alone this pass)."""
        from agora_cli.serving import ray_replicas

        silent = set()
        for change in ray_replicas.follow(self._placed):
            if change.new_url is None:
                silent.add(change.url)
                if len(self._urls.get(change.base, ())) > 1:
                    self.lora.mark_down(change.url, "its Ray actor does not answer (restarting?)")
                continue
            self.lora.mark_down(change.url, "its Ray actor restarted the server")
            if change.new_url != change.url:
                with self.lora.lock:
                    urls = self._urls[change.base]
                    urls[urls.index(change.url)] = change.new_url
                    self.lora.add_replica(change.new_url, up=False)  # in routing once synced
        return silent

    def _watch_replicas(self) -> None:
        """Run `check_replicas` every REPLICA_CHECK_S in the background when a base model has
        several replicas, or Ray may restart them (one server that is not restarted by anyone has
        nowhere else to send its requests)."""
        if self._checker is not None:
            return
        if self._placed is None and all(len(u) < 2 for u in self._urls.values()):
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

    def end_left(self) -> list[str]:
        """End this run's Ray replicas of this backend that an `agora serve` killed without its
        cleanup left on the cluster (`ray_replicas.end_left`); their actors' names."""
        if self.placement is None:
            return []
        from agora_cli.serving import ray_replicas

        return ray_replicas.end_left(self, self.placement[0])

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

    def _route(self, member: str, fallback: bool = False) -> tuple[str, str]:
        """(base, replica url) for `member`'s next request; the caller holds `lora.lock`. None
        qualifying raises `NoReplica` (retried by the client), or with `fallback` gives the first
        replica (for messages)."""
        base = self._base.get(member)
        if base is None or base not in self._urls:
            raise ServerError(
                f"member {member!r} has no live server on backend {self.name!r}; start the servers first"
            )
        url = self.lora.pick(self._urls[base], member)
        if url is None and fallback:
            url = self._urls[base][0]
        if url is None:
            raise NoReplica(
                f"no replica of {base!r} on backend {self.name!r} answers with member {member!r}'s "
                f"adapter ({', '.join(self._urls[base])}); see the replica_down events"
            )
        return base, url

    def endpoint(self, member: str) -> Endpoint:
        """Where `member`'s next request would go: its base model's router, else the least busy
        replica holding its adapter (the first one when none does, for messages; `lease` then
        raises `NoReplica`)."""
        with self.lora.lock:
            base, url = self._route(member, fallback=True)
            return self._endpoint(base, self._router(base) or url, self.lora.adapters.get(member))

    def _router(self, base: str, members: list[str] | None = None) -> str | None:
        """The router `base`'s data requests go through (`router_urls`, keyed by the base model
        as `urls` is, or by a `model` of its `members`), or None: agora picks the replica."""
        if members is None:
            members = [m for m, b in self._base.items() if b == base]
        for key in (base, *(self.members[m].model for m in members)):
            if key in self.cfg.router_urls:
                return self.cfg.router_urls[key].rstrip("/")
        return None

    @contextmanager
    def lease(self, member: str) -> Iterator[Endpoint]:
        """`member`'s endpoint for one request: the replica with the fewest requests in flight
        among those holding its live adapter, that adapter counted in flight there until the block
        ends so it is not unloaded under the request (`LoraServer.release`). A replica that refuses
        the connection is taken out of routing; the client's retry goes elsewhere.

        With a router for the base model (`router_urls`) the request goes to the router, naming
        the same adapter, and counts in flight on every replica of the base model, since the
        router picks one agora does not learn (one that had not loaded the name yet may have by
        the time the request reaches it). Some replica must still hold the adapter; a refused
        connection there is the router's and takes no replica out of routing."""
        with self.lora.lock:
            base, url = self._route(member)
            router = self._router(base)
            counted = list(self._urls[base]) if router else [url]
            name = self.lora.hold(counted, member)
        try:
            yield self._endpoint(base, router or url, name)
        except Exception as e:
            if router is None and _unreachable(e) and len(self._urls[base]) > 1:
                self.lora.mark_down(url, f"{type(e).__name__}: {e}")
            raise
        finally:
            self.lora.release(counted, name)

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
            router = self._router(base, members)
            if router:
                line += f"; requests through the router at {router}"
            lines.append(f"{line}    # {who}")
        return lines


class NoReplica(ServerError, ConnectionError):
    """No replica of a base model answers with the member's adapter right now: a ConnectionError,
    so the client retries with backoff while the replica check brings one back."""


def _unreachable(e: BaseException) -> bool:
    """The request never reached a server (refused, reset): that replica is down. A timeout is not
    (the server may only be slow)."""
    if isinstance(e, openai.APIConnectionError):
        return not isinstance(e, openai.APITimeoutError)
    return isinstance(e, ConnectionError)


def slug(base: str) -> str:
    """A base model's short name for file names."""
    return Path(base).name.replace(":", "-")[:48]


__all__ = ["LoraApi", "LoraServer", "LoraServing", "error_message", "slug"]
