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

import json
import os
import sys
from pathlib import Path

from agora_cli.config import (
    Member,
    SGLangBackend,
    _template_path,
    chat_template_text,
    sglang_device,
    sglang_memory_plan,
)
from agora_cli.endpoint import Endpoint
from agora_cli.errors import ServerError
from agora_cli.events import NULL_BUS, EventBus
from agora_cli.lora_names import unsupported
from agora_cli.models import cached_path, prepare
from agora_cli.paths import RunPaths
from agora_cli.serving.lora_server import LoraApi, LoraServer
from agora_cli.serving.process import ServerProcess, http

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

    def command(self, base: str, port: int, fraction: float | None = None) -> list[str]:
        """The `sglang.launch_server` command line for one base model (flags as SGLang's
        `server_args.py` spells them; `tests/test_sglang_contract.py` parses them with it)."""
        members = self._members_of(base)
        cmd = [
            self.cfg.python or sys.executable, "-m", "sglang.launch_server",
            "--model-path", base,
            "--host", self.cfg.host,
            "--port", str(port),
            "--tp-size", str(self.cfg.tp_size),
            "--enable-lora",
            "--max-lora-rank", str(self.cfg.max_lora_rank),
            "--lora-target-modules", *self.cfg.lora_target_modules,
            "--max-loras-per-batch", str(self.cfg.max_loras_per_batch),
        ]
        if self.cfg.dp_size > 1:
            cmd += ["--dp-size", str(self.cfg.dp_size)]
        if fraction is not None:
            cmd += ["--mem-fraction-static", str(fraction)]
        if any(m.trust_remote_code for m in members):
            cmd += ["--trust-remote-code"]
        template = next((m for m in members if m.chat_template), None)
        if template is not None:
            cmd += ["--chat-template", str(self._template_file(template))]
        if self.cfg.api_key_env:
            cmd += ["--api-key", f"${self.cfg.api_key_env}"]  # the real key is filled in at start
        extra: list[str] = []
        for args in dict.fromkeys(tuple(m.server_args) for m in members):  # once per distinct list
            extra += args
        return cmd + extra + list(self.cfg.extra_args)

    def _members_of(self, base: str) -> list[Member]:
        return [self.members[n] for n in self._bases(planned=True).get(base, [])] or [
            m for m in self.members.values() if m.model == base
        ]

    def _template_file(self, member: Member) -> Path:
        """SGLang takes a template name or a file: inline templates are written to the run dir."""
        value = member.chat_template or ""
        if "\n" not in value and not value.startswith("{"):
            path = _template_path(value)
            if path.exists() or value.endswith((".jinja", ".j2", ".txt")):
                return path.resolve()
        out = self.run_paths.logs / f"chat-template-{member.name}.jinja"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(chat_template_text(member) or "")
        return out.resolve()

    def _fractions(self, bases: dict[str, list[str]]) -> dict[str, float]:
        plan = sglang_memory_plan(
            self.cfg, {b: [self.members[n] for n in ms] for b, ms in bases.items()}
        )
        return {base: f for rows in plan.values() for base, _, f in rows}

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
        device = sglang_device(self.cfg, base, [self.members[m] for m in members])
        return {} if device is None else {"CUDA_VISIBLE_DEVICES": device}

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Launch (or, with `launch: false`, find) one server per base model, one after another:
        each is healthy before the next starts, since SGLang sizes its memory from what is free
        when it starts (the fractions of `config.sglang_memory_plan` count on that order)."""
        bases = self._bases()
        fractions = self._fractions(bases) if self.cfg.launch else {}
        key = self._api_key()
        if key is not None:  # load/unload are admin calls: the server wants the key there too
            self.lora.headers = {"Authorization": f"Bearer {key}"}
        for i, (base, members) in enumerate(bases.items()):
            if self.cfg.launch:
                port = self.cfg.base_port + i
                url = f"http://{self.cfg.host}:{port}"
                slug = Path(base).name.replace(":", "-")[:48]
                cmd = self.command(base, port, fractions.get(base))
                if key is not None:
                    cmd[cmd.index(f"${self.cfg.api_key_env}")] = key
                process = ServerProcess(
                    name=f"sglang server ({Path(base).name})",
                    cmd=cmd,
                    url=url,
                    log=self.run_paths.logs / f"sglang-{self.name}-{slug}.log",
                    env=self._devices(base, members),
                )
                self._processes[base] = process
                try:
                    process.start()
                    process.wait_healthy(self.cfg.startup_timeout_s)
                except BaseException:
                    self.stop()
                    raise
                self.bus.emit("server_started", backend=self.name, url=url, model=base,
                              log=str(process.log))
            else:
                url = self.cfg.urls.get(base)
                if url is None:
                    raise ServerError(
                        f"backend {self.name!r} has launch: false but no URL for base model "
                        f"{base!r}; add it under backends.{self.name}.urls"
                    )
                process = ServerProcess(name=f"sglang server at {url}", cmd=[], url=url,
                                        log=self.run_paths.logs / f"sglang-{self.name}.log")
                process.wait_healthy(self.cfg.startup_timeout_s)
                self.bus.emit("server_started", backend=self.name, url=url, model=base,
                              log=str(process.log))
            self._urls[base] = url.rstrip("/")
        with self.lora.lock:
            for m in self.members:
                self.lora.adapters.setdefault(m, None)

    def _api_key(self) -> str | None:
        if not self.cfg.api_key_env:
            return None
        key = os.environ.get(self.cfg.api_key_env)
        if not key:
            raise ServerError(
                f"backend {self.name!r} sets api_key_env: {self.cfg.api_key_env} but that "
                "environment variable is empty; export the server's API key in it"
            )
        return key

    def attach(self, state: dict) -> bool:
        servers, adapters = state.get("servers", {}), state.get("adapters", {})
        bases = self._bases()
        # /model_info answers without generating (SGLang's /health generates a token and can take
        # its 20 s timeout under load), so a busy server is not mistaken for a dead one.
        if set(bases) != set(servers) or not all(self._ready(u) for u in servers.values()):
            return False
        key = self._api_key()
        with self.lora.lock:
            self.lora.headers = {"Authorization": f"Bearer {key}"} if key else {}
            self._urls = {b: u.rstrip("/") for b, u in servers.items()}
            self.lora.adapters = {m: adapters.get(m) for m in self.members}
        return True

    def state(self) -> dict:
        with self.lora.lock:
            return {"kind": "sglang", "servers": dict(self._urls),
                    "adapters": dict(self.lora.adapters)}

    def health(self) -> bool:
        return all(self._ready(u) for u in self._urls.values())

    def _ready(self, url: str) -> bool:
        """True when the server answers `GET /model_info` (no generation; see `attach`)."""
        key = self._api_key()
        headers = {"Authorization": f"Bearer {key}"} if key else None
        try:
            return http("GET", f"{url}/model_info", timeout=10, headers=headers).status == 200
        except OSError:
            return False

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
            model = self.lora.model(base, member)
            key = self._api_key()
            lora = self.lora.adapters.get(member)
            # `lora_path` in the body too: every SGLang version honours it, while `base:adapter`
            # in `model` needs >= 0.5.4 (an older server answers with the base model, silently).
            return Endpoint(base_url=f"{self._urls[base]}/v1", model=model,
                            api_key=key or "agora-local",
                            extra_body={"lora_path": lora} if lora else {})

    def activate(self, member: str, adapter_dir: Path, version: int) -> Endpoint:
        """Load the adapter under `<member>-v<version>`, switch the member, unload the old one
        (`lora_server.py`)."""
        if member not in self.members:
            raise ServerError(f"member {member!r} is not served by backend {self.name!r}")
        base = self._base.get(member)
        if base is None or base not in self._urls:
            raise ServerError(f"backend {self.name!r} is not started; call start() first")
        check_adapter(adapter_dir, self.cfg, member)
        self.lora.activate(self._urls[base], member, adapter_dir, version)
        return self.endpoint(member)

    def describe(self) -> list[str]:
        lines = []
        bases = self._bases(planned=True)
        fractions = self._fractions(bases) if self.cfg.launch else {}
        for i, (base, members) in enumerate(bases.items()):
            who = ", ".join(members)
            if self.cfg.launch:
                cmd = self.command(base, self.cfg.base_port + i, fractions.get(base))
                device = sglang_device(self.cfg, base, self._members_of(base))
                env = f"CUDA_VISIBLE_DEVICES={device} " if device is not None else ""
                lines.append(f"{env}{' '.join(cmd)}    # {who}")
            else:
                lines.append(f"(external) {self.cfg.urls.get(base, '<no url>')} serves {base}"
                             f"    # {who}")
        return lines


def check_adapter(adapter_dir: Path, cfg: SGLangBackend, member: str) -> None:
    """Refuse, before SGLang sees it, an adapter the server's LoRA pool cannot hold (rank above
    --max-lora-rank, or modules outside --lora-target-modules): SGLang's answer is a bare 400."""
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.exists():  # nothing to check: SGLang's own refusal names the missing path
        return
    try:
        peft = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ServerError(f"adapter of {member!r} has no readable {path} ({e})") from e
    modules = peft.get("target_modules") or []
    if isinstance(modules, str):
        raise ServerError(
            f"adapter of {member!r} in {adapter_dir} names its modules by pattern "
            f"({modules!r}); SGLang needs a list of module names: retrain it with a list in "
            "training.target_modules or with all-linear"
        )
    bad = unsupported(modules, cfg.lora_target_modules)
    if bad:
        raise ServerError(
            f"adapter of {member!r} in {adapter_dir} trains {bad}, which the SGLang server "
            f"(--lora-target-modules {' '.join(cfg.lora_target_modules)}) cannot load; train "
            "only those modules (training.target_modules) or add them to lora_target_modules"
        )
    if int(peft.get("r", 0)) > cfg.max_lora_rank:
        raise ServerError(
            f"adapter of {member!r} has rank {peft.get('r')} above the server's --max-lora-rank "
            f"{cfg.max_lora_rank}; lower training.r or raise max_lora_rank"
        )
