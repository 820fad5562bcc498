"""One adapted linear layer of LoRA as one autograd function: PEFT's values, less time and memory.

LoRA (Hu et al. 2021, with PEFT's `lora_dropout`) computes, for each adapted linear layer,

    y = x W^T + b + s * B A dropout(x)          (W, b frozen; A: r x in, B: out x r; s = alpha / r)

PEFT builds it from modules: the base linear, `nn.Dropout` on the layer's whole input, `lora_A`,
`lora_B`, a multiplication by s and an addition. On CPU that costs, per adapted layer and call:
a float32 Bernoulli noise tensor and a dropped copy of the input kept for the backward (two float
copies of the input; q, k and v, and gate and up, each make their own from the same input), and
two passes over the layer's full output (times s, plus the base output) in the forward and one
more in the backward. For SmolLM2's MLP (576 -> 1536) those output-sized passes cost as much as
the adapter's matrix products.

`FusedLoraLinear` (`fuse_lora_layers` swaps PEFT's class for it in place) computes the same sum
with the same distribution in one function:
- dropout: every element kept independently with probability 1 - p, kept elements scaled by
  1 / (1 - p), a fresh draw per layer and call from torch's generator, so seeding and
  (non-reentrant) checkpointing replay it. At LoRA's usual rates (p <= 0.3) on CPU the draw is the
  dropped positions themselves (`drop_positions`: geometric gaps, about p x n numbers instead of
  n), kept as their indices, and the masked input is a copy with those positions zeroed; drawing
  a whole mask, converting it and multiplying by it cost an eighth of a SmolLM2 step. Above that
  rate, or on a GPU, a whole mask is drawn as 32-bit integers against a threshold (`keep_mask`,
  in parallel parts on CPU) and kept as one byte per element. Either way the masked input is
  recomputed in the backward instead of being stored;
- s and 1 / (1 - p) scale the r-wide product dropped(x) A^T, not the output, and the adapter's
  term is added into the base output by the matrix product itself (`addmm_`): no output-sized
  pass;
- the backward takes the input gradient as  g W + dropped((g B) s / (1 - p) A)  with one
  accumulating product, and A's and B's gradients from the draw and the r-wide product.

The forward value and every gradient equal PEFT's for the same mask (tests/test_lora_kernel.py);
the adapter's parameters, names and saved files are PEFT's. Anything PEFT computes differently
(evaluation mode, merged or disabled adapters, several active adapters, DoRA and other variants,
non-Linear bases) goes through PEFT's own forward unchanged.

Under autocast (the GPU trainer: a bf16 base, float32 A and B) the function runs in the autocast
dtype, as PEFT's modules do there: the input, W, b, A and B are cast to it (A's and B's gradients
flow back to their float32 weights through the cast) and the products run with autocast off.
PEFT gets the same bf16 products, so values and gradients agree within bf16's rounding
(tests/test_lora_kernel.py checks it under CPU autocast).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

import torch

_RANGE = 2**31  # int32 `random_()` draws uniformly from [0, 2**31)
_PARTS = 4  # a large mask is drawn in this many parts, whatever the thread count (reproducible)
_PARALLEL_MIN = 1 << 16  # elements; below this one thread's draw is quicker than handing it out
_SPARSE_MAX_P = 0.3  # on CPU, dropout up to this rate draws the dropped positions, not a mask
_SIGMAS = 6.0  # `drop_positions` draws this many standard deviations more gaps than expected


def draw_dropout(shape: torch.Size, p: float, device: Any) -> torch.Tensor:
    """Which elements of a `shape` tensor dropout(p) drops, as `dropped` applies it: the sorted
    flat indices of the dropped elements (int64) on CPU for p <= `_SPARSE_MAX_P`, else the keep
    mask (bool)."""
    if torch.device(device).type == "cpu" and p <= _SPARSE_MAX_P:
        return drop_positions(math.prod(shape), p)
    return keep_mask(shape, p, device)


def dropped(t: torch.Tensor, drop: torch.Tensor | None, inplace: bool = False) -> torch.Tensor:
    """`t` with the elements `draw_dropout` chose set to 0 (a new tensor unless `inplace`)."""
    if drop is None:
        return t
    if drop.dtype == torch.bool:
        return t.mul_(drop) if inplace else t * drop
    out = t if inplace else t.clone(memory_format=torch.contiguous_format)
    return out.view(-1).index_fill_(0, drop, 0.0).view(out.shape)


def drop_positions(numel: int, p: float) -> torch.Tensor:
    """Sorted flat indices (int64, CPU) of the dropped elements of a `numel`-element tensor:
    each element dropped independently with probability p, the same distribution as a Bernoulli
    mask.

    A Bernoulli process is its gaps: the number of trials from one drop to the next is
    Geometric(p), drawn by inversion as 1 + floor(log(1 - U) / log(1 - p)) from float64 uniforms
    U in [0, 1) (1 - U is in (0, 1], so the logarithm is finite). About p x numel numbers come
    from torch's generator instead of numel: serially, so the draw is the same for any thread
    count, and seeding and checkpointing replay it. Gaps are drawn `_SIGMAS` standard deviations
    beyond the expected count, and again from the last drop on in the rare case that they end
    before the tensor does.
    """
    log_keep = math.log1p(-p)
    found: list[torch.Tensor] = []
    start = 0  # the first position not yet covered by a gap
    while True:
        left = numel - start
        count = int(max(0.0, left * p + _SIGMAS * math.sqrt(left * p * (1.0 - p)))) + 64
        draws = torch.empty(count, dtype=torch.float64).uniform_()
        gaps = draws.neg_().log1p_().div_(log_keep).floor_().add_(1.0)
        ends = gaps.cumsum_(0).add_(start - 1)  # the dropped positions
        inside = int(torch.searchsorted(ends, float(numel)))  # ends are increasing
        found.append(ends[:inside])
        if inside < count:
            break
        start = int(ends[-1]) + 1
    return (torch.cat(found) if len(found) > 1 else found[0]).long()


def keep_mask(shape: torch.Size, p: float, device: Any) -> torch.Tensor:
    """Bernoulli(1 - p) keep mask (bool), from 31 random bits per element.

    P(keep) = round((1 - p) * 2**31) / 2**31: within 2.4e-10 of 1 - p, finer than the float32
    uniform a float Bernoulli draw compares against. On CPU torch's generator draws one element
    at a time on one thread while the other cores wait (8% of a SmolLM2 step); a large mask is
    therefore drawn in `_PARTS` parts on torch's threads, each part from its own generator seeded
    from torch's, so seeding and checkpointing still replay it.
    """
    threshold = round((1.0 - p) * _RANGE)
    ints = torch.empty(shape, dtype=torch.int32, device=device)
    if ints.device.type != "cpu" or ints.numel() < _PARALLEL_MIN:
        return ints.random_() < threshold
    seeds = torch.empty(_PARTS, dtype=torch.int64).random_().tolist()
    parts = ints.view(-1).tensor_split(_PARTS)
    threads = torch.get_num_threads()
    if threads > 1:
        list(_mask_pool(threads).map(_fill, parts, seeds))
    else:
        for part, seed in zip(parts, seeds, strict=True):
            _fill(part, seed)
    return ints < threshold


@cache
def _mask_pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="agora-mask")


def _fill(part: torch.Tensor, seed: int) -> None:
    part.random_(generator=torch.Generator().manual_seed(seed))


class _LoraLinearFn(torch.autograd.Function):
    """y = x W^T + b + (s * dropout(x) A^T) B^T on the flattened rows, W and b frozen.

    dropout(x) = dropped(x) / (1 - p): the 1 / (1 - p) joins s on the r-wide side, so the
    input-sized work is one masked copy each way. Saved for the backward: x (the layer's input,
    alive anyway), the draw (dropped positions or byte mask), the r-wide product
    u = s * dropout(x) A^T, and the weights.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        a: torch.Tensor,
        b: torch.Tensor,
        s: float,
        p: float,
    ) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        drop = draw_dropout(rows.shape, p, x.device) if p > 0.0 else None
        gain = s / (1.0 - p)  # s times dropout's scaling of the kept elements
        u = (dropped(rows, drop) @ a.t()).mul_(gain)
        y = torch.nn.functional.linear(rows, weight, bias)
        y.addmm_(u, b.t())
        ctx.save_for_backward(rows, drop, u, weight, a, b)
        ctx.gain, ctx.x_shape = gain, x.shape
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        rows, drop, u, weight, a, b = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        gu = (g @ b).mul_(ctx.gain)  # d/d(dropped x) through A, B, s and 1 / (1 - p), r-wide
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = dropped(gu @ a, drop, inplace=True).addmm_(g, weight).reshape(ctx.x_shape)
        if ctx.needs_input_grad[3]:
            grad_a = gu.t() @ dropped(rows, drop)
        if ctx.needs_input_grad[4]:
            grad_b = g.t() @ u
        return grad_x, None, None, grad_a, grad_b, None, None


@cache  # one class, so every fused layer is of the same type
def _lora_linear_class() -> type:
    from peft.tuners.lora.layer import Linear as LoraLinear

    class FusedLoraLinear(LoraLinear):
        """PEFT's LoRA Linear whose training forward is `_LoraLinearFn` (PEFT's otherwise)."""

        def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            name = _fusable_adapter(self, x, args, kwargs)
            if name is None:
                return super().forward(x, *args, **kwargs)
            base, drop = self.get_base_layer(), self.lora_dropout[name]
            p = float(drop.p) if isinstance(drop, torch.nn.Dropout) else 0.0
            args = (x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight)
            device = x.device.type
            if not torch.is_autocast_enabled(device):
                return _LoraLinearFn.apply(*args, float(self.scaling[name]), p)
            dtype = torch.get_autocast_dtype(device)
            cast = tuple(t if t is None else t.to(dtype) for t in args)
            with torch.autocast(device, enabled=False):
                return _LoraLinearFn.apply(*cast, float(self.scaling[name]), p)

    return FusedLoraLinear


def _fusable_adapter(layer: Any, x: torch.Tensor, args: tuple, kwargs: dict) -> str | None:
    """The one adapter `_LoraLinearFn` can compute exactly as PEFT would here, or None."""
    if not layer.training or args or kwargs or layer.disable_adapters or layer.merged:
        return None
    active = [n for n in layer.active_adapters if n in layer.lora_A]
    if len(active) != 1 or active[0] in getattr(layer, "lora_variant", {}):
        return None
    name = active[0]
    a, b = layer.lora_A[name], layer.lora_B[name]
    weights = (layer.get_base_layer().weight, a.weight, b.weight)
    if a.bias is not None or b.bias is not None:
        return None
    # Without autocast, mixed dtypes are PEFT's to reconcile; under it everything is cast alike.
    if not torch.is_autocast_enabled(x.device.type) and any(w.dtype != x.dtype for w in weights):
        return None
    return name


def fuse_lora_layers(model: Any) -> int:
    """Swap every PEFT LoRA Linear with a plain linear base and plain A/B for `FusedLoraLinear`
    (in place); the count. Parameters, their names (so the saved adapter) and the config are
    PEFT's: only the layers' class changes. Dropout other than `nn.Dropout` (or none) is left to
    PEFT's forward, as are layers whose base is not exactly `nn.Linear`.
    """
    from peft.tuners.lora.layer import Linear as LoraLinear

    fused_class = _lora_linear_class()
    fused = 0
    for module in model.modules():
        if type(module) is not LoraLinear or type(module.get_base_layer()) is not torch.nn.Linear:
            continue
        if any(type(m) is not torch.nn.Linear for m in (*module.lora_A.values(), *module.lora_B.values())):
            continue
        if any(type(d) not in (torch.nn.Dropout, torch.nn.Identity) for d in module.lora_dropout.values()):
            continue
        module.__class__ = fused_class
        fused += 1
    return fused
