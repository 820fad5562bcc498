"""Serving: every configured backend behind one object.

The loop, the trainer and the CLI use only `Serving` (or `serving_pool`, which also makes the
client pool):

    with Serving(cfg, run_paths, bus) as serving:
        pool = serving.client_pool()          # requests resolve serving.endpoint(member)
        ...
        serving.activate("smol-a", adapter_dir, version=1)   # hot-swap, no request lost

`start()` attaches to servers already started by `agora serve CONFIG --run-dir DIR` (recorded in
`run_paths.servers`) when that file names a live process whose servers are healthy; Ray replicas
(`cluster:`) are found by their actor names instead, even when the process that started them is
gone (the file, whoever wrote it, still gives their live adapters); otherwise it launches what the
config needs. Each activation updates the file when there is one, so it stays the record of the
live adapters. `stop()` stops only what this process started; it is idempotent
and also runs at exit and on SIGTERM; a backend that fails to stop is reported (a
`server_stop_failed` event and a warning on the `agora` logger) and the others are still stopped.
A Ctrl-C or SIGTERM that arrives while `stop()` runs does
not cut it short (servers it had not reached yet would be left running): it SIGKILLs every server
this process started, `stop()` finishes, and the interruption is raised afterwards. A killed
agora (SIGKILL, OOM) cannot run any of this; each server's guard stops it (`process.py`).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from agora_cli.client import ClientPool, MemberLimits
from agora_cli.config import Config
from agora_cli.endpoint import Endpoint
from agora_cli.errors import ServerError
from agora_cli.events import NULL_BUS, EventBus
from agora_cli.paths import RunPaths

# Each backend module registers its builder when imported (serving/registry.py).
from agora_cli.serving import openai_compat, sglang, transformers, vllm  # noqa: F401
from agora_cli.serving.base import ServingBackend
from agora_cli.serving.lora_server import LoraServing
from agora_cli.serving.process import kill_all
from agora_cli.serving.registry import builder_for

__all__ = ["Endpoint", "Serving", "ServingBackend", "build_backend", "serving_pool"]
log = logging.getLogger("agora")


def build_backend(cfg: Config, name: str, run_paths: RunPaths, bus: EventBus = NULL_BUS) -> ServingBackend:
    """The backend instance for `cfg.backends[name]` and the members it serves."""
    spec = cfg.backends[name]
    members = [m for m in cfg.members if m.backend == name]
    return builder_for(name, spec)(name, spec, members, run_paths, bus, cfg)


class Serving:
    """All servers of one config; see the module docstring."""

    def __init__(self, cfg: Config, run_paths: RunPaths, bus: EventBus = NULL_BUS):
        self.cfg = cfg
        self.run_paths = run_paths
        self.bus = bus
        used = {m.backend for m in cfg.members}
        self.backends: dict[str, ServingBackend] = {
            n: build_backend(cfg, n, run_paths, bus) for n in cfg.backends if n in used
        }
        self._member_backend = {m.name: m.backend for m in cfg.members}
        if cfg.cluster is not None:  # replicas as Ray actors (serving/ray_replicas.py)
            for n, spec in cfg.cluster.backends.items():
                if n in self.backends:
                    self.backends[n].placement = (cfg.cluster, spec)  # type: ignore[attr-defined]
        self._started = False
        self._wrote_servers_file = False
        self.attached = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Attach to `agora serve`'s servers when live, else launch; returns when all are healthy."""
        if self._started:
            return
        self.run_paths.logs.mkdir(parents=True, exist_ok=True)
        atexit.register(self._stop_at_exit)
        _stop_on_sigterm()
        if self._try_attach():
            self.attached = True
            self.bus.emit(
                "servers_attached", backends=sorted(self.backends), file=str(self.run_paths.servers)
            )
        else:
            try:
                for backend in self.backends.values():
                    backend.start()
            except BaseException:
                self.stop()
                raise
        self._started = True

    def stop(self) -> None:
        """Stop what this process started and remove the servers file it wrote (idempotent).

        A signal arriving meanwhile SIGKILLs the servers instead of abandoning them; see the
        module docstring.
        """
        with _escalate_signals():
            for name, backend in self.backends.items():
                try:
                    backend.stop()
                except Exception as e:  # noqa: BLE001 - keep stopping the others, but say so
                    error = f"{type(e).__name__}: {e}"
                    log.warning(
                        "backend %s failed to stop (%s); its servers may still run, see %s",
                        name,
                        error,
                        self.run_paths.logs,
                    )
                    self.bus.emit("server_stop_failed", backend=name, error=error)
            if self._wrote_servers_file:
                self.run_paths.servers.unlink(missing_ok=True)
                self._wrote_servers_file = False
            self._started = False

    def end_left(self) -> dict[str, list[str]]:
        """End the Ray replicas of this run that a killed `agora serve` left on the cluster (servers
        on one machine stop with the agora that started them): backend -> actors ended."""
        ended = {}
        for name, backend in self.backends.items():
            if isinstance(backend, LoraServing) and (names := backend.end_left()):
                ended[name] = names
        return ended

    def _stop_at_exit(self) -> None:
        try:
            self.stop()
        except (KeyboardInterrupt, SystemExit):  # the process is ending anyway; stop() finished
            pass

    def __enter__(self) -> Serving:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def health(self) -> bool:
        return all(b.health() for b in self.backends.values())

    # ------------------------------------------------------------------ routing

    def endpoint(self, member: str) -> Endpoint:
        """Where `member`'s requests go right now (changes after `activate`)."""
        try:
            backend = self.backends[self._member_backend[member]]
        except KeyError:
            raise ServerError(f"unknown member {member!r}") from None
        return backend.endpoint(member)

    def lease(self, member: str) -> AbstractContextManager[Endpoint]:
        """`member`'s endpoint for one request: a backend that unloads adapters keeps the one the
        endpoint names loaded until the block ends (`LoraServing.lease`)."""
        try:
            backend = self.backends[self._member_backend[member]]
        except KeyError:
            raise ServerError(f"unknown member {member!r}") from None
        lease = getattr(backend, "lease", None)
        return lease(member) if lease is not None else nullcontext(backend.endpoint(member))

    def activate(self, member: str, adapter_dir: Path, version: int) -> Endpoint:
        """Make the PEFT adapter in `adapter_dir` live for `member`; returns its new endpoint."""
        backend = self.backends[self._member_backend[member]]
        endpoint = backend.activate(member, Path(adapter_dir), version)
        self._record_adapters()
        return endpoint

    def client_pool(self) -> ClientPool:
        """A ClientPool resolving through `endpoint`, with each member's limits from the config."""
        limits = {
            m.name: MemberLimits(max_concurrency=m.max_concurrency, timeout_s=m.request_timeout_s)
            for m in self.cfg.members
        }
        extra = {
            m.name: {"chat_template_kwargs": m.chat_template_kwargs}
            for m in self.cfg.members
            if m.chat_template_kwargs
        }
        return ClientPool(
            resolve=self.endpoint,
            lease=self.lease,
            limits=limits,
            settings=self.cfg.client,
            bus=self.bus,
            extra_body=extra,
        )

    def describe(self) -> list[str]:
        """One line per server: the command (before start) or what is running."""
        return [f"[{name}] {line}" for name, b in self.backends.items() for line in b.describe()]

    # ------------------------------------------------------------------ attach file

    def write_servers_file(self) -> Path:
        """Record live servers in `run_paths.servers` so other commands attach (`agora serve`)."""
        state = {
            "pid": os.getpid(),
            "config": self.cfg.name,
            "backends": {name: b.state() for name, b in self.backends.items()},
        }
        path = self.run_paths.servers
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, path)
        self._wrote_servers_file = True
        return path

    def _record_adapters(self) -> None:
        """Rewrite the servers file, when there is one, with the backends' live adapters now (its
        writer's pid kept: the attach check follows the process that owns the servers)."""
        recorded = _read_json(self.run_paths.servers)
        if recorded is None or recorded.get("config") != self.cfg.name:
            return
        recorded["backends"] = {name: b.state() for name, b in self.backends.items()}
        tmp = self.run_paths.servers.with_suffix(".tmp")
        tmp.write_text(json.dumps(recorded, indent=2))
        os.replace(tmp, self.run_paths.servers)

    def _try_attach(self) -> bool:
        """Attach every backend or report False: Ray replicas by actor name (detached: they outlive
        the process that made them), other servers through a servers file whose writer lives."""
        live = read_servers_file(self.run_paths)
        by_name = {n for n, b in self.backends.items() if getattr(b, "placement", None) is not None}
        if live is None and not by_name:
            return False
        recorded = (live or _read_json(self.run_paths.servers) or {}).get("backends", {})
        for name, b in self.backends.items():
            if name in by_name:
                ok = b.attach_by_name(recorded.get(name, {}))  # type: ignore[attr-defined]
            else:
                ok = live is not None and name in recorded and b.attach(recorded[name])
            if not ok:
                return False
        return True


@contextmanager
def serving_pool(cfg: Config, paths: RunPaths, bus: EventBus) -> Iterator[tuple[Serving, ClientPool]]:
    """Start (or attach to) every member's server for the block; yields (serving, client pool)."""
    with Serving(cfg, paths, bus) as srv:
        yield srv, srv.client_pool()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_servers_file(run_paths: RunPaths) -> dict[str, Any] | None:
    """The servers file when it exists and its writer is still alive, else None."""
    try:
        state = json.loads(run_paths.servers.read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state


@contextmanager
def _escalate_signals() -> Iterator[None]:
    """While stopping: SIGINT/SIGTERM SIGKILL every server instead of raising mid-stop; the first
    such signal is raised once the block is done (KeyboardInterrupt, or SystemExit(128 + n)).

    Only the main thread can set handlers; elsewhere (and for signals set to SIG_IGN or handled
    outside Python) the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def escalate(signum: int, frame: object) -> None:
        caught.append(signum)
        kill_all()

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if handler is signal.SIG_IGN or handler is None:
            continue
        previous[sig] = handler
        signal.signal(sig, escalate)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught:
        if caught[0] == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + caught[0])


def _stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so context managers and atexit stop the servers."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:

        def _exit(signum: int, frame: object) -> None:
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, _exit)
