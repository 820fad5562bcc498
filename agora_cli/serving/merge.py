"""Merge a PEFT LoRA adapter into a copy of its base weights (the embedded backend's hot-swap).

`transformers serve` cannot load PEFT adapters, so a trained adapter goes live as a merged copy of
the base model served under its own name. The merge runs in a child process (`python -m
agora_cli.serving.merge BASE ADAPTER OUT [PARENT_PID]`) so the orchestrator never holds a second
copy of the weights; `merge_adapter` is the same work in-process. The child exits when its parent
dies (a merge takes tens of seconds and is redone on resume), and a merge killed mid-write leaves
a temporary directory that the next merge into the same member's directory removes.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agora_cli.errors import ServerError
from agora_cli.serving.process import pid_alive

MANIFEST = "agora-merged.json"


def is_merged(out_dir: Path) -> bool:
    """True when `out_dir` is a complete merge (its manifest is written last)."""
    return (out_dir / MANIFEST).exists() and (out_dir / "config.json").exists()


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    """Merge the LoRA in `adapter_dir` into the weights in `base_dir`, saving to `out_dir`.

    PEFT `merge_and_unload` (W' = W + B A * alpha/r), saved as float32 safetensors with the base's
    tokenizer, chat template and generation config. Built in a temporary sibling and renamed into
    place, so a half-written directory is never served; an existing complete merge is reused.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    if is_merged(out_dir):
        return out_dir
    if not (adapter_dir / "adapter_config.json").exists():
        raise ServerError(f"{adapter_dir} is not a PEFT adapter (no adapter_config.json)")
    t0 = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out_dir.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{os.getpid()}-", dir=out_dir.parent))
    try:
        base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
        model = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(str(base_dir)).save_pretrained(tmp)
        try:  # the base's stop tokens (e.g. Gemma's <end_of_turn>) must survive the merge
            GenerationConfig.from_pretrained(str(base_dir)).save_pretrained(tmp)
        except OSError:
            pass
        manifest = {
            "base": str(base_dir),
            "adapter": str(adapter_dir),
            "seconds": round(time.perf_counter() - t0, 2),
            "merged_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        tmp.chmod(0o755)
        if out_dir.exists():  # an incomplete leftover of a killed merge
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _remove_stale_temporaries(parent: Path) -> None:
    """Remove `.<name>.tmp-<pid>-*` left by merges whose process is gone (a killed merge holds a
    full float32 copy of the weights, hundreds of MB)."""
    for stale in glob.glob(str(parent / ".*.tmp-*")):
        m = re.search(r"\.tmp-(\d+)-[^/]*$", stale)
        if m and pid_alive(int(m.group(1))):
            continue  # a merge in progress in another process
        shutil.rmtree(stale, ignore_errors=True)


def merge_in_subprocess(
    base_dir: Path, adapter_dir: Path, out_dir: Path, log: Path, timeout_s: float = 1800
) -> Path:
    """`merge_adapter` in a child process (output appended to `log`); ServerError on failure."""
    if is_merged(out_dir):
        return out_dir
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "agora_cli.serving.merge",
        str(base_dir),
        str(adapter_dir),
        str(out_dir),
        str(os.getpid()),
    ]
    with log.open("ab") as f:
        f.write(f"\n# agora: {' '.join(cmd)}\n".encode())
        f.flush()
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    if rc != 0 or not is_merged(out_dir):
        from agora_cli.serving.process import tail

        raise ServerError(
            f"merging adapter {adapter_dir} into {base_dir} failed (exit {rc}); see {log}:\n{tail(log)}"
        )
    return out_dir


if __name__ == "__main__":  # pragma: no cover - exercised through merge_in_subprocess
    if len(sys.argv) > 4:  # launched by merge_in_subprocess: do not outlive agora
        from agora_cli.serving.guard import exit_with_parent

        exit_with_parent(int(sys.argv[4]))
    base, adapter, out = (Path(a) for a in sys.argv[1:4])
    merge_adapter(base, adapter, out)
