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

Every server agora launches has an API key (`keys.py`: `$api_key_env`, else the run's own key):
SGLang 0.5.23 leaves its admin endpoints (adapter load/unload, weight updates) open to anyone
who can reach the port when it has none (`srt/utils/auth.py`). SGLang reads a key only from
`--api-key` (no environment variable), which `ps` would show, so agora passes it in a `--config`
YAML file (`srt/utils/server_args_config_parser.py` turns its entries into flags) written with
mode 0600 in the run directory, `<run>/sglang-<backend>.yaml`. SGLang logs its `server_args`,
key included, at start: the guard writes the log with the key redacted (`guard.py`).

A member's model name is `<base>` until its first adapter, then `<base>:<member>-v<N>`.
Activation loads the new version under a new name, switches the member, then unloads the old name
once the last request sent with it has finished, so no request names it afterwards (SGLang would
load it again) (`lora_server.py`, shared with the `vllm` backend). Several members may share one server.
With `launch: false` the servers are started elsewhere and `urls` maps base model to URL.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from agora_cli.config import (
    Config,
    Member,
    SGLangBackend,
    _template_path,
    chat_template_text,
    sglang_device,
    sglang_memory_plan,
)
from agora_cli.errors import ServerError
from agora_cli.events import EventBus
from agora_cli.lora_names import unsupported
from agora_cli.paths import RunPaths
from agora_cli.serving.gpu_check import check_gpu_memory
from agora_cli.serving.keys import bearer, replace_private
from agora_cli.serving.lora_server import LoraApi, LoraServing
from agora_cli.serving.process import http
from agora_cli.serving.registry import register

# SGLang's runtime-LoRA API (`http_server.py`, `lora_manager.py`): `model: "<base>:<lora_name>"`.
SGLANG_LORA = LoraApi(
    engine="SGLang",
    load_path="/load_lora_adapter",
    unload_path="/unload_lora_adapter",
    already_loaded="already loaded",
    model_name=lambda base, lora: f"{base}:{lora}" if lora else base,
)


class SGLangServing(LoraServing):
    """Members of one `sglang` backend; see the module docstring."""

    kind = "sglang"
    API = SGLANG_LORA
    cfg: SGLangBackend
    config: Config | None = None  # the run's config: request sizes for the memory plan

    # ------------------------------------------------------------------ commands

    def command(self, base: str, port: int, fraction: float | None = None) -> list[str]:
        """The `sglang.launch_server` command line for one base model (flags as SGLang's
        `server_args.py` spells them; `tests/test_sglang_contract.py` parses them with it)."""
        members = self._members_of(base)
        cmd = [
            self.cfg.python or sys.executable,
            "-m",
            "sglang.launch_server",
            "--model-path",
            base,
            "--host",
            self.cfg.host,
            "--port",
            str(port),
            "--tp-size",
            str(self.cfg.tp_size),
            "--enable-lora",
            "--max-lora-rank",
            str(self.cfg.max_lora_rank),
            "--lora-target-modules",
            *self.cfg.lora_target_modules,
            "--max-loras-per-batch",
            str(self.cfg.max_loras_per_batch),
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
        if self.cfg.launch:  # the key, in a file only the user can read (module docstring)
            cmd += ["--config", str(self.key_config())]
        extra: list[str] = []
        for args in dict.fromkeys(tuple(m.server_args) for m in members):  # once per distinct list
            extra += args
        return cmd + extra + list(self.cfg.extra_args)

    def _launch(
        self, base: str, member_names: list[str], port: int, dry_run: bool, replica: tuple[int, int] = (0, 1)
    ) -> tuple[list[str], dict[str, str]]:
        """The command with this server's --mem-fraction-static (`config.sglang_memory_plan`
        counts on the one-after-another start) and its CUDA_VISIBLE_DEVICES; at start the
        `--config` file with the API key is written (mode 0600)."""
        fraction = self._fractions(self._bases(planned=dry_run)).get(base)
        cmd = self.command(base, port, fraction)
        if not dry_run:
            if self.config is not None:  # a plan that cannot fit fails here, not in SGLang
                check_gpu_memory(self.config, f"backend {self.name}", None)
            self.write_key_config()
        return cmd, self._devices(base, member_names)

    def key_config(self) -> Path:
        """The `--config` YAML file that gives this backend's servers their API key."""
        return (self.run_paths.root / f"sglang-{self.name}.yaml").resolve()

    def write_key_config(self) -> Path:
        """Write `key_config()` (mode 0600, replaced atomically) with this backend's key."""
        key = self._api_key()
        if key is None:  # pragma: no cover - launched servers always get one (`keys.server_key`)
            raise ServerError(f"backend {self.name!r} has no API key for the servers it launches")
        if key.startswith("-"):
            raise ServerError(
                f"backend {self.name!r}: SGLang reads an API key starting with '-' as an option "
                f"(its --config becomes `--api-key VALUE`); choose a key without a leading '-'"
            )
        path = self.key_config()
        # SGLang turns each entry into `--<entry>` as written: the flag is --api-key, and a JSON
        # string is a YAML scalar whatever the key holds.
        replace_private(path, f"api-key: {json.dumps(key)}\n")
        return path

    def _members_of(self, base: str) -> list[Member]:
        return [self.members[n] for n in self._bases(planned=True).get(base, [])] or [
            m for m in self.members.values() if m.model == base
        ]

    def _template_file(self, m: Member) -> Path:
        """SGLang takes a template name or a file: inline templates are written to the run dir."""
        value = m.chat_template or ""
        if "\n" not in value and not value.startswith("{"):
            path = _template_path(value)
            if path.exists() or value.endswith((".jinja", ".j2", ".txt")):
                return path.resolve()
        out = self.run_paths.logs / f"chat-template-{m.name}.jinja"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(chat_template_text(m) or "")
        return out.resolve()

    def _fractions(self, bases: dict[str, list[str]]) -> dict[str, float]:
        plan = sglang_memory_plan(
            self.cfg, {b: [self.members[n] for n in ms] for b, ms in bases.items()}, self.config
        )
        return {base: f for rows in plan.values() for base, _, f in rows}

    def _devices(self, base: str, member_names: list[str]) -> dict[str, str]:
        device = sglang_device(self.cfg, base, [self.members[m] for m in member_names])
        return {} if device is None else {"CUDA_VISIBLE_DEVICES": device}

    # ------------------------------------------------------------------ engine hooks

    def _ready(self, url: str) -> bool:
        """True when the server answers `GET /model_info`: SGLang's /health generates a token and
        can take its 20 s timeout under load, so a busy server would read as a dead one."""
        try:
            return http("GET", f"{url}/model_info", timeout=10, headers=bearer(self._api_key())).status == 200
        except OSError:
            return False

    def _extra_body(self, lora: str | None) -> dict:
        # `lora_path` in the body too: every SGLang version honours it, while `base:adapter` in
        # `model` needs >= 0.5.4 (an older server answers with the base model, silently).
        return {"lora_path": lora} if lora else {}

    def _check_adapter(self, member: str, adapter_dir: Path) -> None:
        check_adapter(adapter_dir, self.cfg, member)


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


@register(SGLangBackend)
def build(
    name: str, spec: SGLangBackend, members: list[Member], run_paths: RunPaths, bus: EventBus, config: Config
) -> SGLangServing:
    """The `sglang` backend named `name` (registered in serving/registry.py)."""
    serving = SGLangServing(name, spec, members, run_paths, bus)
    serving.config = config
    return serving
