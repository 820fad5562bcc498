"""GPU check: agora's trainer and the transformers backend on the paper's architectures, one card.

    scripts/gpu-check.sh [--tiny] [--out FILE]      (or: PYTHONPATH=. python -m bench.gpu_check)

Needs only what a bare CUDA image has: torch, transformers, peft (accelerate unused), plus
pydantic, PyYAML and jinja2, which agora's config and training modules import (torch brings
jinja2; transformers' serving needs fastapi/uvicorn: without them the serving rows say so and the
training rows still run). No model hub, no SGLang or vLLM, nothing installed: every model is built
from a config.json shipped in tests/data/model_configs/ with random bf16 weights.

Per architecture (Qwen3-1.7B, Phi-4-mini, Gemma-3-4B's text model, Llama-3.2-1B), with the
trainer's own code (placement, attach_lora, the fused LoRA kernel, the chunked loss, the memory
plan):
  - loss: the chunked loss (loss.py) against `model(**batch).loss`, eval mode, as the step runs
    (bf16 autocast on a GPU);
  - gradients: every LoRA gradient of the fused kernel + chunked loss against PEFT's modules +
    the model's own loss (dropout off so both see the same function), relative L2 error;
  - speed and memory at the paper's batch (8 x 2048 tokens, a quarter of each row a masked
    prompt): tokens/s, model FLOPs utilisation, and the measured peak against memory.py's
    estimate (goal: within 15%).
Then `transformers serve` (the embedded backend's command) on a random-weight Llama-3.2-1B with a
made-up word-level tokenizer: output tokens/s at 1 and 16 concurrent requests.

`--tiny` (automatic without CUDA) runs the same code paths on CPU with every architecture shrunk
(hidden 64, 2 layers, vocab 512) and the GPU's dtypes (bf16 base, bf16 autocast) in a minute or
two; its memory column is the process's max RSS, not comparable to the estimate.
tests/test_gpu_check.py runs it so the script cannot rot. Prints one table; writes a JSON of the
figures with the card's name. Exit 1 when a loss or gradient check fails.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "tests" / "data" / "model_configs"
ARCHS = ["qwen3-1.7b", "phi-4-mini", "gemma-3-4b", "llama-3.2-1b"]
SERVE_ARCH = "llama-3.2-1b"
LOSS_RTOL = 1e-2  # bf16: the two losses round apart by ~1e-3; a wrong head is off by far more
GRAD_RTOL = 5e-2  # relative L2 error of each LoRA gradient under bf16 (a broken one is off by O(1))
# Dense bf16 tensor peak by card (vendor figures, no sparsity): for the FLOPs utilisation.
PEAK_BF16 = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}


# --------------------------------------------------------------------------- models


def load_config(arch: str, tiny: bool) -> dict[str, Any]:
    """The shipped config.json; `tiny` shrinks dims (the architecture's other fields stay)."""
    cfg = json.loads((CONFIGS / arch / "config.json").read_text())
    cfg.pop("_agora_note", None)
    if tiny:
        heads, kv, head_dim = 4, 2, 16
        cfg.update(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=heads,
            num_key_value_heads=kv,
            vocab_size=512,
        )
        if "head_dim" in cfg:
            cfg["head_dim"] = head_dim
        if "query_pre_attn_scalar" in cfg:
            cfg["query_pre_attn_scalar"] = head_dim
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if key in cfg:
                cfg[key] = [1, 2] if isinstance(cfg[key], list) else 1
        rope = cfg.get("rope_scaling") or {}
        if rope.get("type") == "longrope":  # one factor per rotated frequency pair
            n = int(head_dim * cfg.get("partial_rotary_factor", 1.0)) // 2
            rope["long_factor"], rope["short_factor"] = [1.0] * n, [1.0] * n
    return cfg


def build_model(config: dict[str, Any], dtype: torch.dtype, device: str) -> Any:
    """A causal LM from `config` with random weights, built on `device` in `dtype`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**config)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model


def random_batch(vocab: int, rows: int, seq: int, device: str, seed: int) -> dict[str, torch.Tensor]:
    """Token ids with the first quarter of each row a masked prompt (label -100)."""
    from agora_cli.training.data import IGNORE_INDEX

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (rows, seq), generator=g)
    labels = ids.clone()
    labels[:, : seq // 4] = IGNORE_INDEX
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return {k: v.to(device) for k, v in batch.items()}


# --------------------------------------------------------------------------- checks


def lora_grads(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}


def set_dropout(model: Any, p: float) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p


def check_loss_and_grads(
    model: Any, batch: dict[str, torch.Tensor], place: Any, chunk: int
) -> dict[str, Any]:
    """The chunked loss vs the model's own (eval); fused+chunked gradients vs PEFT's + the model's."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    from agora_cli.training.lora_kernel import _lora_linear_class
    from agora_cli.training.loss import StepLoss

    dtype = getattr(torch, place.autocast) if place.autocast else torch.float32
    step = StepLoss(model, chunk)

    def autocast() -> Any:
        return torch.autocast(place.device, dtype=dtype, enabled=place.half)

    model.eval()
    with torch.no_grad(), autocast():
        ours, theirs = float(step(**batch)), float(model(**batch).loss)
    model.train()
    set_dropout(model, 0.0)  # the same function on both sides; the masks are the unit tests'
    fused_class = _lora_linear_class()
    fused = [m for m in model.modules() if type(m) is fused_class]
    with autocast():
        loss = step(**batch)
    loss.backward()
    g_fused = lora_grads(model)
    model.zero_grad(set_to_none=True)
    for m in fused:  # PEFT's own modules, the model's own loss
        m.__class__ = LoraLinear
    with autocast():
        loss = model(**batch).loss
    loss.backward()
    g_peft = lora_grads(model)
    model.zero_grad(set_to_none=True)
    for m in fused:
        m.__class__ = fused_class
    set_dropout(model, 0.05)
    errors = [float((g_fused[n] - g_peft[n]).norm() / g_peft[n].norm().clamp_min(1e-30)) for n in g_peft]
    return {
        "loss_chunked": round(ours, 5),
        "loss_model": round(theirs, 5),
        "loss_ok": abs(ours - theirs) <= LOSS_RTOL * max(1.0, abs(theirs)),
        "fused_layers": len(fused),
        "grad_tensors": len(g_peft),
        "grad_max_rel_err": round(max(errors), 5) if errors else None,
        "grad_ok": bool(errors) and g_fused.keys() == g_peft.keys() and max(errors) <= GRAD_RTOL,
    }


def model_flops_per_token(dims: Any, seq: int, supervised: float) -> float:
    """LoRA step FLOPs per token with a frozen base (the utilisation's numerator):
    linear layers 2 x params forward + 2 x params for the input gradients (no weight gradients);
    causal attention 2 x seq x q-width per layer forward (QK^T and PV over half the keys on
    average), 3x that with its backward; the head on the supervised rows, forward and backward.
    Recomputation under checkpointing is not counted (it is overhead, not model work)."""
    q, kv = dims.heads * dims.head_dim, dims.kv_heads * dims.head_dim
    linear = dims.layers * (2 * dims.hidden * q + 2 * dims.hidden * kv + 3 * dims.hidden * dims.intermediate)
    attention = dims.layers * 2 * seq * q
    head = dims.hidden * dims.vocab * supervised
    return 4 * linear + 3 * attention + 4 * head


def peak_flops(device_name: str) -> float | None:
    for key, value in PEAK_BF16.items():  # "H100 PCIe" before "H100"
        if key in device_name:
            return value
    return None


def peak_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_arch(arch: str, tiny: bool, place: Any, device_name: str) -> dict[str, Any]:
    """One architecture through the trainer's code: checks, then timed steps at the batch."""
    from agora_cli.config import Training
    from agora_cli.training.lora_kernel import fuse_lora_layers
    from agora_cli.training.loss import StepLoss
    from agora_cli.training.memory import dims_from_config, plan_memory
    from agora_cli.training.trainer import attach_lora, enable_checkpointing

    rows, seq = (2, 128) if tiny else (8, 2048)
    config = load_config(arch, tiny)
    dims = dims_from_config(config)
    if dims is None:
        raise ValueError(f"{arch}: config.json lacks a dimension memory.py needs")
    cfg = Training(r=16, alpha=32, dropout=0.05, batch_size=rows, max_length=seq)
    plan = plan_memory(
        dims, cfg, batch_size=rows, seq_len=seq, half_precision=place.half, device=place.device
    )
    t0 = time.perf_counter()
    model = build_model(config, getattr(torch, place.base_dtype), place.device)
    model = attach_lora(model, cfg.model_copy(update={"gradient_checkpointing": False}))
    for name, p in model.named_parameters():  # B starts at 0: A's gradient would be 0
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    fuse_lora_layers(model)
    build_s = time.perf_counter() - t0
    row: dict[str, Any] = {"arch": arch, "batch": f"{rows}x{seq}", "build_s": round(build_s, 1)}
    check_rows, check_seq = (2, 64) if tiny else (1, 512)
    row.update(
        check_loss_and_grads(
            model, random_batch(dims.vocab, check_rows, check_seq, place.device, 1), place, 64
        )
    )
    if plan.checkpointing:
        enable_checkpointing(model)
    step = StepLoss(model, cfg.loss_chunk_tokens)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    dtype = getattr(torch, place.autocast) if place.autocast else torch.float32
    batch = random_batch(dims.vocab, rows, seq, place.device, 2)
    gc.collect()
    if place.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    steps = 2 if tiny else 3
    losses = []
    for i in range(steps + 1):  # the first is a warm-up (kernels, allocator), not timed
        if i == 1:
            if place.device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
        with torch.autocast(place.device, dtype=dtype, enabled=place.half):
            loss = step(**batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    if place.device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t
    tokens = rows * seq * steps
    tps = tokens / elapsed
    flops = model_flops_per_token(dims, seq, 0.75) * tps
    peak = peak_flops(device_name) if place.device == "cuda" else None
    measured = peak_mb(place.device)
    estimated = plan.estimate.total / 2**20
    row.update(
        checkpointing=plan.checkpointing,
        losses_finite=all(math.isfinite(x) for x in losses),
        tokens_per_s=round(tps, 1),
        tflops=round(flops / 1e12, 3),
        mfu=round(flops / peak, 4) if peak else None,
        peak_mb=round(measured, 1),
        estimated_mb=round(estimated, 1),
        peak_over_estimate=round(measured / estimated, 3),
        # CPU: the process's max RSS (every model built so far), not one step's peak
        peak_kind="cuda max_memory_allocated" if place.device == "cuda" else "process max RSS",
    )
    del model, step, optimizer, batch
    gc.collect()
    if place.device == "cuda":
        torch.cuda.empty_cache()
    return row


# --------------------------------------------------------------------------- serving


def word_tokenizer(vocab: int, eos_id: int) -> Any:
    """A word-level tokenizer over made-up words w0..w{vocab-1} with a chatml template: enough
    for `transformers serve` to tokenise prompts and decode any id a random model emits."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"w{i}": i for i in range(vocab)}
    tok = Tokenizer(models.WordLevel(words, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="w0", eos_token=f"w{eos_id}", pad_token="w0"
    )
    fast.chat_template = (
        "{% for m in messages %}{{ 'w3 ' + m['content'] + ' w4 ' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'w5 ' }}{% endif %}"
    )
    return fast


def serve_command(model_dir: str, port: int, device: str, dtype: str) -> tuple[list[str], str]:
    """agora's embedded-backend command for `model_dir` (its own builder when it imports)."""
    try:
        from agora_cli.config import TransformersBackend
        from agora_cli.paths import RunPaths
        from agora_cli.serving.transformers import TransformersServing

        backend = TransformersBackend(device=device, dtype=dtype, cb_num_blocks=64, cb_max_batch_tokens=4096)
        serving = TransformersServing("gpu-check", backend, [], RunPaths(Path(model_dir).parent / "run"))
        return serving._command(model_dir, port), "agora_cli.serving.transformers"
    except ImportError as e:  # a missing dependency of agora's serving layer: the same flags
        cmd = [sys.executable, "-m", "transformers.cli.transformers", "serve", model_dir]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--device", device, "--dtype", dtype]
        cmd += ["--continuous-batching", "--cb-num-blocks", "64", "--cb-max-batch-tokens", "4096"]
        return cmd, f"inline (agora's serving did not import: {e})"


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (agora's serving helpers may not import in a bare image)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chat(url: str, model: str, max_tokens: int) -> int:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": " ".join(f"w{i}" for i in range(10, 74))}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
    }
    req = urllib.request.Request(
        f"{url}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.loads(r.read())
    usage = out.get("usage") or {}
    return int(usage.get("completion_tokens") or len(out["choices"][0]["message"]["content"].split()))


def serve_rows(tiny: bool, place: Any, work: Path) -> list[dict[str, Any]]:
    """`transformers serve` on a random-weight model: output tokens/s at 1 and 16 requests."""
    config = load_config(SERVE_ARCH, tiny)
    model_dir = work / SERVE_ARCH
    dtype = "bfloat16" if place.device == "cuda" else "float32"
    model = build_model(config, getattr(torch, dtype), "cpu")
    model.generation_config.eos_token_id = None  # random weights: decode to max_tokens
    model.save_pretrained(str(model_dir))
    del model
    word_tokenizer(config["vocab_size"], 2).save_pretrained(str(model_dir))
    port = free_port()
    cmd, source = serve_command(str(model_dir), port, place.device, dtype)
    url = f"http://127.0.0.1:{port}"
    log = open(work / "serve.log", "w")  # noqa: SIM115
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    rows: list[dict[str, Any]] = []
    max_tokens = 32 if tiny else 256
    try:
        deadline = time.monotonic() + (300 if tiny else 240)
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=5).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = (work / "serve.log").read_text()[-600:]
                    return [
                        {"serve": SERVE_ARCH, "error": f"server did not start: {tail}", "command": source}
                    ]
                time.sleep(1)
        chat(url, str(model_dir), 4)  # warm-up: the batching manager and kernels
        for concurrency in (1, 16):
            counts: list[int] = []
            errors: list[str] = []

            def one(counts: list[int] = counts, errors: list[str] = errors) -> None:
                try:
                    counts.append(chat(url, str(model_dir), max_tokens))
                except Exception as e:  # noqa: BLE001 - recorded in the row
                    errors.append(repr(e))

            threads = [threading.Thread(target=one) for _ in range(concurrency)]
            t = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            elapsed = time.perf_counter() - t
            rows.append(
                {
                    "serve": SERVE_ARCH,
                    "concurrency": concurrency,
                    "requests_ok": len(counts),
                    "output_tokens": sum(counts),
                    "tokens_per_s": round(sum(counts) / elapsed, 1),
                    "command": source,
                    **({"error": errors[0]} if errors else {}),
                }
            )
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    return rows


# --------------------------------------------------------------------------- main


def cpu_name() -> str:
    """The CPU's model name (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.partition(':')[2].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def table(result: dict[str, Any]) -> str:
    lines = [f"gpu-check on {result['device']} ({result['mode']}), {result['elapsed_s']} s"]
    head = f"{'arch':<14}{'batch':>9}{'loss ok':>8}{'grad err':>10}{'tok/s':>11}{'MFU':>7}"
    lines += [head + f"{'peak MB':>11}{'est MB':>10}{'peak/est':>9}{'ckpt':>6}"]
    for r in result["training"]:
        if "error" in r:
            lines.append(f"{r['arch']:<14} ERROR {r['error']}")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        lines.append(
            f"{r['arch']:<14}{r['batch']:>9}{str(r['loss_ok']):>8}{r['grad_max_rel_err']:>10.1e}"
            f"{r['tokens_per_s']:>11.1f}{mfu:>7}{r['peak_mb']:>11.0f}{r['estimated_mb']:>10.0f}"
            f"{r['peak_over_estimate']:>9.2f}{'on' if r['checkpointing'] else 'off':>6}"
        )
    for r in result["serving"]:
        if "concurrency" in r:
            lines.append(
                f"serve {r['serve']:<14} {r['concurrency']:>2} concurrent: {r['tokens_per_s']:>9.1f} tok/s "
                f"({r['requests_ok']} ok{', ' + r['error'] if 'error' in r else ''})"
            )
        else:
            lines.append(f"serve {r['serve']}: {r.get('error')}")
    lines.append(f"checks passed: {result['checks_ok']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from agora_cli.training.placement import Placement, current_placement

    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="shrunk models on CPU (automatic without CUDA)")
    parser.add_argument("--out", default=None, help="JSON file (default bench/gpu-check-<mode>.json)")
    parser.add_argument("--archs", nargs="*", default=ARCHS, choices=ARCHS)
    parser.add_argument("--no-serve", action="store_true", help="skip the serving rows")
    args = parser.parse_args(argv)
    tiny = args.tiny or not torch.cuda.is_available()
    if tiny:
        torch.set_num_threads(min(4, os.cpu_count() or 1))
    # Tiny: the GPU's dtypes on the CPU (a bf16 base under bf16 autocast), so the CPU run goes
    # through the code a GPU run takes, not the CPU trainer's float32 path.
    place = Placement("cpu", "bfloat16", "bfloat16") if tiny else current_placement("auto")
    device_name = torch.cuda.get_device_name() if place.device == "cuda" else cpu_name()
    t0 = time.perf_counter()
    training = []
    for arch in args.archs:
        try:
            training.append(train_arch(arch, tiny, place, device_name))
        except Exception as e:  # noqa: BLE001 - one architecture's failure is a row, not the end
            training.append({"arch": arch, "error": f"{type(e).__name__}: {e}"})
    serving: list[dict[str, Any]] = []
    if not args.no_serve:
        with tempfile.TemporaryDirectory(prefix="agora-gpu-check-") as work:
            try:
                serving = serve_rows(tiny, place, Path(work))
            except Exception as e:  # noqa: BLE001
                serving = [{"serve": SERVE_ARCH, "error": f"{type(e).__name__}: {e}"}]
    ok = all(
        r.get("loss_ok") and r.get("grad_ok") and r.get("losses_finite") and r.get("fused_layers", 0) > 0
        for r in training
    )
    result = {
        "device": device_name,
        "mode": "tiny" if tiny else "full",
        "placement": {"device": place.device, "base_dtype": place.base_dtype, "autocast": place.autocast},
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "elapsed_s": round(time.perf_counter() - t0, 1),
        "training": training,
        "serving": serving,
        "checks_ok": ok,
    }
    out = Path(args.out or REPO / "bench" / f"gpu-check-{result['mode']}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
