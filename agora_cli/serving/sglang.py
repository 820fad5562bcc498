"""The `sglang` backend: one SGLang server per base model, adapters hot-loaded (GPU machines).

SGLang's API, as documented (docs "LoRA Serving") and implemented (`http_server.py`,
`lora_manager.py`):
  - launch: `python -m sglang.launch_server --model-path BASE --enable-lora --max-lora-rank R
    --lora-target-modules ... --max-loras-per-batch N`; rank and target modules are fixed at start
    so adapters loaded later must fit them;
  - `POST /load_lora_adapter {"lora_name", "lora_path"}` answers 200 `{"success": true, ...}` or
    400 `{"success": false, "error_message": ...}`; a name already loaded is refused ("Failed to
    load LoRA adapter X because it is already loaded");
  - `POST /unload_lora_adapter {"lora_name"}` (waits for the adapter's in-flight requests);
  - the OpenAI API selects an adapter with `model: "<base>:<lora_name>"` (`<base>` alone is the
    base model).

A member's model name is `<base>` until its first adapter, then `<base>:<member>-v<N>`.
Activation loads the new version under a new name, switches the member, then unloads the old name
in the background, so requests in flight on the old adapter finish on it (`lora_server.py`, shared
with the `vllm` backend). Several members may share one server.
With `launch: false` the servers are started elsewhere and `urls` maps base model to URL.
"""

from __future__ import annotations

from pathlib import Path

from agora_cli.config import Member, SGLangBackend
from agora_cli.endpoint import Endpoint
from agora_cli.errors import ServerError
from agora_cli.events import NULL_BUS, EventBus
from agora_cli.models import cached_path, prepare
from agora_cli.paths import RunPaths
from agora_cli.serving.lora_server import LoraApi, LoraServer
from agora_cli.serving.process import ServerProcess, is_healthy

# SGLang's runtime-LoRA API (`http_server.py`, `lora_manager.py`): `model: "<base>:<lora_name>"`.
SGLANG_LORA = LoraApi(
    engine="SGLang",
    load_path="/load_lora_adapter",
    unload_path="/unload_lora_adapter",
    already_loaded="already loaded",
    model_name=lambda base, lora: f"{base}:{lora}" if lora else base,
)


class SGLangServing:
    """Members of one `sglang` backend; see the module docstring."""

    def __init__(
        self,
        name: str,
        cfg: SGLangBackend,
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
        self.lora = LoraServer(SGLANG_LORA, name, bus, timeout_s=cfg.startup_timeout_s,
                               unload_grace_s=cfg.unload_grace_s)

    # ------------------------------------------------------------------ commands

    def command(self, base: str, port: int) -> list[str]:
        """The `sglang.launch_server` command line for one base model."""
        cmd = [
            self.cfg.python, "-m", "sglang.launch_server",
            "--model-path", base,
            "--host", self.cfg.host,
            "--port", str(port),
            "--tp-size", str(self.cfg.tp_size),
            "--enable-lora",
            "--max-lora-rank", str(self.cfg.max_lora_rank),
            "--lora-target-modules", *self.cfg.lora_target_modules,
            "--max-loras-per-batch", str(self.cfg.max_loras_per_batch),
        ]
        if self.cfg.mem_fraction_static is not None:
            cmd += ["--mem-fraction-static", str(self.cfg.mem_fraction_static)]
        return cmd + list(self.cfg.extra_args)

    def _bases(self, planned: bool = False) -> dict[str, list[str]]:
        """base model -> members sharing it, in a stable order (ports follow it)."""
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

    def _devices(self, base: str, members: list[str]) -> dict[str, str]:
        for key in [base, *members, *(self.members[m].model for m in members)]:
            if key in self.cfg.cuda_visible_devices:
                return {"CUDA_VISIBLE_DEVICES": self.cfg.cuda_visible_devices[key]}
        return {}

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Launch (or, with `launch: false`, find) one server per base model; wait for health."""
        bases = self._bases()
        for i, (base, members) in enumerate(bases.items()):
            if self.cfg.launch:
                port = self.cfg.base_port + i
                url = f"http://{self.cfg.host}:{port}"
                slug = Path(base).name.replace(":", "-")[:48]
                process = ServerProcess(
                    name=f"sglang server ({Path(base).name})",
                    cmd=self.command(base, port),
                    url=url,
                    log=self.run_paths.logs / f"sglang-{self.name}-{slug}.log",
                    env=self._devices(base, members),
                )
                process.start()
                self._processes[base] = process
            else:
                url = self.cfg.urls.get(base)
                if url is None:
                    raise ServerError(
                        f"backend {self.name!r} has launch: false but no URL for base model "
                        f"{base!r}; add it under backends.{self.name}.urls"
                    )
            self._urls[base] = url.rstrip("/")
        for base, url in self._urls.items():
            process = self._processes.get(base) or ServerProcess(
                name=f"sglang server at {url}", cmd=[], url=url,
                log=self.run_paths.logs / f"sglang-{self.name}.log",
            )
            try:
                process.wait_healthy(self.cfg.startup_timeout_s)
            except BaseException:
                self.stop()
                raise
            self.bus.emit("server_started", backend=self.name, url=url, model=base,
                          log=str(process.log))
        with self.lora.lock:
            for m in self.members:
                self.lora.adapters.setdefault(m, None)

    def attach(self, state: dict) -> bool:
        servers, adapters = state.get("servers", {}), state.get("adapters", {})
        bases = self._bases()
        if set(bases) != set(servers) or not all(is_healthy(u) for u in servers.values()):
            return False
        with self.lora.lock:
            self._urls = {b: u.rstrip("/") for b, u in servers.items()}
            self.lora.adapters = {m: adapters.get(m) for m in self.members}
        return True

    def state(self) -> dict:
        with self.lora.lock:
            return {"kind": "sglang", "servers": dict(self._urls),
                    "adapters": dict(self.lora.adapters)}

    def health(self) -> bool:
        return all(is_healthy(u) for u in self._urls.values())

    def stop(self) -> None:
        self.lora.finish()
        processes, self._processes = list(self._processes.values()), {}
        for p in processes:
            p.stop(grace_s=30)
            self.bus.emit("server_stopped", backend=self.name, url=p.url, log=str(p.log))

    # ------------------------------------------------------------------ routing

    def endpoint(self, member: str) -> Endpoint:
        with self.lora.lock:
            base = self._base.get(member)
            if base is None or base not in self._urls:
                raise ServerError(
                    f"member {member!r} has no live server on backend {self.name!r}; "
                    "start the servers first"
                )
            return Endpoint(base_url=f"{self._urls[base]}/v1", model=self.lora.model(base, member))

    def activate(self, member: str, adapter_dir: Path, version: int) -> Endpoint:
        """Load the adapter under `<member>-v<version>`, switch the member, unload the old one
        (`lora_server.py`)."""
        if member not in self.members:
            raise ServerError(f"member {member!r} is not served by backend {self.name!r}")
        base = self._base.get(member)
        if base is None or base not in self._urls:
            raise ServerError(f"backend {self.name!r} is not started; call start() first")
        self.lora.activate(self._urls[base], member, adapter_dir, version)
        return self.endpoint(member)

    def describe(self) -> list[str]:
        lines = []
        for i, (base, members) in enumerate(self._bases(planned=True).items()):
            who = ", ".join(members)
            if self.cfg.launch:
                lines.append(f"{' '.join(self.command(base, self.cfg.base_port + i))}    # {who}")
            else:
                lines.append(f"(external) {self.cfg.urls.get(base, '<no url>')} serves {base}"
                             f"    # {who}")
        return lines
