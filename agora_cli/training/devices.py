"""Which GPUs each member's trainer gets: `members[].train_gpus`, else what the servers leave.

A worker sees only its GPUs (CUDA_VISIBLE_DEVICES), so inside it the first is `cuda:0`.
Unset `train_gpus` are filled in per member:
  - GPUs that no server of this run uses, shared out round-robin over the members (paper-mixed:
    every server on GPU 0 of a 4-GPU box, so the members train on GPUs 1, 2, 3, 1);
  - else the GPU of the member's own server (homogeneous groups: one server per GPU, each
    leaving the share `gpu_memory_for_servers` does not take to its member's trainer);
  - on a machine without GPUs nothing is set: the CPU trainer runs as it always has.
GPU ids are those `cuda_visible_devices` uses for the servers (the machine's numbering).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

from agora_cli.config.gpu import sglang_device


def visible_gpus() -> list[str]:
    """This machine's GPU ids: CUDA_VISIBLE_DEVICES when set, else `nvidia-smi -L`; [] for none."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:  # no NVIDIA driver tools: a CPU machine (no process started to find out)
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(x for x in out.stdout.splitlines() if x.startswith("GPU "))]


def server_gpus(config: Any) -> dict[str, list[str]]:
    """member -> the GPU ids its server runs on ([] for CPU and remote servers)."""
    out: dict[str, list[str]] = {}
    for m in config.members:
        b = config.backend_of(m)
        devices: str | None = None
        if b.kind == "sglang" and b.launch:
            devices = sglang_device(b, m.model, [m]) or "0"
        elif b.kind == "vllm" and b.launch:
            devices = b.env.get("CUDA_VISIBLE_DEVICES", "0")
        elif b.kind == "transformers" and b.device.startswith("cuda"):
            devices = b.device.partition(":")[2] or "0"
        out[m.name] = [d.strip() for d in devices.split(",") if d.strip()] if devices else []
    return out


def training_gpus(config: Any, visible: list[str]) -> dict[str, list[str]]:
    """member -> the GPU ids of its trainer (absent: leave the worker's environment alone)."""
    n = config.training.num_gpus
    out = {m.name: [str(g) for g in m.train_gpus] for m in config.members if m.train_gpus is not None}
    if not visible:
        return out
    servers = server_gpus(config)
    used = {g for gpus in servers.values() for g in gpus}
    free = [g for g in visible if g not in used]
    auto = [m for m in config.members if m.train_gpus is None]
    for i, m in enumerate(auto):
        if free:
            out[m.name] = [free[(i * n + k) % len(free)] for k in range(min(n, len(free)))]
        else:
            own = [g for g in servers[m.name] if g in visible]
            order = own + [g for g in visible if g not in own]
            out[m.name] = order[:n]
    return out


def worker_env(gpus: list[str] | None) -> dict[str, str]:
    """The environment entries that give a worker its GPUs."""
    return {} if gpus is None else {"CUDA_VISIBLE_DEVICES": ",".join(gpus)}
