"""The embedded backend: `transformers serve --continuous-batching` on 127.0.0.1 (CPU default).

What `transformers serve` (5.x) does, read from its source (`transformers/cli/serving/`):
  - a request's `model` may be a local directory; the server appends `@main` as a revision and
    splits `<repo>:<file>.gguf`, so served paths must contain neither `@` nor `:`;
  - with `--continuous-batching` there is ONE batching manager per process, bound to one model:
    a request for another model stops it and builds a new one with a fresh KV cache (measured: the
    process grew to 5.8 GB and requests stalled while two models alternated), and the sampling
    settings (temperature, top_p) of the request that created it apply to every later request;
  - the KV cache takes 60% of free RAM on CPU unless `--cb-num-blocks` says otherwise;
  - a positional model is preloaded before the port opens and never unloaded (`/health` up means
    the weights are in memory), and requests naming any other model get a 400.

So this backend runs one `transformers serve <model dir>` per *served model* (not per member:
members sharing a base share its server), each with a fixed KV cache, and warms each with one
tiny request using the protocol's solve sampling, which therefore becomes that server's sampling
(set `continuous_batching: false` for exact per-request sampling, at the cost of batching).

A trained adapter goes live by merging it into a copy of the base weights (`merge.py`), starting a
server for the merged directory, warming it, switching the member's endpoint, and retiring the
old server once no member uses it. Retiring is a SIGTERM: uvicorn stops accepting connections and
finishes the requests in flight, so no request is lost across a swap.

No API key: `transformers serve` (5.x, `transformers/cli/serve.py` and `cli/serving/server.py`)
has no key option and no authentication middleware, so unlike the `sglang` and `vllm` servers
these answer anyone who reaches the port. They listen on 127.0.0.1 (the `host` default; `agora
validate` warns on any other) and expose no adapter-loading endpoint, but any local user can send
them requests.
"""

from __future__ import annotations

import re
import shutil
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agora_cli.config import Config, Member, Sampling, TransformersBackend
from agora_cli.endpoint import Endpoint
from agora_cli.errors import ServerError
from agora_cli.events import NULL_BUS, EventBus
from agora_cli.models import prepare
from agora_cli.paths import RunPaths
from agora_cli.serving.merge import merge_in_subprocess
from agora_cli.serving.process import ServerProcess, free_port, http, is_healthy
from agora_cli.serving.registry import register


@dataclass
class _Server:
    model: str  # the served model directory (also the request `model` name)
    url: str  # root URL, http://host:port
    process: ServerProcess | None  # None: started by someone else (attached)


class TransformersServing:
    """The members of one `transformers` backend; see the module docstring."""

    def __init__(
        self,
        name: str,
        cfg: TransformersBackend,
        members: list[Member],
        run_paths: RunPaths,
        bus: EventBus = NULL_BUS,
        warm_sampling: Sampling | None = None,
    ):
        self.name = name
        self.cfg = cfg
        self.members = {m.name: m for m in members}
        self.run_paths = run_paths
        self.bus = bus
        self.warm_sampling = warm_sampling or Sampling()
        self._lock = threading.RLock()
        self._base: dict[str, str] = {}  # member -> prepared base model dir
        self._current: dict[str, str] = {}  # member -> model served for it now
        self._servers: dict[str, _Server] = {}  # model -> its server
        self._retiring: list[tuple[threading.Thread, ServerProcess]] = []
        self._next_port = cfg.port
        # Graceful retirement waits for in-flight requests up to the longest request timeout.
        self._drain_s = max((m.request_timeout_s for m in members), default=600.0)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Prepare every member's weights, start one server per distinct model, wait, warm."""
        for m in self.members.values():
            self._base[m.name] = _served_path(prepare(m))
        models = sorted(set(self._base.values()))
        launched = [self._launch(model) for model in models]
        try:
            for server in launched:
                self._wait_and_warm(server)
        except BaseException:
            self.stop()
            raise
        with self._lock:
            self._current = dict(self._base)

    def attach(self, state: dict[str, Any]) -> bool:
        """Use servers recorded by `agora serve` (see `state`); False when they do not fit."""
        members, servers = state.get("members", {}), state.get("servers", {})
        if set(members) != set(self.members) or not all(members[m] in servers for m in members):
            return False
        if not all(is_healthy(servers[members[m]]) for m in members):
            return False
        with self._lock:
            for m in self.members.values():
                self._base[m.name] = _served_path(prepare(m))
            self._current = dict(members)
            for model in set(members.values()):
                self._servers[model] = _Server(model, servers[model].rstrip("/"), None)
        return True

    def state(self) -> dict[str, Any]:
        """What `agora serve` records so other processes can attach."""
        with self._lock:
            return {
                "kind": "transformers",
                "members": dict(self._current),
                "servers": {model: s.url for model, s in self._servers.items()},
            }

    def health(self) -> bool:
        with self._lock:
            urls = [self._servers[model].url for model in set(self._current.values())]
        return all(is_healthy(u) for u in urls)

    def stop(self) -> None:
        """Stop every server this process started (idempotent)."""
        with self._lock:
            servers = [s for s in self._servers.values() if s.process is not None]
            self._servers.clear()
            self._current.clear()
        for s in servers:
            s.process.stop()  # type: ignore[union-attr]
            self.bus.emit(
                "server_stopped",
                backend=self.name,
                url=s.url,
                log=str(s.process.log),  # type: ignore[union-attr]
            )
        # Servers still draining after a swap: stopping the run stops them too.
        retiring, self._retiring = self._retiring, []
        for t, process in retiring:
            process.stop(grace_s=10)
            t.join(timeout=30)

    # ------------------------------------------------------------------ routing

    def endpoint(self, member: str) -> Endpoint:
        with self._lock:
            model = self._current.get(member)
            if model is None:
                raise ServerError(
                    f"member {member!r} has no live server on backend {self.name!r}; "
                    "start the servers first (Serving.start or `agora serve`)"
                )
            return Endpoint(base_url=f"{self._servers[model].url}/v1", model=model)

    def activate(self, member: str, adapter_dir: Path, version: int) -> Endpoint:
        """Merge `adapter_dir` into the member's base weights and serve the result; see module."""
        if member not in self.members:
            raise ServerError(f"member {member!r} is not served by backend {self.name!r}")
        base = self._base.get(member) or _served_path(prepare(self.members[member]))
        out = (self.run_paths.root / "merged" / member / f"v{version}").resolve()
        merge_in_subprocess(
            Path(base), Path(adapter_dir), out, log=self.run_paths.logs / f"merge-{member}.log"
        )
        model = _served_path(out)
        with self._lock:
            server = self._servers.get(model)
        if server is None or (server.process is not None and not server.process.alive()):
            server = self._launch(model)
            try:
                self._wait_and_warm(server)
            except BaseException:
                with self._lock:
                    self._servers.pop(model, None)
                if server.process is not None:
                    server.process.stop()
                raise
        with self._lock:
            self._current[member] = model
        self._retire_unused()
        self._prune_merged(member)
        return self.endpoint(member)

    def describe(self) -> list[str]:
        """The command line of every server (placeholders before `start`)."""
        with self._lock:
            running = {model: s for model, s in self._servers.items()}
        if running:
            return [
                " ".join(s.process.cmd) if s.process else f"(attached) {s.url} serves {model}"
                for model, s in running.items()
            ]
        lines, seen = [], set()
        for m in self.members.values():
            model = _planned_path(m)
            if model in seen:
                continue
            seen.add(model)
            port = str(self.cfg.port + len(seen) - 1) if self.cfg.port else "<free port>"
            users = ", ".join(x.name for x in self.members.values() if _planned_path(x) == model)
            lines.append(f"{' '.join(self._command(model, port))}    # {users}")
        return lines

    # ------------------------------------------------------------------ internals

    def _command(self, model: str, port: int | str) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "transformers.cli.transformers",
            "serve",
            model,
            "--host",
            self.cfg.host,
            "--port",
            str(port),
            "--device",
            self.cfg.device,
            "--dtype",
            server_dtype(self.cfg),
        ]
        if self.cfg.continuous_batching:
            cmd += [
                "--continuous-batching",
                "--cb-num-blocks",
                str(self.cfg.cb_num_blocks),
                "--cb-max-batch-tokens",
                str(self.cfg.cb_max_batch_tokens),
            ]
        return cmd + list(self.cfg.extra_args)

    def _launch(self, model: str) -> _Server:
        with self._lock:
            if self.cfg.port:
                port = self._next_port
                self._next_port += 1
            else:
                port = free_port(self.cfg.host)
            # Two components: merged copies are .../merged/<member>/v<N>.
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(Path(model).parts[-2:]))[-60:]
            log = self.run_paths.logs / f"transformers-{self.name}-{slug}.log"
            process = ServerProcess(
                name=f"transformers serve ({Path(model).name})",
                cmd=self._command(model, port),
                url=f"http://{self.cfg.host}:{port}",
                log=log,
                env={
                    "TOKENIZERS_PARALLELISM": "false",
                    "OMP_NUM_THREADS": str(self.cfg.threads_per_server),
                },
            )
            self.bus.emit(
                "server_starting", backend=self.name, url=process.url, model=model, log=str(log), launch=True
            )
            process.start()
            server = _Server(model, process.url, process)
            self._servers[model] = server
        return server

    def _wait_and_warm(self, server: _Server) -> None:
        assert server.process is not None
        server.process.wait_healthy(self.cfg.startup_timeout_s)
        # One tiny request: creates the batching manager (and its sampling, see module docstring)
        # so the first real request does not pay for it.
        body = {
            "model": server.model,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 1,
            "temperature": self.warm_sampling.temperature,
            "top_p": self.warm_sampling.top_p,
        }
        try:
            r = http("POST", f"{server.url}/v1/chat/completions", body, timeout=self.cfg.startup_timeout_s)
        except OSError as e:
            raise ServerError(
                f"{server.process.name} did not answer its warm-up request ({e}); see {server.process.log}"
            ) from e
        if r.status != 200:
            raise ServerError(
                f"{server.process.name} rejected its warm-up request ({r.status}: "
                f"{r.text[:300]}); see {server.process.log}"
            )
        self.bus.emit(
            "server_started",
            backend=self.name,
            url=server.url,
            model=server.model,
            log=str(server.process.log),
        )

    def _retire_unused(self) -> None:
        with self._lock:
            live = set(self._current.values())
            unused = [m for m, s in self._servers.items() if m not in live and s.process]
            retired = [self._servers.pop(m) for m in unused]
        for s in retired:
            # Graceful: in-flight requests finish (uvicorn drains on SIGTERM), then it exits.
            t = threading.Thread(
                target=self._retire, args=(s,), name=f"retire-{Path(s.model).name}", daemon=True
            )
            t.start()
            self._retiring.append((t, s.process))  # type: ignore[arg-type]

    def _retire(self, server: _Server) -> None:
        assert server.process is not None
        server.process.stop(grace_s=self._drain_s)
        self.bus.emit("server_stopped", backend=self.name, url=server.url, log=str(server.process.log))

    def _prune_merged(self, member: str) -> None:
        """Keep the newest `keep_merged` merged copies of `member`; never one being served."""
        root = self.run_paths.root / "merged" / member
        if not root.is_dir():
            return
        with self._lock:
            served = set(self._servers) | set(self._current.values())
        versions = sorted((int(d.name[1:]), d) for d in root.iterdir() if re.fullmatch(r"v\d+", d.name))
        for _, d in versions[: max(0, len(versions) - self.cfg.keep_merged)]:
            if _served_path(d) not in served:
                shutil.rmtree(d, ignore_errors=True)


def server_dtype(cfg: TransformersBackend) -> str:
    """The `--dtype` to serve with: the configured one, else bfloat16 on a CPU with native bf16.

    Measured on SmolLM2-135M (one torch thread, AMX): a decode step for 16 requests takes 71 ms in
    bfloat16 against 133 ms in float32, one request 55 ms in both, so batching gains ~1.9x and a
    single request loses nothing. Without AVX512-BF16/AMX oneDNN emulates bf16 (limited to plain
    AVX512 on the same machine the 16-request step took 190 ms), so those CPUs keep float32, and so
    do non-CPU devices, which this measurement says nothing about.
    """
    if cfg.dtype:
        return cfg.dtype
    return "bfloat16" if cfg.device == "cpu" and cpu_has_native_bf16() else "float32"


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU flags list AVX512-BF16 or AMX-BF16 (Linux; False where unreadable)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def _served_path(path: Path) -> str:
    """Absolute model path as the server will see it; refuses characters it would misparse."""
    s = str(Path(path).resolve()) if Path(path).exists() else str(path)
    if Path(path).exists() and ("@" in s or ":" in s):
        raise ServerError(
            f"model path {s} contains '@' or ':', which transformers serve splits model names on; "
            "move AGORA_HOME / the run directory to a path without them"
        )
    return s


def _planned_path(m: Member) -> str:
    """The prepared directory when it is already cached, else a placeholder (no conversion)."""
    from agora_cli.models import cached_path

    path = cached_path(m)
    return str(path) if path else f"<prepared {m.model}>"


@register(TransformersBackend)
def build(
    name: str,
    spec: TransformersBackend,
    members: list[Member],
    run_paths: RunPaths,
    bus: EventBus,
    config: Config,
) -> TransformersServing:
    """The `transformers` backend named `name` (registered in serving/registry.py)."""
    # Warm-up requests use a member's own sampling when one sets it, else the solve stage's.
    warm = next((m.sampling for m in members if m.sampling), None)
    return TransformersServing(
        name, spec, members, run_paths, bus, warm_sampling=warm or config.protocol.sampling.solve
    )
