"""PEFT LoRA on one member's base model: parametric evolution (Eq. 3), one round, one member.

Reads top to bottom like torchtune's single-device LoRA recipe:
  spec -> seed/threads -> tokenizer + examples -> model + LoRA (continuing the member's current
  adapter when there is one) -> plain torch loop -> atomic save with `agora-adapter.json`.

Eq. 3: L(theta) = - sum_{(q, o) in B_hq} sum_t log p_theta(o_t | q, o_<t): the negative
log-likelihood of the solution tokens given the problem, normalised per supervised token. Prompt
tokens carry label -100; loss.py computes it from the hidden states at the solution positions only,
in chunks, so the logits never exist for the whole batch. memory.py decides gradient checkpointing
from an estimate of the peak and `training.memory_budget_gb`.

No embedding resize and no DoRA: SGLang's multi-LoRA rejects adapters with either.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agora_cli.config import Training
from agora_cli.errors import TrainingError
from agora_cli.training.data import (
    Example,
    collate,
    make_batches,
    padding_tokens,
    render_examples,
    samples_from_json,
)
from agora_cli.training.memory import MemoryPlan, find_dims, plan_memory

if TYPE_CHECKING:  # transformers loads lazily: the round manager imports this module too
    from transformers import PreTrainedTokenizerBase

META_FILE = "agora-adapter.json"

Progress = Callable[[dict[str, Any]], None]


@dataclass
class TrainSpec:
    """Everything one worker needs; written by the round manager as SPEC.json."""

    member: str
    version: int
    base_model_dir: str | None  # None: prepare `member_config`'s model in the worker
    output_dir: str  # adapters/<member>/v<N>; written atomically
    samples: list[dict[str, Any]]  # data.samples_to_json(...)
    training: dict[str, Any]  # Training.model_dump()
    round_id: int | None = None
    previous_adapter_dir: str | None = None  # the member's current adapter: training continues it
    chat_template: str | None = None  # for models that ship none (Gemma-3 base)
    member_config: dict[str, Any] | None = None  # config.Member, to find the base weights
    progress_path: str | None = None  # JSON lines, one per optimizer step
    result_path: str | None = None  # JSON TrainResult on success, {"error": ...} on failure

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainSpec:
        return cls(**json.loads(Path(path).read_text()))


@dataclass
class TrainResult:
    member: str
    version: int
    adapter_dir: str
    steps: int
    losses: list[float]  # one per optimizer step
    tokens: int  # non-pad tokens processed (all epochs)
    target_tokens: int  # supervised (solution) tokens processed
    padding_tokens: int  # pad positions processed
    tokens_per_s: float
    peak_memory_mb: float
    train_s: float
    cpu_s: float  # process CPU time of the training loop: comparable on a shared machine
    total_s: float
    buffer_ids: list[int]
    skipped_ids: list[int] = field(default_factory=list)
    gradient_checkpointing: bool = False
    estimated_peak_mb: float | None = None  # memory.py's estimate for this run's longest batch
    loss_kind: str = "chunked"  # "chunked" (loss.py) or "model" (the model's own, all positions)

    @property
    def loss_first(self) -> float:
        return self.losses[0] if self.losses else math.nan

    @property
    def loss_last(self) -> float:
        return self.losses[-1] if self.losses else math.nan


# --------------------------------------------------------------------------- setup


def resolve_precision(precision: str) -> tuple[str, Any]:
    """(device, autocast dtype or None). `auto`: bf16 on a GPU that supports it, else fp32."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if precision == "auto":
        use_bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
        return device, torch.bfloat16 if use_bf16 else None
    return device, {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def peak_memory_mb(device: str) -> float:
    """GPU: torch's allocator peak. CPU: the process's max resident set size."""
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def load_tokenizer(
    base_model_dir: str, chat_template: str | None, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_model_dir, trust_remote_code=trust_remote_code)
    if chat_template:
        tok.chat_template = chat_template
    if not tok.chat_template:
        raise TrainingError(
            f"the model in {base_model_dir} has no chat template; set `chat_template` for its "
            "member in the config"
        )
    if tok.pad_token_id is None:  # pad with EOS rather than adding a token (no embedding resize)
        tok.pad_token = tok.eos_token
    return tok


def text_lora_targets(model: Any, target_modules: list[str] | str) -> tuple[list[str], str | None]:
    """(target module names, exclude pattern) so LoRA touches the text model only.

    A multimodal checkpoint (Gemma-3-4B loads as Gemma3ForConditionalGeneration) also holds a
    vision tower; `all-linear` would wrap its fc1/fc2/out_proj too, and SGLang's LoRA pool refuses
    an adapter with modules it does not hold. The names are leaf names (SGLang and vLLM match
    adapters by them), the pattern excludes everything outside the text decoder; the output head
    only when a config names `lm_head` itself.
    """
    import re

    import torch

    keep_head = target_modules != "all-linear" and "lm_head" in target_modules
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    prefix = next((n for n, mod in model.named_modules() if mod is decoder and n), None)
    if prefix is None or decoder is None:  # no separate decoder: the whole model is text
        exclude = None if keep_head else r"^lm_head$"
        inside = model.named_modules()
    else:
        allowed = rf"{re.escape(prefix)}\." + (r"|lm_head$" if keep_head else "")
        exclude = rf"^(?!{allowed}).*"
        inside = ((f"{prefix}.{n}", mod) for n, mod in decoder.named_modules())
    if target_modules != "all-linear":
        return list(target_modules), exclude
    names = {n.split(".")[-1] for n, mod in inside if isinstance(mod, torch.nn.Linear) and n}
    names.discard("lm_head")
    return sorted(names), exclude


def lora_model(
    base_model_dir: str,
    cfg: Training,
    previous: str | None,
    device: str,
    trust_remote_code: bool = False,
) -> Any:
    """The base model with a trainable LoRA: a fresh one, or the member's previous adapter."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        base_model_dir, dtype=torch.float32, trust_remote_code=trust_remote_code
    )
    # transformers declares `to` as `@wraps(nn.Module.to)`, so its stub is the unbound function
    # (self first) and a bound call looks like passing `device` as the model.
    model.to(device)  # type: ignore[arg-type]
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad (the frozen embeddings
        # have none) and replays dropout's RNG state, so gradients match the plain pass.
        model.config.use_cache = False
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # its new name in transformers 5
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if previous:
        # A member's next round continues from its current adapter (same r/targets as saved).
        return PeftModel.from_pretrained(model, previous, is_trainable=True)
    targets, exclude = text_lora_targets(model, cfg.target_modules)
    lora = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,  # "all-linear" = every Linear of the text model but the head
        exclude_modules=exclude,
        task_type="CAUSAL_LM",
        use_dora=False,
    )
    return get_peft_model(model, lora)


# --------------------------------------------------------------------------- training


def train(spec: TrainSpec, on_progress: Progress | None = None) -> TrainResult:
    """Train one member's adapter for one round and save it atomically to `spec.output_dir`."""
    import torch

    from agora_cli.training.loss import StepLoss  # imports torch

    t_start = time.perf_counter()
    cfg = Training.model_validate(spec.training)
    if cfg.max_threads:
        torch.set_num_threads(cfg.max_threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device, amp_dtype = resolve_precision(cfg.precision)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    accelerator = None
    if world > 1:  # launched by `accelerate launch` (training.num_gpus > 1)
        from accelerate import Accelerator

        accelerator = Accelerator()
        device = str(accelerator.device)

    if spec.base_model_dir is None:
        # Resolved here, not in the parent: checking a packaged GGUF can take seconds, and the
        # parent is the loop's event loop.
        from agora_cli.config import Member
        from agora_cli.models import prepare

        spec.base_model_dir = str(prepare(Member.model_validate(spec.member_config)))
    remote = bool((spec.member_config or {}).get("trust_remote_code"))  # e.g. BitCPM4 (minicpm)
    tok = load_tokenizer(spec.base_model_dir, spec.chat_template, remote)
    samples = samples_from_json(spec.samples)
    examples, skipped = render_examples(tok, samples, cfg.max_length)
    if not examples:
        raise TrainingError(
            f"no training example for {spec.member}: every prompt fills training.max_length "
            f"({cfg.max_length}); raise it"
        )

    lengths = [len(e) for e in examples]
    plan = memory_plan(spec, cfg, max(lengths), device, half=amp_dtype is not None)
    checkpointing = plan.checkpointing if plan is not None else cfg.gradient_checkpointing is True
    _note(
        on_progress,
        rank,
        {
            "member": spec.member,
            "step": 0,
            "gradient_checkpointing": checkpointing,
            "memory": plan.describe() if plan is not None else "no model dims: memory not estimated",
            "estimated_peak_gb": round(plan.estimate.total_gb, 2) if plan is not None else None,
            "memory_budget_gb": round(plan.budget_gb, 2) if plan is not None else None,
        },
    )
    run_cfg = cfg.model_copy(update={"gradient_checkpointing": checkpointing})
    model = lora_model(spec.base_model_dir, run_cfg, spec.previous_adapter_dir, device, remote)
    if cfg.lora_dropout_kernel == "fused":
        from agora_cli.training.lora_kernel import fuse_lora_layers

        fuse_lora_layers(model)
    loss_fn = StepLoss(model, cfg.loss_chunk_tokens)
    if cfg.loss_chunk_tokens and not chunked_loss_agrees(model, examples[0], tok, device):
        loss_fn.chunk = 0  # a head this module does not know how to apply: the model's own loss
        _note(
            on_progress,
            rank,
            {
                "member": spec.member,
                "step": 0,
                "loss": "the chunked loss disagrees with the model's own on this architecture; "
                "using the model's (logits at every position)",
            },
        )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate)
    if accelerator is not None:  # DDP wraps the loss module, whose forward runs the model
        loss_fn, optimizer = accelerator.prepare(loss_fn, optimizer)
    scaler = torch.amp.GradScaler(device) if amp_dtype == torch.float16 else None
    steps_per_epoch = math.ceil(math.ceil(len(examples) / cfg.batch_size) / world / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs

    losses: list[float] = []
    tokens = target_tokens = pad_tokens = 0
    t_train, cpu_train = time.perf_counter(), time.process_time()
    loss_fn.train()
    step = 0
    for epoch in range(cfg.epochs):
        batches = make_batches(
            lengths, cfg.batch_size, group_by_length=cfg.group_by_length, seed=cfg.seed + epoch
        )
        if world > 1:  # every rank needs as many steps (DDP); wrap around like DistributedSampler
            batches = (batches * world)[: -(-len(batches) // world) * world][rank::world]
        pad_tokens += padding_tokens(lengths, batches)
        # Optimizer steps over groups of `grad_accum` micro-batches (the last group may be short).
        for g in range(0, len(batches), cfg.grad_accum):
            group = batches[g : g + cfg.grad_accum]
            step_loss = 0.0
            for idx in group:
                batch = _to(collate([examples[i] for i in idx], tok.pad_token_id), device)
                with torch.autocast(device, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss = loss_fn(**batch) / len(group)  # Eq. 3, token-averaged
                if accelerator is not None:
                    accelerator.backward(loss)
                elif scaler is not None:
                    scaler.scale(loss).backward()
                else:
                    loss.backward()
                step_loss += float(loss.detach())
                tokens += int(batch["attention_mask"].sum())
                target_tokens += sum(examples[i].n_target for i in idx)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append(step_loss)
            elapsed = time.perf_counter() - t_train
            if on_progress is not None and rank == 0:
                on_progress(
                    {
                        "member": spec.member,
                        "step": step,
                        "total_steps": total_steps,
                        "epoch": epoch,
                        "loss": round(step_loss, 5),
                        "tokens": tokens,
                        "tokens_per_s": round(tokens / elapsed, 2) if elapsed else 0.0,
                        "elapsed_s": round(elapsed, 2),
                        "eta_s": round(elapsed / step * (total_steps - step), 1),
                    }
                )
    train_s = time.perf_counter() - t_train
    cpu_s = time.process_time() - cpu_train

    result = TrainResult(
        member=spec.member,
        version=spec.version,
        adapter_dir=spec.output_dir,
        steps=step,
        losses=[round(x, 6) for x in losses],
        tokens=tokens,
        target_tokens=target_tokens,
        padding_tokens=pad_tokens,
        tokens_per_s=round(tokens / train_s, 2) if train_s else 0.0,
        peak_memory_mb=round(peak_memory_mb(device), 1),
        train_s=round(train_s, 3),
        cpu_s=round(cpu_s, 3),
        total_s=0.0,
        buffer_ids=[s.buffer_id for s in samples],
        skipped_ids=skipped,
        gradient_checkpointing=checkpointing,
        estimated_peak_mb=round(plan.estimate.total / 2**20, 1) if plan is not None else None,
        loss_kind="chunked" if _chunk(loss_fn) else "model",
    )
    if rank == 0:  # `model` itself was never wrapped (accelerate wrapped loss_fn)
        result.total_s = round(time.perf_counter() - t_start, 3)
        save_adapter(model, spec, cfg, result)
    return result


def memory_plan(spec: TrainSpec, cfg: Training, seq_len: int, device: str, half: bool) -> MemoryPlan | None:
    """The checkpointing decision for this round's longest micro-batch (None: no model dims)."""
    model = (spec.member_config or {}).get("model") or str(spec.base_model_dir)
    dims = find_dims(model, spec.base_model_dir)
    if dims is None:
        return None
    return plan_memory(
        dims, cfg, batch_size=cfg.batch_size, seq_len=seq_len, half_precision=half, device=device
    )


def chunked_loss_agrees(model: Any, example: Example, tok: Any, device: str) -> bool:
    """loss.py's loss equals the model's own on one example (eval mode: no dropout)."""
    from agora_cli.training.loss import agrees_with_model_loss

    model.eval()
    try:
        return agrees_with_model_loss(model, _to(collate([example], tok.pad_token_id), device))
    finally:
        model.train()


def _chunk(loss_fn: Any) -> int:
    return getattr(loss_fn, "module", loss_fn).chunk  # through a DDP wrapper


def _note(on_progress: Progress | None, rank: int, event: dict[str, Any]) -> None:
    """A progress line at step 0 (the round's training_progress events) and the worker's log."""
    print(
        f"agora-train {event['member']}: "
        + "; ".join(f"{k}={v}" for k, v in event.items() if k not in ("member", "step")),
        file=sys.stderr,
    )
    if on_progress is not None and rank == 0:
        on_progress(event)


def _to(batch: dict[str, Any], device: str) -> dict[str, Any]:
    return {k: v.to(device) for k, v in batch.items()}


# --------------------------------------------------------------------------- saving


def save_adapter(model: Any, spec: TrainSpec, cfg: Training, result: TrainResult) -> Path:
    """`save_pretrained` into a temp dir beside the target, add metadata, then rename into place.

    A crash or full disk mid-save leaves at most a `.tmp` directory, never a half-written
    `v<N>/`; the previous version stays untouched and live.
    """
    out = Path(spec.output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(str(tmp))
        meta = {
            "member": spec.member,
            "version": spec.version,
            "round": spec.round_id,
            "base_model": spec.base_model_dir,
            "previous_adapter": spec.previous_adapter_dir,
            "buffer_ids": result.buffer_ids,
            "skipped_buffer_ids": result.skipped_ids,
            "hyperparameters": cfg.model_dump(mode="json"),
            "loss": result.losses,
            "steps": result.steps,
            "tokens": result.tokens,
            "target_tokens": result.target_tokens,
            "tokens_per_s": result.tokens_per_s,
            "peak_memory_mb": result.peak_memory_mb,
            "estimated_peak_mb": result.estimated_peak_mb,
            "gradient_checkpointing": result.gradient_checkpointing,
            "loss_kind": result.loss_kind,
            "train_s": result.train_s,
            "cpu_s": result.cpu_s,
            "total_s": result.total_s,
            "created_at": time.time(),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        if out.exists():  # a previous attempt saved but never went live: replace it
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_adapter_meta(adapter_dir: str | Path) -> dict[str, Any]:
    """The `agora-adapter.json` written next to a saved adapter."""
    return json.loads((Path(adapter_dir) / META_FILE).read_text())


def example_stats(examples: list[Example]) -> dict[str, int]:
    return {
        "examples": len(examples),
        "tokens": sum(len(e) for e in examples),
        "target_tokens": sum(e.n_target for e in examples),
    }
