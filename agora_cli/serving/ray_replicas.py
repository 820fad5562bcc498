"""Replicas as Ray actors (config `cluster: {kind: ray}`): where servers run is Ray core's choice.

Imported only when the config has a cluster section naming the backend, so nothing else imports
ray. Each replica is a named, detached actor holding one bundle of a placement group (`placement`
PACK or SPREAD, `num_gpus` and `num_cpus` per replica). On the node Ray placed it, the actor runs
exactly the command the backend builds for one server today, under the same `ServerProcess` (and
its guard: the server stops when its actor dies), and reports the server's URL. The backend then
treats those URLs as its replicas (`lora_adapters.py`): every adapter load goes to each, and each
request to the least busy one holding the member's adapter.

Adapter directories, the run's logs and its key file are read and written by path on every node:
the run directory must be on a filesystem all nodes share.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from agora_cli.errors import ServerError
from agora_cli.paths import RunPaths
from agora_cli.serving.process import ServerProcess, free_port

if TYPE_CHECKING:
    from agora_cli.config.schema import Cluster, ReplicaPlacement

NAMESPACE = "agora"


class Launcher(Protocol):
    """What `place` needs of a backend (`LoraServing` is one; this module sits below it)."""

    name: str
    cfg: Any  # its backend config: host, startup_timeout_s
    run_paths: RunPaths
    API: Any  # its LoraApi: engine

    def _bases(self) -> dict[str, list[str]]: ...
    def _launch(
        self, base: str, member_names: list[str], port: int, dry_run: bool
    ) -> tuple[list[str], dict[str, str]]: ...
    def _log(self, base: str) -> Path: ...
    def _api_key(self) -> str | None: ...


class ReplicaActor:
    """One server, on the node Ray placed this actor on."""

    def __init__(self) -> None:
        self.process: ServerProcess | None = None

    def free_port(self, host: str) -> tuple[str, int]:
        """This node's address and a port free on it."""
        return ray.util.get_node_ip_address(), free_port(host)

    def start(
        self,
        name: str,
        cmd: list[str],
        env: dict[str, str],
        url: str,
        log: str,
        secret: str | None,
        timeout_s: float,
    ) -> str:
        """Launch `cmd` (the backend's own command line) and return `url` once it is healthy."""
        self.process = ServerProcess(name=name, cmd=cmd, url=url, log=Path(log), env=env, secret=secret)
        self.process.start()
        self.process.wait_healthy(timeout_s)
        return url

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace_s=30)


@dataclass
class Placed:
    """What `place` started: the placement group, the actors, and each base model's URLs."""

    group: Any
    actors: list[Any] = field(default_factory=list)
    urls: dict[str, list[str]] = field(default_factory=dict)


def actor_name(run_root: Path, backend: str, base: str, i: int) -> str:
    """The name of a replica's actor: unique per run directory, backend, base model and index."""
    run = hashlib.sha1(str(run_root.resolve()).encode()).hexdigest()[:10]
    return f"agora-{run}-{backend}-{Path(base).name}-{i}"


def place(backend: Launcher, cluster: Cluster, spec: ReplicaPlacement) -> Placed:
    """Start `spec.replicas` servers per base model of `backend` as Ray actors; one after another,
    each healthy before the next (replicas sharing a GPU size their memory from what is free)."""
    if not ray.is_initialized():
        ray.init(
            address=cluster.address,
            namespace=NAMESPACE,
            runtime_env=cluster.runtime_env or None,
            log_to_driver=False,
        )
    bases = backend._bases()
    bundle = {k: v for k, v in {"CPU": spec.num_cpus, "GPU": spec.num_gpus}.items() if v}
    group = placement_group([bundle] * (len(bases) * spec.replicas), strategy=spec.placement)
    placed = Placed(group)
    try:
        ray.get(group.ready(), timeout=backend.cfg.startup_timeout_s)
        actor_class = ray.remote(ReplicaActor)
        for i, (base, members) in enumerate(bases.items()):
            for r in range(spec.replicas):
                actor: Any = actor_class.options(
                    name=actor_name(backend.run_paths.root, backend.name, base, r),
                    namespace=NAMESPACE,
                    lifetime="detached",
                    num_cpus=spec.num_cpus,
                    num_gpus=spec.num_gpus,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        group, placement_group_bundle_index=i * spec.replicas + r
                    ),
                ).remote()
                placed.actors.append(actor)
                ip, port = ray.get(actor.free_port.remote(backend.cfg.host))
                cmd, env = backend._launch(base, members, port, dry_run=False)
                # A server bound to every interface is reached at its node's address.
                host = ip if backend.cfg.host in ("0.0.0.0", "::") else backend.cfg.host
                url: str = ray.get(
                    actor.start.remote(
                        f"{backend.API.engine} server ({Path(base).name}, replica {r})",
                        cmd,
                        env,
                        f"http://{host}:{port}",
                        str(backend._log(base).with_suffix(f".{r}.log")),
                        backend._api_key(),
                        backend.cfg.startup_timeout_s,
                    )
                )
                placed.urls.setdefault(base, []).append(url)
    except ray.exceptions.RayError as e:
        remove(placed)
        raise ServerError(f"backend {backend.name!r}: a replica did not start on the Ray cluster: {e}") from e
    except BaseException:
        remove(placed)
        raise
    return placed


def remove(placed: Placed) -> None:
    """Stop each replica's server, end its actor, free the placement group."""
    for actor in placed.actors:
        try:
            ray.get(actor.stop.remote(), timeout=60)
        except ray.exceptions.RayError:
            pass  # its server's guard stops it when the actor is killed below
        ray.kill(actor)
    placed.actors = []
    remove_placement_group(placed.group)
