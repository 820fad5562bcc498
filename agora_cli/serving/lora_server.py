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

`LoraServing` is the backend both engines are: one server per base model (members sharing a base
share its server, each with its own adapters), started one after another, each ready before the
next; routing, activation, attach/state/health/stop. An engine's module keeps only what differs:
its `LoraApi`, its command line and environment (`_launch`), its readiness check (`_ready`), and
the two SGLang-only hooks (`_extra_body`, `_check_adapter`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agora_cli.config import Member, SGLangBackend, VLLMBackend
from agora_cli.endpoint import NO_KEY, Endpoint
from agora_cli.errors import ServerError
from agora_cli.events import NULL_BUS, EventBus
from agora_cli.models import cached_path, prepare
from agora_cli.paths import RunPaths
from agora_cli.serving.keys import bearer, server_key
from agora_cli.serving.process import Reply, ServerProcess, free_port, http


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

    def __init__(self, api: LoraApi, backend: str, bus: EventBus, timeout_s: float):
        self.api = api
        self.backend = backend
        self.bus = bus
        self.timeout_s = timeout_s
        self.headers: dict[str, str] = {}  # Authorization: load/unload are admin calls
        self.lock = threading.RLock()
        self.adapters: dict[str, str | None] = {}  # member -> live lora_name (None: the base)
        self.in_flight: dict[str, int] = {}  # lora_name -> requests sent with it, not yet finished
        self.retired: dict[str, tuple[str, str]] = {}  # lora_name -> (url, member): unload when idle
        self._unloads: list[threading.Thread] = []

    def model(self, base: str, member: str) -> str:
        """The `model` field of `member`'s requests right now."""
        with self.lock:
            return self.api.model_name(base, self.adapters.get(member))

    def hold(self, member: str) -> str | None:
        """Count one more request on `member`'s live adapter and return its name (None: the base).
        The caller holds `lock` while it also reads the endpoint, so both name the same adapter."""
        with self.lock:
            name = self.adapters.get(member)
            if name is not None:
                self.in_flight[name] = self.in_flight.get(name, 0) + 1
            return name

    def release(self, name: str | None) -> None:
        """One request on `name` finished (or failed): unload it when it was retired and this was
        its last request."""
        if name is None:
            return
        with self.lock:
            left = self.in_flight.get(name, 0) - 1
            if left > 0:
                self.in_flight[name] = left
                return
            self.in_flight.pop(name, None)
            retired = self.retired.pop(name, None)
        if retired is not None:
            self._unload(retired[0], retired[1], name)

    def activate(self, url: str, member: str, adapter_dir: Path, version: int) -> str:
        """Load `adapter_dir` as `<member>-v<version>` on the server at `url`, switch the member to
        it, retire the old name (unloaded once no request uses it); returns the new name. The
        member keeps its old model when anything before the switch fails."""
        name = f"{member}-v{version}"
        path = str(Path(adapter_dir).resolve())
        r = self._post(url, self.api.load_path, {"lora_name": name, "lora_path": path})
        if r.status != 200 or not _success(r):
            message = error_message(r)
            if self.api.already_loaded not in message.lower() or not self._loaded_from(url, name, path):
                raise ServerError(f"{self.api.engine} at {url} refused adapter {name} from {path}: {message}")
        listed = self.listed_adapters(url)
        if listed is not None and name not in listed:
            raise ServerError(f"{self.api.engine} at {url} accepted {name} but /v1/models does not list it")
        idle = False
        with self.lock:
            old = self.adapters.get(member)
            self.adapters[member] = name
            self.retired.pop(name, None)  # live again (a retried activation): never unload it
            if old and old != name and old not in self.adapters.values():
                idle = not self.in_flight.get(old)
                if not idle:  # its last request's `release` unloads it
                    self.retired[old] = (url, member)
        if idle and old:
            self._unload(url, member, old)
        return name

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
        self._urls: dict[str, str] = {}  # base -> server root URL
        self._processes: dict[str, ServerProcess] = {}  # base -> process we launched
        self.lora = LoraServer(self.API, name, bus, timeout_s=cfg.startup_timeout_s)
        self._key: str | None = None

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

    def _server(self, i: int, base: str, member_names: list[str]) -> ServerProcess:
        """The i-th server: to launch, or (`launch: false`) the one already running elsewhere."""
        if not self.cfg.launch:
            url = self.cfg.urls.get(base)
            if url is None:
                raise ServerError(
                    f"backend {self.name!r} has launch: false but no URL for base model "
                    f"{base!r}; add it under backends.{self.name}.urls"
                )
            return ServerProcess(
                name=f"{self.API.engine} server", cmd=[], url=url.rstrip("/"), log=self._log(base)
            )
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
        when it starts; on CPU they would fight for the cores while loading)."""
        bases = self._bases()
        self.lora.headers = bearer(self._api_key())  # load/unload are admin calls: key them too
        try:
            for i, (base, member_names) in enumerate(bases.items()):
                process = self._server(i, base, member_names)
                self.bus.emit(
                    "server_starting",
                    backend=self.name,
                    url=process.url,
                    model=base,
                    log=str(process.log),
                    launch=self.cfg.launch,
                )
                if self.cfg.launch:
                    process.start()
                    self._processes[base] = process
                process.wait_healthy(self.cfg.startup_timeout_s)
                self._urls[base] = process.url
                self.bus.emit(
                    "server_started", backend=self.name, url=process.url, model=base, log=str(process.log)
                )
        except BaseException:
            self.stop()
            raise
        with self.lora.lock:
            for m in self.members:
                self.lora.adapters.setdefault(m, None)

    def attach(self, state: dict[str, Any]) -> bool:
        """Take over the servers a previous process recorded (`state()`), when they are the ones
        this config needs and all answer; False (nothing changed) otherwise."""
        servers, adapters = state.get("servers", {}), state.get("adapters", {})
        if set(self._bases()) != set(servers) or not all(self._ready(u) for u in servers.values()):
            return False
        key = self._api_key()
        with self.lora.lock:
            self.lora.headers = bearer(key)
            self._urls = {b: u.rstrip("/") for b, u in servers.items()}
            self.lora.adapters = {m: adapters.get(m) for m in self.members}
        return True

    def state(self) -> dict[str, Any]:
        """What `attach` needs: server URLs and live adapters (never the key)."""
        with self.lora.lock:
            return {"kind": self.kind, "servers": dict(self._urls), "adapters": dict(self.lora.adapters)}

    def health(self) -> bool:
        return all(self._ready(u) for u in self._urls.values())

    def stop(self) -> None:
        processes, self._processes = list(self._processes.values()), {}
        self.lora.shutdown(processes)

    # ------------------------------------------------------------------ routing

    def endpoint(self, member: str) -> Endpoint:
        with self.lora.lock:
            base = self._base.get(member)
            if base is None or base not in self._urls:
                raise ServerError(
                    f"member {member!r} has no live server on backend {self.name!r}; start the servers first"
                )
            return Endpoint(
                base_url=f"{self._urls[base]}/v1",
                model=self.lora.model(base, member),
                api_key=self._api_key() or NO_KEY,
                extra_body=self._extra_body(self.lora.adapters.get(member)),
            )

    @contextmanager
    def lease(self, member: str) -> Iterator[Endpoint]:
        """`member`'s endpoint for one request, its adapter counted in flight until the block ends,
        so that adapter is not unloaded under the request (`LoraServer.release`)."""
        with self.lora.lock:
            ep = self.endpoint(member)
            name = self.lora.hold(member)
        try:
            yield ep
        finally:
            self.lora.release(name)

    def activate(self, member: str, adapter_dir: Path, version: int) -> Endpoint:
        """Load the adapter under `<member>-v<version>`, switch the member, retire the old one
        (`LoraServer.activate`)."""
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
                line = f"(external) {self.cfg.urls.get(base, '<no url>')} serves {base}"
            lines.append(f"{line}    # {who}")
        return lines


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
