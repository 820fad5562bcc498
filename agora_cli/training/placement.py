"""Where and in which dtypes one member's trainer runs: one decision, used by the trainer, the
memory estimate and the GPU check.

On a GPU that does bf16 (`precision: auto`), the frozen base is loaded in bf16 and the step runs
under bf16 autocast: the base costs half the memory and no float32 copy of it is re-cast at every
use. The LoRA weights, their gradients and AdamW's moments stay float32 (PEFT's
`autocast_adapter_dtype`; the trainer checks it), so small updates are not rounded away.

On a CPU everything stays as it always was: float32 weights, no autocast unless `precision` asks
for one, and then the base stays float32 too (CPU autocast re-casts it; the base is small there
and CPU bf16 kernels are not faster on every machine).
"""

from __future__ import annotations

from dataclasses import dataclass

HALF_BYTES, FULL_BYTES = 2, 4


@dataclass(frozen=True)
class Placement:
    """device: "cuda" or "cpu"; base_dtype: the frozen base weights' torch dtype name;
    autocast: the autocast dtype name, or None for plain float32."""

    device: str
    base_dtype: str
    autocast: str | None

    @property
    def half(self) -> bool:
        """Activations in 2 bytes (autocast on)."""
        return self.autocast is not None

    @property
    def base_bytes(self) -> int:
        return FULL_BYTES if self.base_dtype == "float32" else HALF_BYTES


def decide_placement(precision: str, *, cuda: bool, bf16_supported: bool) -> Placement:
    """The trainer's device and dtypes for `training.precision` on this machine.

    `auto`: bf16 on a GPU that supports it, else float32. `bf16`/`fp16`: autocast in that dtype,
    with the frozen base in that dtype on a GPU only.
    """
    device = "cuda" if cuda else "cpu"
    if precision == "auto":
        precision = "bf16" if cuda and bf16_supported else "fp32"
    if precision == "fp32":
        return Placement(device, "float32", None)
    half = {"bf16": "bfloat16", "fp16": "float16"}[precision]
    return Placement(device, half if cuda else "float32", half)


def base_bytes(device: str, half_precision: bool) -> int:
    """Bytes per frozen base weight for a trainer on `device` (decide_placement's rule)."""
    return HALF_BYTES if half_precision and device.startswith("cuda") else FULL_BYTES


def current_placement(precision: str) -> Placement:
    """decide_placement for the GPU torch sees here (cuda:0 of the worker's visible devices)."""
    import torch

    cuda = torch.cuda.is_available()
    return decide_placement(precision, cuda=cuda, bf16_supported=cuda and torch.cuda.is_bf16_supported())
