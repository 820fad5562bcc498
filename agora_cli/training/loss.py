"""Eq. 3's loss where it is defined: the solution positions only, projected in chunks.

Eq. 3: L(theta) = - sum_{(q, o)} sum_t log p_theta(o_t | q, o_<t), averaged over the supervised
(solution) tokens of the micro-batch, exactly as `model(**batch).loss` averages it. The model's own
loss projects EVERY position onto the vocabulary (Gemma-3: 262,144 columns) and then throws the
prompt and padding positions away; here the backbone's final hidden states are gathered at the
supervised positions (labels != -100 after the causal shift) and pushed through the output head
`chunk` rows at a time, so at most one chunk's logits (and their float32 upcast and gradient)
exist at any moment.

Two ways to keep only one chunk alive:
- the head is frozen (LoRA's usual case: the output embeddings are not adapted): the gradient
  with respect to the hidden rows is computed in the forward pass, chunk by chunk (softmax minus
  one-hot, times the head's weight), and the backward only scales it. The head is applied once
  per supervised row and its logits never reach autograd: no recomputation, no saved logits.
- the head carries a LoRA (`target_modules` names it): each chunk's loss goes through
  `torch.utils.checkpoint`, so the logits are recomputed in the backward, where autograd
  reaches the adapter's weights.

The head is applied as the model's forward applies it (the output embeddings, tied or not, a LoRA
on them when `target_modules` names them, Gemma-2-style `final_logit_softcapping`, upcast to
float32 before the cross-entropy). Models whose forward does something else to the logits (e.g.
MiniCPM's hidden-state scaling) are caught by `agrees_with_model_loss`, which the trainer runs on
one short example before training and falls back to the model's own loss when it disagrees.

No well-kept implementation fits here: Liger-Kernel's fused linear cross-entropy is Triton (GPU
only), and torchtune's chunked cross-entropy chunks every position (no supervised-only gather) and
would bring torchtune's own torch/torchao pins.
"""

from __future__ import annotations

from typing import Any, TypeGuard

import torch
from torch.utils.checkpoint import checkpoint

from agora_cli.training.data import IGNORE_INDEX


def _unwrap(model: Any) -> Any:
    """The transformers model under a PeftModel (LoRA layers already injected into it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def head_parts(model: Any) -> tuple[torch.nn.Module, torch.nn.Module, float | None]:
    """(backbone, output head, logit soft-cap) of a causal LM, through a PeftModel if any.

    The backbone is what the causal LM's forward calls before its head (`get_decoder()`: the
    `model` attribute of Llama/SmolLM2 and Gemma3ForCausalLM, the text model of Gemma-3's
    conditional-generation class); the head is `get_output_embeddings()`, which is the LoRA-wrapped
    module when the adapter targets it.
    """
    base = _unwrap(model)
    softcap = getattr(base.config, "final_logit_softcapping", None)  # only set on the CausalLM's
    return base.get_decoder(), base.get_output_embeddings(), softcap  # own config when it applies


def supervised_targets(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, targets): hidden state at t predicts token t+1, kept where that label is supervised."""
    shifted = labels[:, 1:]
    keep = shifted != IGNORE_INDEX
    return hidden[:, :-1][keep], shifted[keep]


def _chunk_nll_sum(
    rows: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, softcap: float | None
) -> torch.Tensor:
    logits = head(rows)
    if softcap is not None:  # as the model's forward does, in the head's dtype
        logits = torch.tanh(logits / softcap) * softcap
    return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")


def frozen_linear(head: torch.nn.Module) -> TypeGuard[torch.nn.Linear]:
    """Is `head` a plain linear layer with nothing to train (no LoRA on it, weights frozen)?"""
    return type(head) is torch.nn.Linear and not any(p.requires_grad for p in head.parameters())


def _frozen_head_pass(
    rows: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    softcap: float | None,
    chunk: int,
    grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(summed NLL, its gradient with respect to `rows` or None), one chunk of logits at a time.

    d(sum NLL)/d(logits) = softmax(logits) - onehot(target); through the soft-cap
    c * tanh(z / c) it is multiplied by 1 - tanh(z / c)^2; d/d(rows) is that times the weight.
    """
    grad_rows = torch.empty_like(rows) if grad else None
    total = torch.zeros((), dtype=torch.float32, device=rows.device)
    for i in range(0, rows.shape[0], chunk):
        part, tgt = rows[i : i + chunk], targets[i : i + chunk]
        z = torch.nn.functional.linear(part, weight, bias)
        squash = None
        if softcap is not None:  # as the model's forward does, in the head's dtype
            squash = torch.tanh(z / softcap)
            z = squash * softcap
        # log_softmax, the kernel the model's cross-entropy uses, so the sums round alike
        logp = torch.log_softmax(z.float(), dim=-1)
        del z
        total -= logp.gather(1, tgt[:, None]).sum()
        if grad_rows is None:
            continue
        g = logp.exp_()  # softmax, in place
        g[torch.arange(g.shape[0], device=g.device), tgt] -= 1.0
        if squash is not None:
            g *= 1.0 - squash.float().square()
        grad_rows[i : i + chunk] = (g.to(weight.dtype) @ weight).to(rows.dtype)
    return total, grad_rows


class _FrozenHeadNLL(torch.autograd.Function):
    """Summed NLL under a frozen linear head; the backward scales the gradient the forward took.

    Only the (rows x hidden) gradient is kept between the two: no logits are saved.
    """

    @staticmethod
    def forward(
        ctx: Any,
        rows: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        softcap: float | None,
        chunk: int,
    ) -> torch.Tensor:
        total, grad_rows = _frozen_head_pass(rows, weight, bias, targets, softcap, chunk, True)
        ctx.save_for_backward(grad_rows)
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (grad_rows,) = ctx.saved_tensors
        return grad_rows * grad_total.to(grad_rows.dtype), None, None, None, None, None


def chunked_nll(
    rows: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, softcap: float | None, chunk: int
) -> torch.Tensor:
    """Mean negative log-likelihood of `targets` under `head(rows)`, `chunk` rows at a time.

    A frozen linear head takes `_FrozenHeadNLL` (gradient in the forward, head applied once).
    Any other head is checkpointed chunk by chunk (non-reentrant, so dropout in a LoRA on the
    head replays the same mask). Either way only one chunk's logits are alive. No supervised
    row: a zero that still belongs to the graph (the model's own mean would be NaN).
    """
    n = rows.shape[0]
    if n == 0:
        return rows.sum() * 0.0
    if frozen_linear(head):
        if torch.is_grad_enabled() and rows.requires_grad:
            return _FrozenHeadNLL.apply(rows, head.weight, head.bias, targets, softcap, chunk) / n
        with torch.no_grad():
            return _frozen_head_pass(rows, head.weight, head.bias, targets, softcap, chunk, False)[0] / n
    total = rows.new_zeros((), dtype=torch.float32)
    for i in range(0, n, chunk):
        part = (rows[i : i + chunk], targets[i : i + chunk], head, softcap)
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_nll_sum, *part, use_reentrant=False)
        else:
            total = total + _chunk_nll_sum(*part)
    return total / n


def supervised_loss(model: Any, batch: dict[str, torch.Tensor], chunk: int) -> torch.Tensor:
    """Eq. 3 for one micro-batch (input_ids, attention_mask, labels), token-averaged."""
    backbone, head, softcap = head_parts(model)
    out = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    rows, targets = supervised_targets(out.last_hidden_state, batch["labels"])
    return chunked_nll(rows, targets, head, softcap, chunk)


def agrees_with_model_loss(model: Any, batch: dict[str, torch.Tensor], rtol: float = 1e-4) -> bool:
    """Does `supervised_loss` give the model's own loss on `batch`? (no gradients; keep it short)

    False too when the model has no reachable backbone/head (some remote-code architectures).
    """
    with torch.no_grad():
        try:
            ours = float(supervised_loss(model, batch, chunk=64))
        except (AttributeError, NotImplementedError, TypeError, ValueError):
            return False
        theirs = float(model(**batch).loss)
    return abs(ours - theirs) <= rtol * max(1.0, abs(theirs))


class StepLoss(torch.nn.Module):
    """`loss(**batch)` for the training step: chunked (above) or, with chunk 0, the model's own.

    A module, not a function, so that `accelerate` can wrap it in DistributedDataParallel: DDP
    synchronises gradients only for a forward that goes through its wrapper.
    """

    def __init__(self, model: Any, chunk: int) -> None:
        super().__init__()
        self.model = model
        self.chunk = chunk

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        if self.chunk <= 0:  # every position projected, then masked: today's `model(**batch).loss`
            return self.model(**batch).loss
        return supervised_loss(self.model, batch, self.chunk)
