"""Embedded engine: tokens/s at 1, 8 and 16 concurrent requests on SmolLM2-135M.

    python -m bench engine
    python -m bench.bench_engine [--max-tokens 64] [--levels 1 8 16] [--dtype float32]

Starts the real embedded backend (`transformers serve --continuous-batching` on 127.0.0.1, through
`agora_cli.serving.Serving`, exactly as `agora run` does), then at each concurrency level sends
that many identical-length requests at once through a ClientPool and divides the completion
tokens the server reports by the wall time of the batch. Target: 16 concurrent >= 5x one request.

The CPU is shared, so each row's note also gives the CPU seconds that processes outside this
benchmark's process tree used during its batch (Linux): a figure near zero means the row measured
the engine alone; re-run when it is not. The backend runs with its defaults (one torch thread,
bfloat16 on CPUs with native bf16), i.e. what `agora run` launches.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import SMOL, Row, setup_env

PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm. Use many sentences."


def engine_config(run_dir: Path, dtype: str | None = None) -> Any:
    """The backend's defaults; `dtype` overrides only the serving dtype (to compare with float32)."""
    from agora_cli.config import config_from_dict

    backend: dict[str, Any] = {"kind": "transformers"}
    if dtype:
        backend["dtype"] = dtype
    return config_from_dict(
        {
            "name": "bench-engine",
            "run_dir": str(run_dir),
            "backends": {"embedded": backend},
            "members": [
                {"name": n, "model": SMOL, "max_concurrency": 64, "request_timeout_s": 600}
                for n in ("smol-a", "smol-b")  # one base: one server, as in configs/tiny-transformers.yaml
            ],
            "ablations": {"lora": False},
        }
    )


def _cpu_seconds() -> tuple[float, float] | None:
    """(busy CPU s of the whole machine, CPU s of this process and its descendants), or None."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = (sum(fields) - fields[3] - fields[4]) / ticks  # minus idle and iowait
        stats = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    f = (d / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue  # exited meanwhile
                # utime + stime + the same for children it has reaped
                stats[int(d.name)] = (int(f[1]), sum(int(x) for x in f[11:15]) / ticks)
    except (OSError, ValueError, IndexError):
        return None
    ours, frontier = {os.getpid()}, [os.getpid()]
    while frontier:  # the servers are children (or grandchildren) of this process
        parent = frontier.pop()
        kids = [pid for pid, (ppid, _) in stats.items() if ppid == parent and pid not in ours]
        ours.update(kids)
        frontier += kids
    return busy, sum(stats[pid][1] for pid in ours if pid in stats)


async def _batch(pool: Any, n: int, max_tokens: int) -> tuple[int, float, float | None]:
    """(completion tokens, wall s, CPU s used by other processes meanwhile) of one batch."""
    from agora_cli.config import Sampling

    sampling = Sampling(temperature=0.6, top_p=0.95, max_tokens=max_tokens)
    messages = [{"role": "user", "content": PROMPT}]
    before = _cpu_seconds()
    t0 = time.perf_counter()
    results = await asyncio.gather(*(pool.chat("smol-a", messages, sampling) for _ in range(n)))
    wall = time.perf_counter() - t0
    after = _cpu_seconds()
    others = None
    if before and after:
        others = max(0.0, (after[0] - before[0]) - (after[1] - before[1]))
    return sum(r.completion_tokens for r in results), wall, others


def measure(
    levels: list[int], max_tokens: int, dtype: str | None = None
) -> dict[int, tuple[int, float, float | None]]:
    """level -> (completion tokens, wall s, others' CPU s) of one batch of `level` requests."""
    from agora_cli.paths import RunPaths
    from agora_cli.serving import Serving

    out: dict[int, tuple[int, float, float | None]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = engine_config(Path(tmp) / "run", dtype)
        paths = RunPaths(Path(tmp) / "run").ensure()
        with Serving(cfg, paths) as serving:
            pool = serving.client_pool()

            async def go() -> None:
                await _batch(pool, 2, 8)  # warm the batching path once
                for n in levels:
                    out[n] = await _batch(pool, n, max_tokens)
                    print(f"engine: {n} concurrent: {out[n][0]} tokens in {out[n][1]:.1f} s", flush=True)
                await pool.aclose()

            asyncio.run(go())
    return out


def run(levels: tuple[int, ...] = (1, 8, 16), max_tokens: int = 64, dtype: str | None = None) -> list[Row]:
    setup_env()
    m = measure(list(levels), max_tokens, dtype)
    tps = {n: tokens / wall for n, (tokens, wall, _) in m.items()}
    base = tps[levels[0]]
    rows = []
    for n in levels:
        tokens, wall, others = m[n]
        ratio = tps[n] / base
        if n == 16:
            target, met = ">= 5x one request", ratio >= 5
        else:
            target, met = "-", None
        note = f"{tokens} tokens in {wall:.1f} s"
        if others is not None:
            note += f", other processes {others:.1f} CPU s"
        rows.append(
            Row("engine", f"tokens/s at {n} concurrent", f"{tps[n]:.1f} ({ratio:.1f}x)", target, met, note)
        )
    rows[-1].note += f"; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--dtype", default=None, help="serving dtype (default: the backend's choice)")
    args = ap.parse_args()
    from bench.common import table

    print(table(run(tuple(args.levels), args.max_tokens, args.dtype)))


if __name__ == "__main__":
    main()
