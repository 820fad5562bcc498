"""The trainer's device and dtype decision, the bf16 base with a float32 LoRA, the chunked loss's
agreement under autocast, and the memory plan redone when the loss falls back to full logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from agora_cli.config import Training
from agora_cli.training.data import Example
from agora_cli.training.memory import ModelDims, plan_memory
from agora_cli.training.placement import Placement, decide_placement
from agora_cli.training.trainer import TrainSpec, attach_lora, chunked_loss_agrees, replan_full_logits

pytestmark = pytest.mark.unit

TINY = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=300,
    tie_word_embeddings=False,
)


def tiny_llama(dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**TINY)).to(dtype)


@pytest.mark.parametrize(
    ("precision", "cuda", "bf16", "expected"),
    [
        ("auto", False, False, Placement("cpu", "float32", None)),  # today's CPU default, unchanged
        ("auto", True, True, Placement("cuda", "bfloat16", "bfloat16")),
        ("auto", True, False, Placement("cuda", "float32", None)),  # e.g. a V100: no bf16
        ("bf16", False, False, Placement("cpu", "float32", "bfloat16")),  # CPU keeps a float32 base
        ("fp16", True, False, Placement("cuda", "float16", "float16")),
        ("fp32", True, True, Placement("cuda", "float32", None)),
    ],
)
def test_placement_per_device_and_precision(precision: str, cuda: bool, bf16: bool, expected) -> None:
    assert decide_placement(precision, cuda=cuda, bf16_supported=bf16) == expected


def test_the_memory_plan_counts_a_half_base_on_a_gpu_only() -> None:
    dims = ModelDims(hidden=64, intermediate=256, layers=4, heads=4, kv_heads=2, head_dim=16, vocab=1000)
    kw = dict(batch_size=2, seq_len=64, budget_gb=100.0)
    gpu = plan_memory(dims, Training(), half_precision=True, device="cuda", **kw)
    cpu = plan_memory(dims, Training(), half_precision=True, device="cpu", **kw)
    fp32 = plan_memory(dims, Training(), half_precision=False, device="cuda", **kw)
    assert gpu.plain.weights == dims.params * 2
    assert cpu.plain.weights == fp32.plain.weights == dims.params * 4


def test_a_bf16_base_gets_a_float32_lora_and_the_chunked_loss_agrees_under_autocast() -> None:
    model = attach_lora(tiny_llama(torch.bfloat16), Training(r=4, alpha=8))
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert trainable == {torch.float32} and frozen == {torch.bfloat16}
    ids = torch.randint(0, 300, (40,)).tolist()
    example = Example(1, ids, [-100] * 15 + ids[15:])
    tok = type("Tok", (), {"pad_token_id": 0})()
    place = Placement("cpu", "bfloat16", "bfloat16")
    assert chunked_loss_agrees(model, example, tok, place)
    # a head the chunked loss would apply wrongly is still caught under bf16's looser tolerance
    head = model.get_base_model().lm_head
    head.weight.data *= 100.0
    original = head.forward
    head.forward = lambda x: original(x) / 100.0  # the model's own loss sees the real head
    assert not chunked_loss_agrees(model, example, tok, place)


def test_falling_back_to_full_logits_redoes_the_plan_and_switches_checkpointing_on(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({**TINY, "model_type": "llama"}))
    spec = TrainSpec(
        member="m",
        version=1,
        base_model_dir=str(base),
        output_dir=str(tmp_path / "o"),
        samples=[],
        training={},
    )
    place = Placement("cpu", "float32", None)
    seq = 512
    probe = Training(batch_size=8, loss_chunk_tokens=64)
    from agora_cli.training.trainer import memory_plan

    chunked = memory_plan(spec, probe, seq, "cpu", False)
    full = memory_plan(spec, probe.model_copy(update={"loss_chunk_tokens": 0}), seq, "cpu", False)
    assert chunked is not None and full is not None
    # a budget the chunked loss fits without checkpointing but full logits do not
    budget = (chunked.plain.total_gb + full.plain.total_gb) / 2
    assert full.checkpointed.total_gb < budget
    cfg = probe.model_copy(update={"memory_budget_gb": budget})
    plan = memory_plan(spec, cfg, seq, "cpu", False)
    assert plan is not None and not plan.checkpointing
    model = attach_lora(tiny_llama(), cfg.model_copy(update={"gradient_checkpointing": False}))
    new_plan, on = replan_full_logits(model, spec, cfg, seq, place, plan, False)
    assert on and new_plan is not None and new_plan.checkpointing
    assert new_plan.estimate.logits == full.plain.logits  # every position's logits counted
    assert model.get_base_model().is_activation_checkpointing
