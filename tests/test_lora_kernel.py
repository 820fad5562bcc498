"""training/lora_kernel.py: the fused LoRA layer gives PEFT's values, gradients and dropout
distribution, falls back to PEFT's forward where it does not apply, and the adapter it trains saves
exactly as PEFT's."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from peft import LoraConfig, get_peft_model

from agora_cli.training import lora_kernel
from agora_cli.training.lora_kernel import drop_positions, fuse_lora_layers, keep_mask

pytestmark = pytest.mark.unit


class _Block(torch.nn.Module):
    """q/k/v-like projections of one input, then an output projection (the shapes LoRA adapts)."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(24, 24) for _ in range(3))
        self.o = torch.nn.Linear(24, 8, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o(torch.tanh(self.q(x) + self.k(x) * self.v(x)))


def as_keep_mask(drawn: torch.Tensor, numel: int) -> torch.Tensor:
    """A `draw_dropout` result as a flat keep mask (bool), whichever form it took."""
    if drawn.dtype == torch.bool:
        return drawn.reshape(-1)
    keep = torch.ones(numel, dtype=torch.bool)
    keep[drawn] = False
    return keep


def near(rate: float, q: float, count: int) -> bool:
    """`rate`, measured over `count` Bernoulli(q) trials, is within 5 standard deviations of q."""
    return abs(rate - q) < 5 * (q * (1 - q) / count) ** 0.5


def record_masks(monkeypatch) -> list[torch.Tensor]:
    """From now on, every keep mask the fused layers draw (flat), in order (they still use it)."""
    masks: list[torch.Tensor] = []
    real = lora_kernel.draw_dropout

    def recording(shape, p, device):
        drawn = real(shape, p, device)
        masks.append(as_keep_mask(drawn, shape.numel()))
        return drawn

    monkeypatch.setattr(lora_kernel, "draw_dropout", recording)
    return masks


def replay_masks(monkeypatch, masks: list[torch.Tensor]) -> Iterator[torch.Tensor]:
    """PEFT's nn.Dropout from now on applies `masks` in order; the masks it has not used yet."""
    order = iter(masks)

    def replay(inp, p=0.5, training=True, inplace=False):
        return inp * next(order).reshape(inp.shape).to(inp.dtype) / (1 - p) if training else inp

    monkeypatch.setattr(torch.nn.functional, "dropout", replay)
    return order


def _pair(p: float = 0.3) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(PEFT's LoRA, the same LoRA fused); B randomised so every gradient is non-zero."""
    torch.manual_seed(0)
    peft = get_peft_model(
        _Block(), LoraConfig(r=4, lora_alpha=8, lora_dropout=p, target_modules=["q", "k", "v", "o"])
    )
    for name, param in peft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    fused = copy.deepcopy(peft)
    assert fuse_lora_layers(fused) == 4
    return peft, fused


def _grads(
    model: torch.nn.Module, x: torch.Tensor, input_grad: bool = True
) -> tuple[torch.Tensor, dict, torch.Tensor | None]:
    x = x.clone().requires_grad_(input_grad)
    out = model(x)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.detach(), grads, x.grad


@pytest.mark.parametrize("p", [0.05, 0.5])  # dropped positions; a whole mask
@pytest.mark.parametrize("input_grad", [True, False])  # False: the first layer's input
def test_fused_layer_gives_peft_values_and_gradients_for_the_same_masks(
    monkeypatch, input_grad: bool, p: float
) -> None:
    peft, fused = _pair(p)
    x = torch.randn(2, 5, 24)
    masks = record_masks(monkeypatch)
    out_f, grads_f, gx_f = _grads(fused.train(), x, input_grad)
    assert len(masks) == 4  # one mask per adapted module, each its own
    # PEFT's nn.Dropout, replayed with the masks the fused layers drew (forward order q, k, v, o)
    left = replay_masks(monkeypatch, masks)
    out_p, grads_p, gx_p = _grads(peft.train(), x, input_grad)
    assert next(left, None) is None
    torch.testing.assert_close(out_f, out_p, rtol=1e-6, atol=1e-6)
    if input_grad:
        torch.testing.assert_close(gx_f, gx_p, rtol=1e-4, atol=1e-5)
    else:
        assert gx_f is None and gx_p is None
    assert grads_f.keys() == grads_p.keys() and len(grads_f) == 8
    for name in grads_f:
        assert grads_f[name].abs().max() > 0, name
        torch.testing.assert_close(grads_f[name], grads_p[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5])  # positions, positions, a whole mask
def test_fused_dropout_keeps_the_distribution_and_draws_independent_masks(p: float) -> None:
    torch.manual_seed(1)
    n = 2_000_000
    keep = keep_mask(torch.Size([n]), p, "cpu").double().mean().item()
    assert near(keep, 1 - p, n)
    # values: a layer whose base is 0 and whose adapter is 1 returns dropout(x) itself: x / (1 - p)
    # where kept, 0 elsewhere, so unbiased
    model = get_peft_model(
        torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False)),
        LoraConfig(r=1, lora_alpha=1, lora_dropout=p, target_modules=["0"]),
    )
    layer = model.base_model.model[0]
    layer.get_base_layer().weight.data.fill_(0.0)
    layer.lora_A["default"].weight.data.fill_(1.0)
    layer.lora_B["default"].weight.data.fill_(1.0)
    assert fuse_lora_layers(model) == 1
    ones = torch.ones(200_000, 1)
    y = layer.train()(ones).detach().flatten()
    values = torch.unique(y).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / (1 - p))
    assert abs(y.double().mean().item() - 1.0) < 5 * (p / (1 - p) / len(y)) ** 0.5
    # two calls (two modules) draw different masks; eval mode is PEFT's: no dropout
    a, b = layer(ones).detach(), layer(ones).detach()
    agree = (a == b).double().mean().item()
    assert abs(agree - (p * p + (1 - p) ** 2)) < 0.01
    assert torch.equal(layer.eval()(ones), ones)


@pytest.mark.parametrize("sigmas", [6.0, -1e9])  # -1e9: 64 gaps per draw, thousands of draws
@pytest.mark.parametrize("p", [0.05, 0.3])
def test_dropped_positions_are_a_bernoulli_process(monkeypatch, p: float, sigmas: float) -> None:
    """Every element dropped independently with probability p: the rate, neighbours dropped
    together at p^2, the tail as covered as the head; sorted distinct in-range indices; the
    same draw for a seed whatever the thread count."""
    monkeypatch.setattr(lora_kernel, "_SIGMAS", sigmas)
    n = 2_000_000
    threads = torch.get_num_threads()
    draws = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            torch.manual_seed(5)
            draws.append(drop_positions(n, p))
    finally:
        torch.set_num_threads(threads)
    drop = draws[0]
    assert torch.equal(draws[0], draws[1])
    assert drop.dtype == torch.int64 and 0 <= int(drop[0]) and int(drop[-1]) < n
    assert bool((drop[1:] > drop[:-1]).all())

    dropped = ~as_keep_mask(drop, n)
    assert near(dropped.double().mean().item(), p, n)
    assert near((dropped[1:] & dropped[:-1]).double().mean().item(), p * p, n - 1)
    tail = dropped[-n // 100 :]
    assert near(tail.double().mean().item(), p, len(tail))
    torch.manual_seed(6)
    assert not torch.equal(drop_positions(n, p), drop)


def test_a_large_mask_is_drawn_in_parts_reproducibly_whatever_the_thread_count() -> None:
    """Large masks are drawn in parallel parts, each from a generator seeded from torch's: the
    same seed gives the same mask with 1 or 2 threads, the parts are not copies of each other,
    and each part keeps 1 - p."""
    p, shape = 0.05, torch.Size([1000, 576])
    masks = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 2):
            torch.set_num_threads(n)
            torch.manual_seed(3)
            masks.append(keep_mask(shape, p, "cpu"))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(masks[0], masks[1]) and torch.equal(masks[1], masks[2])
    torch.manual_seed(4)
    assert not torch.equal(keep_mask(shape, p, "cpu"), masks[0])  # another seed, another mask
    parts = masks[0].view(-1).tensor_split(lora_kernel._PARTS)
    assert len(parts) > 1 and all(len(x) > lora_kernel._PARALLEL_MIN // 8 for x in parts)
    n = min(len(x) for x in parts)
    assert not torch.equal(parts[0][:n], parts[1][:n])
    for part in parts:
        assert near(part.double().mean().item(), 1 - p, len(part))


def test_without_dropout_and_with_the_adapter_disabled_the_fused_layer_is_peft() -> None:
    peft, fused = _pair(p=0.0)
    x = torch.randn(2, 3, 24)
    out_f, grads_f, gx_f = _grads(fused.train(), x)
    out_p, grads_p, gx_p = _grads(peft.train(), x)
    torch.testing.assert_close(out_f, out_p, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx_f, gx_p, rtol=1e-4, atol=1e-5)
    for name in grads_f:
        torch.testing.assert_close(grads_f[name], grads_p[name], rtol=1e-4, atol=1e-5)
    with fused.disable_adapter():  # PEFT's own forward: the base model alone
        base = fused.train()(x)
    m = fused.get_base_model()
    q, k, v, o = (layer.base_layer for layer in (m.q, m.k, m.v, m.o))
    torch.testing.assert_close(base, o(torch.tanh(q(x) + k(x) * v(x))), rtol=0, atol=0)


@pytest.mark.parametrize("p", [0.05, 0.5])  # dropped positions; a mask drawn in parallel parts
def test_fused_layers_replay_under_checkpointing_and_save_as_peft(p: float) -> None:
    peft, fused = _pair(p)
    x = torch.randn(3, 1000, 24)  # 72,000 elements: a whole mask is drawn in parallel parts
    torch.manual_seed(7)
    _, plain, _ = _grads(fused.train(), x)
    fused.zero_grad()
    torch.manual_seed(7)
    xc = x.clone().requires_grad_()
    out = torch.utils.checkpoint.checkpoint(fused, xc, use_reentrant=False)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    for name, param in fused.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param.grad, plain[name], rtol=1e-6, atol=1e-7)
    # the adapter's state (what save_pretrained writes) has PEFT's names and values
    assert peft.state_dict().keys() == fused.state_dict().keys()
    peft.eval(), fused.eval()
    torch.testing.assert_close(peft(x), fused(x), rtol=0, atol=0)


def test_a_run_resumes_under_either_kernel_as_it_is() -> None:
    """The kernel changes speed and memory, not the loss: no diff between kernels, nor for a run
    stored before the setting existed (it trained with PEFT's modules)."""
    from agora_cli.runner import config_diff

    old = {"protocol": {"problem_source": "generated"}, "training": {"r": 16}}

    def given(kernel: str, r: int = 16) -> dict:
        return {**old, "training": {"r": r, "lora_dropout_kernel": kernel}}

    assert config_diff(old, given("peft")) == []
    assert config_diff(old, given("fused")) == []
    assert config_diff(given("peft"), given("fused")) == []
    assert [k for k, _ in config_diff(given("peft"), given("fused", r=8))] == ["training.r"]
