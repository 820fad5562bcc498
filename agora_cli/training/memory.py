"""Training memory, chosen rather than suffered: one member's estimated peak, a budget, a decision.

`estimate_training_memory` is the one formula. The trainer calls it (through `plan_memory`) to
switch gradient checkpointing on when the plain estimate exceeds `training.memory_budget_gb`, and
`agora validate` calls it to warn when a member's configured batch cannot fit even checkpointed.

Sizes are GiB (2**30 bytes), as `free -g` and torch report them. The formula, for one micro-batch
of `tokens` = batch_size x sequence length padded positions (grad_accum does not add activations):

  weights      = params x 4                     the trainer loads float32 weights
  lora         = lora_params x 16               fp32 weight + gradient + AdamW's two moments
  activations  = tokens x layers x per_layer    plain: every layer's saved tensors
               = tokens x (layers x H x b + per_layer)
                                                checkpointed: each layer's input, plus one layer
                                                recomputed at a time in the backward pass
  per_layer    = b x (9 H + 4 q + 3 kv + 5 I)   norms' inputs/outputs, LoRA-dropout copies of
                                                each projection's input, q/k/v (and rotated q/k),
                                                attention output, the MLP's gate/up/act/product
               + b x 2 x heads x seq_len        attention scores and probabilities, when the
                                                attention materialises them (CPU: SDPA's math
                                                path with a padding mask); a fused GPU kernel
                                                keeps none
  logits       = rows x vocab x (b + 8)         the head's output, its float32 log-softmax and
                                                gradient; rows = every position for the model's
                                                own loss, one chunk (loss_chunk_tokens) for the
                                                chunked loss of loss.py
  runtime      = 1 GiB                          torch, Python, tokenizer, allocator slack

with H = hidden size, I = MLP width, q = heads x head_dim, kv = kv_heads x head_dim, and b the
bytes of an activation: 4 in float32, 2 under bf16/fp16 autocast. It is an estimate (within
about 25% of the measured peak RSS on this project's CPU benchmark, bench/bench_trainer.py prints
both), meant to decide, not to account for every byte.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agora_cli.config import Config, Member, Training

from agora_cli.model_facts import (  # noqa: F401 - re-exported: the trainer and tests import them here
    KNOWN_DIMS,
    ModelDims,
    dims_from_config,
    find_dims,
    read_dims,
)

GiB = 2**30
RUNTIME_BYTES = 1 * GiB
# Default budgets (training.memory_budget_gb unset). On a CPU box the model servers and the
# orchestrator share the RAM with the trainer; a GPU trainer gets most of what is free there.
CPU_RAM_FRACTION = 0.5
GPU_FREE_FRACTION = 0.9


# The dims and the offline lookup are the models' facts (agora_cli/model_facts.py), shared with
# the GPU memory plan of config/gpu.py.


def member_dims(member: Member) -> ModelDims | None:
    """A config.Member's model dims (its prepared directory when there is one), or None."""
    from agora_cli.models import cached_path

    path = cached_path(member)
    return find_dims(member.model, path if path is not None and path.is_dir() else None)


# --------------------------------------------------------------------------- the formula


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak bytes of one training process, by part (see the module docstring)."""

    weights: int
    lora: int
    activations: int
    logits: int
    runtime: int = RUNTIME_BYTES

    @property
    def total(self) -> int:
        return self.weights + self.lora + self.activations + self.logits + self.runtime

    @property
    def total_gb(self) -> float:
        return self.total / GiB


def lora_params(dims: ModelDims, r: int, target_modules: list[str] | str) -> int:
    """Trainable LoRA parameters: r x (in + out) per adapted Linear. "all-linear" adapts every
    per-layer projection (PEFT leaves the output head out); a list adapts the named ones, and
    `lm_head` in it adds the head. Names this model does not have add nothing."""
    shapes = dims.linear_shapes()
    if target_modules == "all-linear":
        names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    else:
        names = [n for n in shapes if any(t == n or t.endswith("." + n) for t in target_modules)]
    total = dims.layers * sum(r * sum(shapes[n]) for n in names)
    if target_modules != "all-linear" and "lm_head" in target_modules:
        total += r * (dims.hidden + dims.vocab)
    return total


def estimate_training_memory(
    dims: ModelDims,
    *,
    batch_size: int,
    seq_len: int,
    r: int,
    target_modules: list[str] | str,
    checkpointing: bool,
    loss_chunk_tokens: int,
    half_precision: bool,
    attention_scores: bool,
) -> MemoryEstimate:
    """Peak memory of a LoRA training step on one micro-batch; the formula of the module
    docstring. `loss_chunk_tokens` 0 means the model's own loss (logits at every position)."""
    b = 2 if half_precision else 4
    tokens = batch_size * seq_len
    h, i = dims.hidden, dims.intermediate
    q, kv = dims.heads * dims.head_dim, dims.kv_heads * dims.head_dim
    per_layer = b * (9 * h + 4 * q + 3 * kv + 5 * i)
    if attention_scores:
        per_layer += b * 2 * dims.heads * seq_len
    if checkpointing:
        activations = tokens * (dims.layers * h * b + per_layer)
    else:
        activations = tokens * dims.layers * per_layer
    rows = tokens if loss_chunk_tokens <= 0 else min(loss_chunk_tokens, tokens)
    return MemoryEstimate(
        weights=dims.params * 4,
        lora=lora_params(dims, r, target_modules) * 16,
        activations=activations,
        logits=rows * dims.vocab * (b + 8),
    )


# --------------------------------------------------------------------------- budget and plan


def default_budget_gb(device: str) -> float:
    """training.memory_budget_gb when unset: 90% of the GPU's free memory, or 50% of the
    machine's physical RAM on CPU (the servers share it)."""
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info()
        return GPU_FREE_FRACTION * free / GiB
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return CPU_RAM_FRACTION * ram / GiB


@dataclass(frozen=True)
class MemoryPlan:
    """The checkpointing decision for one member's micro-batch, and the estimates behind it."""

    checkpointing: bool
    auto: bool  # decided here (training.gradient_checkpointing: auto), not configured
    plain: MemoryEstimate
    checkpointed: MemoryEstimate
    budget_gb: float

    @property
    def estimate(self) -> MemoryEstimate:
        return self.checkpointed if self.checkpointing else self.plain

    @property
    def fits(self) -> bool:
        """Does the batch fit the budget at least with checkpointing?"""
        return self.checkpointed.total_gb <= self.budget_gb

    def describe(self) -> str:
        how = "auto" if self.auto else "configured"
        state = "on" if self.checkpointing else "off"
        return (
            f"gradient checkpointing {state} ({how}): estimated peak {self.estimate.total_gb:.1f} "
            f"GB (plain {self.plain.total_gb:.1f}, checkpointed {self.checkpointed.total_gb:.1f}), "
            f"budget {self.budget_gb:.1f} GB"
        )


def plan_memory(
    dims: ModelDims,
    training: Training,
    *,
    batch_size: int,
    seq_len: int,
    half_precision: bool,
    device: str,
    budget_gb: float | None = None,
) -> MemoryPlan:
    """Checkpoint when configured, or (`auto`) when the plain estimate exceeds the budget.

    `budget_gb` defaults to training.memory_budget_gb, then to
    `default_budget_gb(device)`.
    """
    budget = budget_gb or training.memory_budget_gb or default_budget_gb(device)

    def estimate(checkpointing: bool) -> MemoryEstimate:
        return estimate_training_memory(
            dims,
            batch_size=batch_size,
            seq_len=seq_len,
            r=training.r,
            target_modules=training.target_modules,
            checkpointing=checkpointing,
            loss_chunk_tokens=training.loss_chunk_tokens,
            half_precision=half_precision,
            attention_scores=not device.startswith("cuda"),
        )

    plain, checkpointed = estimate(False), estimate(True)
    setting = training.gradient_checkpointing
    auto = setting == "auto"
    on = plain.total_gb > budget if auto else bool(setting)
    return MemoryPlan(on, auto, plain, checkpointed, budget)


def config_memory_report(cfg: Config, *, device: str, half_precision: bool) -> tuple[list[str], list[str]]:
    """(warnings, notes) for `agora validate`: per member, whether a configured micro-batch
    (training.batch_size x training.max_length) fits the memory budget on this machine."""
    training = cfg.training
    warnings: list[str] = []
    notes: list[str] = []
    for member in cfg.members:
        dims = member_dims(member)
        if dims is None:
            notes.append(
                f"{member.name}: training memory not estimated (no config.json for "
                f"{member.model} offline; `agora models prepare` or a download makes one)"
            )
            continue
        plan = plan_memory(
            dims,
            training,
            batch_size=training.batch_size,
            seq_len=training.max_length,
            half_precision=half_precision,
            device=device,
        )
        shape = f"{training.batch_size} x {training.max_length} tokens"
        if not plan.fits:
            warnings.append(
                f"{member.name}: a training micro-batch of {shape} needs about "
                f"{plan.checkpointed.total_gb:.1f} GB even with gradient checkpointing "
                f"(without: {plan.plain.total_gb:.1f} GB), over the {plan.budget_gb:.1f} GB "
                f"budget on {device} (training.memory_budget_gb); lower training.batch_size "
                "(raise training.grad_accum to keep the effective batch) or training.max_length"
            )
        elif plan.checkpointing and plan.auto:
            notes.append(
                f"{member.name}: gradient checkpointing will switch on for {shape} (estimated "
                f"{plan.plain.total_gb:.1f} GB without it, budget {plan.budget_gb:.1f} GB)"
            )
    return warnings, notes
