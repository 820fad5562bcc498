"""training/lora_dropout.py: LoRA's dropout folded into lora_A gives PEFT's values, gradients and
distribution, and the adapter it trains saves exactly as PEFT's."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from agora_cli.training import lora_dropout
from agora_cli.training.lora_dropout import DroppedLinear, fuse_lora_dropout, keep_mask


class _Block(torch.nn.Module):
    """q/k/v-like projections of one input, then an output projection (the shapes LoRA adapts)."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(24, 24) for _ in range(3))
        self.o = torch.nn.Linear(24, 8, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o(torch.tanh(self.q(x) + self.k(x) * self.v(x)))


def _pair(p: float = 0.3) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(PEFT's LoRA, the same LoRA fused); B randomised so every gradient is non-zero."""
    torch.manual_seed(0)
    peft = get_peft_model(_Block(), LoraConfig(r=4, lora_alpha=8, lora_dropout=p,
                                              target_modules=["q", "k", "v", "o"]))
    for name, param in peft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    fused = copy.deepcopy(peft)
    assert fuse_lora_dropout(fused) == 4
    return peft, fused


def _grads(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict, torch.Tensor]:
    x = x.clone().requires_grad_()
    out = model(x)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.detach(), grads, x.grad


def test_fused_dropout_gives_peft_values_and_gradients_for_the_same_masks(monkeypatch) -> None:
    peft, fused = _pair()
    x = torch.randn(2, 5, 24)
    masks: list[torch.Tensor] = []
    real = lora_dropout.keep_mask

    def recording(shape, p, device):
        masks.append(real(shape, p, device))
        return masks[-1]

    monkeypatch.setattr(lora_dropout, "keep_mask", recording)
    out_f, grads_f, gx_f = _grads(fused.train(), x)
    assert len(masks) == 4  # one mask per adapted module, each its own
    # PEFT's nn.Dropout, replayed with the masks the fused layers drew (forward order q, k, v, o)
    order = iter(masks)

    def replay(inp, p=0.5, training=True, inplace=False):
        return inp * next(order).to(inp.dtype) / (1 - p) if training else inp

    monkeypatch.setattr(torch.nn.functional, "dropout", replay)
    out_p, grads_p, gx_p = _grads(peft.train(), x)
    torch.testing.assert_close(out_f, out_p, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx_f, gx_p, rtol=1e-5, atol=1e-6)
    assert grads_f.keys() == grads_p.keys() and len(grads_f) == 8
    for name in grads_f:
        assert grads_f[name].abs().max() > 0, name
        torch.testing.assert_close(grads_f[name], grads_p[name], rtol=1e-5, atol=1e-6)


def test_fused_dropout_keeps_the_distribution_and_draws_independent_masks() -> None:
    torch.manual_seed(1)
    p, n = 0.3, 2_000_000
    keep = keep_mask(torch.Size([n]), p, "cpu").double().mean().item()
    assert abs(keep - (1 - p)) < 5 * ((p * (1 - p)) / n) ** 0.5
    # values: the dropped input is x / (1 - p) where kept, 0 elsewhere, so unbiased
    layer = torch.nn.Linear(1, 1, bias=False)
    layer.weight.data.fill_(1.0)
    layer.__class__ = DroppedLinear
    layer.dropout_p = p
    ones = torch.ones(200_000, 1)
    y = layer.train()(ones).detach().flatten()
    values = torch.unique(y).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / (1 - p))
    assert abs(y.double().mean().item() - 1.0) < 5 * (p / (1 - p) / len(y)) ** 0.5
    # two calls (two modules) draw different masks; eval mode is the plain linear layer
    a, b = layer(ones).detach(), layer(ones).detach()
    agree = (a == b).double().mean().item()
    assert abs(agree - (p * p + (1 - p) ** 2)) < 0.01
    assert torch.equal(layer.eval()(ones), ones)


def test_fused_layers_replay_under_checkpointing_and_save_as_peft() -> None:
    peft, fused = _pair()
    x = torch.randn(3, 4, 24)
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


def test_a_run_stored_before_the_dropout_kernel_setting_resumes_without_force() -> None:
    """Such a run trained with PEFT's dropout: the default `peft` is no change, `fused` is one."""
    from agora_cli.runner import config_diff

    old = {"protocol": {"problem_source": "generated"}, "training": {"r": 16}}

    def given(kernel: str) -> dict:
        return {**old, "training": {"r": 16, "lora_dropout_kernel": kernel}}

    assert config_diff(old, given("peft")) == []
    assert [k for k, _ in config_diff(old, given("fused"))] == ["training.lora_dropout_kernel"]
