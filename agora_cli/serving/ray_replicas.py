"""Replicas as Ray actors (config `cluster: {kind: ray}`): where servers run is Ray core's choice.

Imported only when the config has a cluster section naming the backend, so nothing else imports
ray. Each replica is a named, detached actor holding one bundle of a named, detached placement
group (`placement` PACK or SPREAD, `num_gpus` and `num_cpus` per replica): both outlive the
`agora serve` that made them, so a later `agora run` finds them by name (`find`), and a `start()`
that meets actors with its names reuses them (`place`). On the node Ray placed it, the actor's
constructor runs exactly the command the backend builds for one server today, under the same
`ServerProcess` (and its guard: the server stops when its actor's process dies), on a port of its
own choosing, and reports the server's URL and an incarnation (which server process this is).

Ray restarts an actor that died (`cluster.max_restarts`): its constructor starts a new server,
on a port other than the one before, so requests still naming the old URL are refused (and retried
elsewhere) rather than reaching a server that has lost its adapters. `follow` tells the backend
which replicas came back (a new URL or incarnation); the backend takes them out of routing and
loads the live adapters there before they take requests again (`lora_server.py`).

Adapters reach each replica's node as `cluster.adapters` says (`adapter_delivery.py`): `Delivery`
gives `LoraServer` the path the load names on each replica. The files of the run directory a
server command names (SGLang's key config, a chat template) travel inside the actor's launch spec
and are written on its node (`run_files`). Only the server's log is still written by path: a node
that does not share the run directory writes it under the same path on its own disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import ray
from ray.util.placement_group import get_placement_group, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from agora_cli import ray_cluster
from agora_cli.errors import ServerError
from agora_cli.paths import RunPaths
from agora_cli.ray_cluster import NAMESPACE
from agora_cli.serving import adapter_delivery
from agora_cli.serving.adapter_delivery import S3Store
from agora_cli.serving.keys import replace_private
from agora_cli.serving.process import ServerProcess, free_port

if TYPE_CHECKING:
    from agora_cli.config.schema import Cluster, ReplicaPlacement

INFO_TIMEOUT_S = 10.0  # an actor that does not say where its server is in this long is down for now


class Launcher(Protocol):
    """What `place` needs of a backend (`LoraServing` is one; this module sits below it)."""

    name: str
    cfg: Any  # its backend config: host, startup_timeout_s
    run_paths: RunPaths
    API: Any  # its LoraApi: engine

    def _bases(self) -> dict[str, list[str]]: ...
    def _launch(
        self, base: str, member_names: list[str], port: int, dry_run: bool, replica: tuple[int, int] = (0, 1)
    ) -> tuple[list[str], dict[str, str]]: ...
    def _log(self, base: str, replica: int | None = None) -> Path: ...
    def _api_key(self) -> str | None: ...


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a replica's actor needs to start its server, again after each restart."""

    actor: str  # the actor's name
    run: str  # the run's id and backend: names its node-local folder
    label: str  # the server's name in messages
    cmd: list[str]  # the backend's command line; its `--port` value is replaced
    env: dict[str, str]
    host: str  # the backend's bind host; 0.0.0.0 is reached at the node's address
    log: str
    secret: str | None  # kept out of the server's log
    timeout_s: float
    # Files of the run directory the command names (SGLang's key config, a chat template), by
    # their driver path: written on the node (0600) and named there instead, so a node needs no
    # shared filesystem to start its server.
    files: dict[str, bytes] = field(default_factory=dict)


class ReplicaActor:
    """One server, on the node Ray placed this actor on; started by the constructor, so a Ray
    restart of the actor starts it again."""

    def __init__(self, spec: LaunchSpec) -> None:
        self.spec = spec
        self.node = ray.get_runtime_context().get_node_id()
        self.root = adapter_delivery.local_root(spec.run, self.node)
        port = self._port()
        ip = ray.util.get_node_ip_address()
        host = ip if spec.host in ("0.0.0.0", "::") else spec.host
        self.url = f"http://{host}:{port}"
        self.process = ServerProcess(
            name=spec.label,
            cmd=with_port(self._local_files(spec.cmd), port),
            url=self.url,
            log=Path(spec.log),
            env=spec.env,
            secret=spec.secret,
        )
        self.process.start()
        self.process.wait_healthy(spec.timeout_s)
        self.incarnation = f"{self.node[:8]}-{os.getpid()}-{self.process.pid}-{time.time():.3f}"

    def _local_files(self, cmd: list[str]) -> list[str]:
        """`cmd` with each file of `spec.files` written into this node's folder and named there."""
        if not self.spec.files:
            return cmd
        local = {}
        for i, (driver_path, data) in enumerate(sorted(self.spec.files.items())):
            path = self.root / ".launch" / f"{i}-{Path(driver_path).name}"
            replace_private(path, data)
            local[driver_path] = str(path)
        return [local.get(arg, arg) for arg in cmd]

    def _port(self) -> int:
        """A free port, never the one this replica's previous server had on this node (recorded
        in a file next to its adapters): a request aimed at the server that died must not reach
        the new one before it holds the live adapters."""
        record = self.root / f"{self.spec.actor}.port"
        try:
            previous = int(record.read_text())
        except (OSError, ValueError):
            previous = None
        port = free_port(self.spec.host)
        while port == previous:
            port = free_port(self.spec.host)
        self.root.mkdir(parents=True, exist_ok=True)
        record.write_text(str(port))
        return port

    def info(self) -> dict[str, str]:
        """The server's URL and this incarnation (changes with every restart)."""
        return {"url": self.url, "incarnation": self.incarnation, "node": self.node}

    def fetch(self, name: str, digest: str, data: bytes | None, s3: S3Store | None, key: str) -> str:
        """Write adapter `name` into this node's folder (from `data`, which Ray brought here
        through its object store, or downloaded from `s3`) and return the path to load."""
        if data is None:
            assert s3 is not None
            data = s3.download(key)
        return str(adapter_delivery.unpack(data, digest, self.root, name))

    def drop(self, name: str) -> None:
        """Delete this node's copy of adapter `name` (unloaded on this replica)."""
        adapter_delivery.remove(self.root, name)

    def stop(self) -> None:
        """Stop the server and delete this backend's adapter copies on this node (a replica
        beside it on the node is being stopped too: `remove` stops them all)."""
        self.process.stop(grace_s=30)
        shutil.rmtree(self.root, ignore_errors=True)
        with contextlib.suppress(OSError):  # the run's folder, once no node's copies are left in it
            self.root.parent.rmdir()


def run_files(cmd: list[str], run_root: Path) -> dict[str, bytes]:
    """The files under the run directory that `cmd` names, with their contents (what a node that
    does not share the run directory needs to start the server)."""
    root = run_root.resolve()
    out = {}
    for arg in cmd:
        path = Path(arg)
        if path.is_absolute() and path.resolve().is_relative_to(root) and path.is_file():
            out[arg] = path.read_bytes()
    return out


def with_port(cmd: list[str], port: int) -> list[str]:
    """`cmd` with the value after `--port` (SGLang's and vLLM's flag) set to `port`."""
    if "--port" not in cmd:
        raise ServerError(f"the server command has no --port to set: {' '.join(cmd)}")
    i = cmd.index("--port")
    return [*cmd[: i + 1], str(port), *cmd[i + 2 :]]


@dataclass
class Replica:
    """One replica's actor and what it last reported."""

    name: str
    actor: Any
    url: str
    incarnation: str


@dataclass
class Placed:
    """The placement group and each base model's replicas; `owned`: this process made them (or
    took them over in `place`), so `remove` ends them; found by name (`find`), they are left."""

    group: Any
    replicas: dict[str, list[Replica]] = field(default_factory=dict)
    owned: bool = True

    @property
    def urls(self) -> dict[str, list[str]]:
        return {base: [r.url for r in reps] for base, reps in self.replicas.items()}

    def actor_at(self, url: str) -> Any:
        """The actor whose server is at `url`, or None."""
        return next((r.actor for reps in self.replicas.values() for r in reps if r.url == url), None)


def run_id(run_root: Path) -> str:
    """A run directory's short id (from its resolved path): actor names, node-local folders."""
    return hashlib.sha1(str(run_root.resolve()).encode()).hexdigest()[:10]


def actor_name(run_root: Path, backend: str, base: str, i: int) -> str:
    """The name of a replica's actor: unique per run directory, backend, base model and index."""
    return f"agora-{run_id(run_root)}-{backend}-{Path(base).name}-{i}"


def group_name(run_root: Path, backend: str) -> str:
    """The name of a backend's placement group."""
    return f"agora-{run_id(run_root)}-{backend}"


def connect(cluster: Cluster) -> None:
    """Join the Ray cluster (once per process)."""
    ray_cluster.connect(cluster.address, cluster.runtime_env)


def _existing_actor(name: str) -> Any:
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:  # no live actor by that name
        return None


def _existing_group(name: str) -> Any:
    try:
        return get_placement_group(name)
    except ValueError:
        return None


def place(backend: Launcher, cluster: Cluster, spec: ReplicaPlacement) -> Placed:
    """Start `spec.replicas` servers per base model of `backend` as Ray actors; one after another,
    each healthy before the next (replicas sharing a GPU size their memory from what is free).
    Actors (and the placement group) already alive under their names are reused, not replaced."""
    connect(cluster)
    bases = backend._bases()
    bundle = {k: v for k, v in {"CPU": spec.num_cpus, "GPU": spec.num_gpus}.items() if v}
    root = backend.run_paths.root
    gname = group_name(root, backend.name)
    group = _existing_group(gname) or placement_group(
        [bundle] * (len(bases) * spec.replicas), strategy=spec.placement, name=gname, lifetime="detached"
    )
    placed = Placed(group)
    try:
        ray.get(group.ready(), timeout=backend.cfg.startup_timeout_s)
        actor_class = ray.remote(ReplicaActor)
        for i, (base, members) in enumerate(bases.items()):
            for r in range(spec.replicas):
                name = actor_name(root, backend.name, base, r)
                actor = _existing_actor(name)
                if actor is None:
                    cmd, env = backend._launch(  # the actor sets --port
                        base, members, 0, dry_run=False, replica=(r, spec.replicas)
                    )
                    launch = LaunchSpec(
                        actor=name,
                        run=f"{run_id(root)}-{backend.name}",
                        label=f"{backend.API.engine} server ({Path(base).name}, replica {r})",
                        cmd=cmd,
                        env=env,
                        host=backend.cfg.host,
                        log=str(backend._log(base, r)),
                        secret=backend._api_key(),
                        timeout_s=backend.cfg.startup_timeout_s,
                        files=run_files(cmd, root),
                    )
                    actor = actor_class.options(
                        name=name,
                        namespace=NAMESPACE,
                        lifetime="detached",
                        max_restarts=cluster.max_restarts,
                        num_cpus=spec.num_cpus,
                        num_gpus=spec.num_gpus,
                        scheduling_strategy=PlacementGroupSchedulingStrategy(
                            group, placement_group_bundle_index=i * spec.replicas + r
                        ),
                    ).remote(launch)
                placed.replicas.setdefault(base, []).append(Replica(name, actor, "", ""))
                # The constructor starts the server: this waits for it to be healthy.
                info = ray.get(actor.info.remote(), timeout=backend.cfg.startup_timeout_s + 60)
                placed.replicas[base][-1].url, placed.replicas[base][-1].incarnation = (
                    info["url"],
                    info["incarnation"],
                )
    except ray.exceptions.RayError as e:
        remove(placed)
        raise ServerError(f"backend {backend.name!r}: a replica did not start on the Ray cluster: {e}") from e
    except BaseException:
        remove(placed)
        raise
    return placed


def find(backend: Launcher, cluster: Cluster, spec: ReplicaPlacement) -> Placed | None:
    """The replicas an earlier `place` for this run started, looked up by name (they are detached:
    alive whether or not the process that made them still is); None unless every one is there
    and says where its server is."""
    connect(cluster)
    root = backend.run_paths.root
    group = _existing_group(group_name(root, backend.name))
    if group is None:
        return None
    placed = Placed(group, owned=False)
    for base in backend._bases():
        for r in range(spec.replicas):
            name = actor_name(root, backend.name, base, r)
            actor = _existing_actor(name)
            if actor is None:
                return None
            try:
                info = ray.get(actor.info.remote(), timeout=INFO_TIMEOUT_S)
            except ray.exceptions.RayError:
                return None
            placed.replicas.setdefault(base, []).append(
                Replica(name, actor, info["url"], info["incarnation"])
            )
    return placed


def end_left(backend: Launcher, cluster: Cluster) -> list[str]:
    """End the replicas of this run's `backend` still on the cluster, whatever their state (they
    are detached: a SIGKILLed `agora serve` leaves them running): each actor found by name, any
    replica count, its server stopped, the actor killed, the placement group removed. Returns
    the names of the actors ended."""
    connect(cluster)
    root = backend.run_paths.root
    prefixes = {base: actor_name(root, backend.name, base, 0).removesuffix("0") for base in backend._bases()}
    listed = ray.util.list_named_actors(all_namespaces=True)
    named = [a["name"] for a in listed if a["namespace"] == NAMESPACE]
    placed = Placed(_existing_group(group_name(root, backend.name)))
    for base, prefix in prefixes.items():
        for name in sorted(n for n in named if n.startswith(prefix) and n.removeprefix(prefix).isdigit()):
            actor = _existing_actor(name)
            if actor is not None:
                placed.replicas.setdefault(base, []).append(Replica(name, actor, "", ""))
    names = [r.name for reps in placed.replicas.values() for r in reps]
    remove(placed)
    return names


@dataclass
class Change:
    """A replica that is not the server it was: `url` moved to `new_url` (None: not answering)."""

    base: str
    url: str
    new_url: str | None


def follow(placed: Placed) -> list[Change]:
    """Ask each replica's actor where its server is: one that restarted (a new incarnation, maybe
    a new URL) or does not answer is reported, and its record updated."""
    changes = []
    for base, reps in placed.replicas.items():
        for rep in reps:
            try:
                info = ray.get(rep.actor.info.remote(), timeout=INFO_TIMEOUT_S)
            except ray.exceptions.RayError:  # dead for good, or still restarting
                changes.append(Change(base, rep.url, None))
                continue
            if info["incarnation"] != rep.incarnation:
                changes.append(Change(base, rep.url, info["url"]))
                rep.url, rep.incarnation = info["url"], info["incarnation"]
    return changes


def remove(placed: Placed) -> None:
    """Stop each replica's server, end its actor, free the placement group (only those this
    process owns)."""
    if not placed.owned:
        return
    for reps in placed.replicas.values():
        for rep in reps:
            try:
                ray.get(rep.actor.stop.remote(), timeout=60)
            except ray.exceptions.RayError:
                pass  # its server's guard stops it when the actor is killed below
            ray.kill(rep.actor)
    placed.replicas = {}
    if placed.group is not None:
        remove_placement_group(placed.group)


class Delivery:
    """Puts each adapter where a replica's server can load it (`cluster.adapters`); `deliver` is
    `LoraServer.deliver`, `discard` its `discard`. An adapter is packed (and uploaded, for s3)
    once, and kept in the object store while it may still be loaded (a replica that syncs late
    gets the same bytes even if the driver's directory is gone by then)."""

    def __init__(self, cluster: Cluster, run: str, placed: Placed, timeout_s: float):
        self.transport = cluster.adapters
        self.s3 = S3Store(**cluster.s3.model_dump()) if cluster.s3 is not None else None
        self.run = run
        self.placed = placed
        self.timeout_s = timeout_s
        # (lora_name, driver's dir) -> (digest, object ref, s3 key): a name given other weights
        # (which activation never does) is packed anew, so its load is refused, not stale
        self._sent: dict[tuple[str, str], tuple[str, Any, str]] = {}
        self._lock = threading.Lock()

    def _source(self, name: str, path: str) -> tuple[str, Any, str]:
        with self._lock:  # once per name, even when two replicas sync at once
            if (name, path) not in self._sent:
                packed = adapter_delivery.pack(Path(path))
                if self.s3 is not None and self.transport == "s3":
                    key = self.s3.key(self.run, name, packed.digest)
                    self.s3.upload(key, packed.data)
                    self._sent[name, path] = (packed.digest, None, key)
                else:
                    self._sent[name, path] = (packed.digest, ray.put(packed.data), "")
            return self._sent[name, path]

    def deliver(self, url: str, name: str, path: str) -> str:
        """The path of adapter `name` on the node of the replica at `url` (copied there first)."""
        if self.transport == "shared":
            return path
        actor = self.placed.actor_at(url)
        if actor is None:
            raise ServerError(f"no replica actor serves {url} any more") from ConnectionError(url)
        digest, ref, key = self._source(name, path)
        s3 = self.s3 if self.transport == "s3" else None
        try:
            # An object ref passed as an argument reaches the actor as its bytes, on its node.
            where: str = ray.get(actor.fetch.remote(name, digest, ref, s3, key), timeout=self.timeout_s)
        except ray.exceptions.RayActorError as e:  # the replica is gone: it leaves routing
            raise ServerError(f"the replica at {url} died while adapter {name} was delivered: {e}") from (
                ConnectionError(str(e))
            )
        except ray.exceptions.RayError as e:
            raise ServerError(f"adapter {name} did not reach the replica at {url}: {e}") from e
        return where

    def discard(self, url: str, name: str) -> None:
        """`name` was unloaded on the replica at `url`: delete its copy there, and forget its bytes
        and its S3 object (nothing loads a name again once it is unloaded). Best effort: a
        leftover costs disk or storage only."""
        with self._lock:
            gone = [self._sent.pop(k) for k in [k for k in self._sent if k[0] == name]]
        for _, _, key in gone:
            if key and self.s3 is not None:
                self.s3.delete(key)
        actor = self.placed.actor_at(url)
        if actor is not None and self.transport != "shared":
            actor.drop.remote(name)  # best effort, not awaited: a leftover costs disk only
