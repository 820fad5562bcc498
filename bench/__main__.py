"""`python -m bench [NAME ...]`: run benchmarks and print one combined table.

    python -m bench                       # all: orchestrator engine trainer hotswap engines
                                          #      binding step gpu throughput cluster
    python -m bench orchestrator engine   # a selection

Each benchmark prints its own details as it goes; the combined table (benchmark, metric,
measured, target, met?) is printed last and saved to bench/RESULTS.md with the date and the
command. A benchmark that crashes is reported as a row, and the others still run.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench.common import REPO, Row, setup_env, table

NAMES = (
    "orchestrator",
    "engine",
    "trainer",
    "hotswap",
    "engines",
    "binding",
    "step",
    "gpu",
    "throughput",
    "cluster",
)


def trainer() -> list[Row]:
    """`bench/bench_trainer.py` (the trainer's own benchmark), its table parsed into rows."""
    script = REPO / "bench" / "bench_trainer.py"
    if not script.exists():
        return [Row("trainer", "skipped", "-", note="bench/bench_trainer.py is missing")]
    p = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True)
    print(p.stdout, end="")
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
        return [Row("trainer", "failed", "-", note=f"exit {p.returncode}: {tail[0][:200]}")]
    lines = {
        re.split(r"\s{2,}", line.strip())[0]: re.split(r"\s{2,}", line.strip())
        for line in p.stdout.splitlines()
        if line.strip()
    }
    rows = []
    tps = lines.get("tokens/s (non-pad)")
    if tps and len(tps) >= 4:
        ratio = float(tps[3].rstrip("x"))
        rows.append(
            Row(
                "trainer",
                "length-grouped vs padded tokens/s",
                f"{ratio:.2f}x",
                ">= 1.3x",
                ratio >= 1.3,
                f"{tps[1]} -> {tps[2]} tokens/s",
            )
        )
    mem = lines.get("peak memory MB")
    if mem and len(mem) >= 3:
        rows.append(Row("trainer", "peak memory", f"{mem[2]} MB", "-", None, f"padded batches: {mem[1]} MB"))
    if mem and tps and len(mem) >= 5 and len(tps) >= 5:
        rows.append(
            Row(
                "trainer",
                "peak memory with gradient checkpointing",
                f"{mem[4]} MB",
                "-",
                None,
                f"grouped batches; {tps[4]} tokens/s (without: {tps[2]})",
            )
        )
    pad = lines.get("padding tokens")
    if pad and len(pad) >= 3:
        rows.append(Row("trainer", "padding tokens", pad[2], "-", None, f"padded: {pad[1]}"))
    # Loss rows: "loss: <metric>  <model>  <today>  <chunked>  <new>  <new/today>"; today is
    # all positions with PEFT's modules, new the chunked loss with the fused LoRA layer.
    loss = {
        (c[0], c[1]): c
        for c in (re.split(r"\s{2,}", x.strip()) for x in p.stdout.splitlines() if x.startswith("loss: "))
        if len(c) >= 6
    }
    for model in sorted({m for _, m in loss}):
        tps, cpu = loss.get(("loss: tokens/s", model)), loss.get(("loss: tokens/CPU-s", model))
        mem = loss.get(("loss: peak memory MB", model))
        if tps and cpu:
            ratio = float(tps[-1].rstrip("x"))
            rows.append(
                Row(
                    "trainer",
                    f"{model}: new trainer vs today's loss, tokens/s",
                    tps[-1],
                    ">= 1.3x",
                    ratio >= 1.3,
                    f"{tps[2]} -> {tps[-2]} tokens/s; {cpu[2]} -> {cpu[-2]} tokens/CPU-s ({cpu[-1]})",
                )
            )
        if mem:
            rows.append(
                Row(
                    "trainer",
                    f"{model}: peak memory, new trainer vs today's loss",
                    f"{mem[-2]} MB",
                    "lower",
                    float(mem[-2]) < float(mem[2]),
                    f"today: {mem[2]} MB ({mem[-1]})",
                )
            )
    return rows or [Row("trainer", "unparsed", "-", note="see its output above")]


def runners() -> dict[str, Callable[[], list[Row]]]:
    from bench import (
        bench_binding,
        bench_cluster,
        bench_engine,
        bench_engines,
        bench_gpu,
        bench_hotswap,
        bench_orchestrator,
        bench_step,
        bench_throughput,
    )

    return {
        "orchestrator": bench_orchestrator.run,
        "engine": bench_engine.run,
        "trainer": trainer,
        "hotswap": bench_hotswap.run,
        "engines": bench_engines.run,
        "binding": bench_binding.run,
        "step": bench_step.run,
        "gpu": bench_gpu.run,
        "throughput": bench_throughput.run,
        "cluster": bench_cluster.run,
    }


RESULTS_HEADER = (
    "# Benchmark results\n\nEvery dated measurement of agora lives here. `python -m bench` adds each run's"
    " table at the top; measurements taken by hand follow, each with its date and machine. Ratios are"
    " measured side by side in one run; they are not pass/fail tests.\n"
)


def save(rows: list[Row], command: str, seconds: float, path: Path) -> None:
    """Add this run's table to bench/RESULTS.md as a dated section above the earlier ones.

    The file is the only home of agora's dated measurements, so a run never replaces what is there:
    everything from the first `## ` heading on is kept below the new section.
    """
    stamp = time.strftime("%Y-%m-%d %H:%M %Z")
    old = path.read_text() if path.exists() else ""
    at = old.find("\n## ")
    earlier = old[at + 1 :] if at >= 0 else ""
    path.write_text(
        f"{RESULTS_HEADER}\n## `{command}`, {stamp}\n\n{seconds:.0f} s on {os.cpu_count()} CPU cores"
        f" (load average at the end {os.getloadavg()[0]:.1f}).\n\n{table(rows, markdown=True)}\n"
        + (f"\n{earlier}" if earlier else "")
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all of {', '.join(NAMES)})"
    )
    ap.add_argument("--no-save", action="store_true", help="do not write bench/RESULTS.md")
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in NAMES]
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    setup_env()
    names = args.names or list(NAMES)
    table_rows: list[Row] = []
    t0 = time.perf_counter()
    for name in names:
        print(f"== {name}", flush=True)
        try:
            got = runners()[name]()
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the rest
            traceback.print_exc()
            got = [Row(name, "failed", "-", note=f"{type(exc).__name__}: {exc}"[:200])]
        print(table(got), flush=True)
        table_rows += got
    print("\n" + table(table_rows))
    if not args.no_save:
        command = "python -m bench" + "".join(f" {n}" for n in args.names)
        save(table_rows, command, time.perf_counter() - t0, REPO / "bench" / "RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
