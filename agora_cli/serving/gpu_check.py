"""The GPU memory plan checked before anything starts (`agora validate`, and each GPU backend
before it launches its first server): `config/gpu.py`'s plan with the trainer's peak from
`training/memory.py`, on the GPU size given or read from CUDA device 0."""

from __future__ import annotations

from agora_cli.config import Config, gpu_plan
from agora_cli.errors import ConfigError


def check_gpu_memory(cfg: Config, source: str, gpu_gib: float | None) -> list[str]:
    """The GPU memory plan of `cfg` on GPUs of `gpu_gib` (None: this machine's GPU 0 when CUDA
    is present, else nothing to check); raises ConfigError (exit 2) with every server that does
    not fit, returns the plan's lines otherwise."""
    from agora_cli.training.memory import find_dims, plan_memory

    if gpu_gib is None:
        gpu_gib = cuda_memory_gib()
        if gpu_gib is None:
            return []
    peaks = []
    for m in cfg.members:
        dims = find_dims(m.model)
        if dims is not None:
            plan = plan_memory(
                dims,
                cfg.training,
                batch_size=cfg.training.batch_size,
                seq_len=cfg.training.max_length,
                half_precision=cfg.training.precision != "fp32",
                device="cuda",
                budget_gb=float("inf"),
            )
            peaks.append((plan.plain.total_gb, plan.checkpointed.total_gb))
    peak = (max(p for p, _ in peaks), max(c for _, c in peaks)) if peaks else None
    fits, problems, notes = gpu_plan(cfg, gpu_gib, peak)
    if problems:
        raise ConfigError(source, problems)
    return [f.line() for f in fits] + notes


def cuda_memory_gib() -> float | None:
    """Total memory of CUDA device 0 in GiB, or None without CUDA."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        return torch.cuda.get_device_properties(0).total_memory / 2**30
    except Exception:  # no torch, or a driver that cannot answer: no plan to check
        return None
