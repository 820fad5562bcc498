"""LoRA's dropout inside the adapter's first projection: PEFT's distribution, less memory and time.

LoRA (Hu et al. 2021, with PEFT's `lora_dropout`) adds  scale * B A dropout(x)  to each adapted
linear layer. PEFT applies `nn.Dropout` to the layer's whole input and then `lora_A`; on CPU
`nn.Dropout` draws a float32 Bernoulli noise tensor, divides it by 1 - p and multiplies, and
autograd keeps both the float noise (for the gradient of x) and the dropped input (for the
gradient of A): two float copies of the input per adapted module, and q, k and v (and gate/up)
each make their own from the same input.

`DroppedLinear` is `lora_A` with the dropout folded in (`fuse_lora_dropout` swaps PEFT's pair for
it in place): the same distribution (every element kept independently with probability 1 - p,
kept elements scaled by 1 / (1 - p), a fresh mask per module and call, drawn from torch's
generator so seeding and checkpointing replay it), but the mask is drawn as 32-bit integers
compared with a threshold (cheaper than a float Bernoulli draw), kept as one byte per element,
and the dropped input is recomputed in the backward instead of being stored. The forward value
and both gradients equal PEFT's for the same mask (tests/test_lora_dropout.py).
"""

from __future__ import annotations

from typing import Any

import torch

_RANGE = 2**31  # int32 `random_()` draws uniformly from [0, 2**31)


def keep_mask(shape: torch.Size, p: float, device: Any) -> torch.Tensor:
    """Bernoulli(1 - p) keep mask (bool), from 31 random bits per element.

    P(keep) = round((1 - p) * 2**31) / 2**31: within 2.4e-10 of 1 - p, finer than the float32
    uniform a float Bernoulli draw compares against.
    """
    threshold = round((1.0 - p) * _RANGE)
    return torch.empty(shape, dtype=torch.int32, device=device).random_() < threshold


def _scale(keep: torch.Tensor, p: float, dtype: torch.dtype) -> torch.Tensor:
    """The dropout multiplier: 0 where dropped, 1 / (1 - p) where kept (as nn.Dropout's noise)."""
    return keep.to(dtype).div_(1.0 - p)


class _DroppedProjection(torch.autograd.Function):
    """dropout(x) @ weight.T, saving x (usually alive anyway) and a byte mask, not two float copies."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, p: float) -> torch.Tensor:
        keep = keep_mask(x.shape, p, x.device)
        ctx.save_for_backward(x, keep, weight)
        ctx.p = p
        return torch.nn.functional.linear(x * _scale(keep, p, x.dtype), weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, keep, weight = ctx.saved_tensors
        scale = _scale(keep, ctx.p, x.dtype)
        grad_x = (grad @ weight.to(grad.dtype)).mul_(scale) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            dropped = (x * scale).reshape(-1, x.shape[-1])
            grad_w = (grad.reshape(-1, grad.shape[-1]).t() @ dropped.to(grad.dtype)).to(weight.dtype)
        return grad_x, grad_w, None


class DroppedLinear(torch.nn.Linear):
    """`lora_A` with LoRA's dropout applied inside it while training (no bias: PEFT's lora_A has
    none). Evaluation mode is the plain linear layer, as `nn.Dropout` is the identity there."""

    dropout_p: float = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.dropout_p == 0.0 or self.bias is not None:
            return super().forward(x)  # bias: not a LoRA A (never fused; kept for safety)
        return _DroppedProjection.apply(x, self.weight, self.dropout_p)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dropout_p={self.dropout_p}"


def fuse_lora_dropout(model: Any) -> int:
    """Fold every PEFT LoRA linear layer's `nn.Dropout` into its `lora_A` (in place); the count.

    The adapter's parameters, their names (so the saved adapter) and its config are unchanged:
    `lora_A` keeps its weight and only changes class, `lora_dropout` becomes the identity.
    Layers PEFT computes differently (DoRA and other variants, a biased A) are left alone.
    """
    from peft.tuners.lora.layer import Linear as LoraLinear

    fused = 0
    for module in model.modules():
        if not isinstance(module, LoraLinear):
            continue
        for name, drop in list(module.lora_dropout.items()):
            a = module.lora_A[name] if name in module.lora_A else None
            if (type(drop) is not torch.nn.Dropout or drop.p == 0.0 or type(a) is not torch.nn.Linear
                    or a.bias is not None or name in getattr(module, "lora_variant", {})):
                continue
            a.__class__ = DroppedLinear
            a.dropout_p = float(drop.p)
            module.lora_dropout[name] = torch.nn.Identity()
            fused += 1
    return fused
