"""Eq. 3's loss where it is defined: the solution positions only, projected in chunks.

Eq. 3: L(theta) = - sum_{(q, o)} sum_t log p_theta(o_t | q, o_<t), averaged over the supervised
(solution) tokens of the micro-batch, exactly as `model(**batch).loss` averages it. The model's own
loss projects EVERY position onto the vocabulary (Gemma-3: 262,144 columns) and then throws the
prompt and padding positions away; here the backbone's final hidden states are gathered at the
supervised positions (labels != -100 after the causal shift) and pushed through the output head
`chunk` rows at a time. Each chunk's loss is wrapped in `torch.utils.checkpoint`, so its logits
are dropped after the forward and recomputed in the backward: at most one chunk's logits (and
their float32 upcast and gradient) exist at any moment.

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

from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from agora_cli.training.data import IGNORE_INDEX


def _unwrap(model: Any) -> Any:
    """The transformers model under a PeftModel (LoRA layers already injected into it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def head_parts(model: Any) -> tuple[Any, Any, float | None]:
    """(backbone, output head, logit soft-cap) of a causal LM, through a PeftModel if any.

    The backbone is what the causal LM's forward calls before its head (`get_decoder()`: the
    `model` attribute of Llama/SmolLM2 and Gemma3ForCausalLM, the text model of Gemma-3's
    conditional-generation class); the head is `get_output_embeddings()`, which is the LoRA-wrapped
    module when the adapter targets it.
    """
    base = _unwrap(model)
    softcap = getattr(base.config, "final_logit_softcapping", None)  # only set on the CausalLM's
    return base.get_decoder(), base.get_output_embeddings(), softcap  # own config when it applies


def supervised_targets(hidden: Any, labels: Any) -> tuple[Any, Any]:
    """(rows, targets): hidden state at t predicts token t+1, kept where that label is supervised."""
    shifted = labels[:, 1:]
    keep = shifted != IGNORE_INDEX
    return hidden[:, :-1][keep], shifted[keep]


def _chunk_nll_sum(rows: Any, targets: Any, head: Any, softcap: float | None) -> Any:
    logits = head(rows)
    if softcap is not None:  # as the model's forward does, in the head's dtype
        logits = torch.tanh(logits / softcap) * softcap
    return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")


def chunked_nll(
    rows: Any, targets: Any, head: Any, softcap: float | None, chunk: int
) -> Any:
    """Mean negative log-likelihood of `targets` under `head(rows)`, `chunk` rows at a time.

    Each chunk is checkpointed (non-reentrant, so dropout in a LoRA on the head replays the same
    mask), which is what keeps only one chunk's logits alive. No supervised row: a zero that
    still belongs to the graph (the model's own mean would be NaN).
    """
    n = rows.shape[0]
    if n == 0:
        return rows.sum() * 0.0
    total = rows.new_zeros((), dtype=torch.float32)
    for i in range(0, n, chunk):
        part = (rows[i : i + chunk], targets[i : i + chunk], head, softcap)
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_nll_sum, *part, use_reentrant=False)
        else:
            total = total + _chunk_nll_sum(*part)
    return total / n


def supervised_loss(model: Any, batch: dict[str, Any], chunk: int) -> Any:
    """Eq. 3 for one micro-batch (input_ids, attention_mask, labels), token-averaged."""
    backbone, head, softcap = head_parts(model)
    out = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    rows, targets = supervised_targets(out.last_hidden_state, batch["labels"])
    return chunked_nll(rows, targets, head, softcap, chunk)


def agrees_with_model_loss(model: Any, batch: dict[str, Any], rtol: float = 1e-4) -> bool:
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

    def forward(self, **batch: Any) -> Any:
        if self.chunk <= 0:  # every position projected, then masked: today's `model(**batch).loss`
            return self.model(**batch).loss
        return supervised_loss(self.model, batch, self.chunk)
