"""One real step of the tiny trio on each CPU engine: configs/tiny-transformers.yaml vs configs/tiny.yaml.

    python -m bench step
    python -m bench.bench_step [--engines transformers vllm] [--steps 1]

For each engine, one after the other: `agora serve CONFIG` starts the servers (timed: server start),
`agora run CONFIG --steps N` attaches to them and runs the protocol (same seed, same prompts, same
sampling; timed from the run's first `step_started` to its last `step_committed` event), then the
servers stop. Reported per engine: step wall time, requests and completion tokens (from the run's
`request_done` events), failed requests, and for vLLM the prefix-cache hit rate of its servers
(`/metrics`): the protocol's prompts share long prefixes (demonstrations, elite examples, the
problem) that vLLM's prefix cache reuses and `transformers serve` recomputes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_engines import prefix_cache_hit_rate
from bench.common import REPO, Row, setup_env

CONFIGS = {"transformers": "configs/tiny-transformers.yaml", "vllm": "configs/tiny.yaml"}


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def measure(engine: str, steps: int) -> dict[str, Any]:
    config = CONFIGS[engine]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        t0 = time.perf_counter()
        serve = subprocess.Popen(
            [sys.executable, "-m", "agora_cli", "serve", config, "--run-dir", str(run_dir)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            servers = run_dir / "servers.json"
            while not servers.exists():
                if serve.poll() is not None:
                    raise RuntimeError(f"agora serve {config} exited: {serve.stderr.read()[-800:]}")
                time.sleep(1)
            start_s = time.perf_counter() - t0
            print(f"step: {engine} servers up in {start_s:.0f} s", flush=True)
            p = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "agora_cli",
                    "run",
                    config,
                    "--steps",
                    str(steps),
                    "--run-dir",
                    str(run_dir),
                ],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=3600,
            )
            if p.returncode != 0:
                raise RuntimeError(f"agora run {config} failed: {(p.stdout + p.stderr)[-800:]}")
            state = json.loads(servers.read_text())
            urls = [u for b in state["backends"].values() for u in b.get("servers", {}).values()]
            cache = [prefix_cache_hit_rate(u) for u in urls] if engine == "vllm" else []
        finally:
            serve.send_signal(signal.SIGINT)
            try:
                serve.wait(timeout=120)
            except subprocess.TimeoutExpired:
                serve.kill()
        events = _events(run_dir / "events.jsonl")
    started = [e["t"] for e in events if e["kind"] == "step_started"]
    committed = [e["t"] for e in events if e["kind"] == "step_committed"]
    done = [e for e in events if e["kind"] == "request_done"]
    hits = [c for c in cache if c]
    return {
        "start_s": start_s,
        "step_s": max(committed) - min(started),
        "requests": len(done),
        "failed": sum(1 for e in done if not e.get("ok")),
        "tokens": sum(e.get("completion_tokens") or 0 for e in done),
        "prefix_cache": (sum(h for h, _ in hits), sum(q for _, q in hits)) if hits else None,
    }


def run(engines: tuple[str, ...] = ("transformers", "vllm"), steps: int = 1) -> list[Row]:
    setup_env()
    got = {e: measure(e, steps) for e in engines}
    rows = []
    for e, m in got.items():
        note = (
            f"{m['requests']} requests, {m['tokens']} completion tokens, {m['failed']} failed; "
            f"server start {m['start_s']:.0f} s"
        )
        if m["prefix_cache"]:
            hits, queries = m["prefix_cache"]
            note += f"; prefix cache hit {hits / queries:.0%} of {queries:.0f} prompt tokens"
        rows.append(
            Row(
                "step",
                f"tiny trio, {steps} step(s) on {e} ({CONFIGS[e]})",
                f"{m['step_s']:.0f} s",
                "-",
                None,
                note,
            )
        )
    if len(got) == 2:
        a, b = (got[e]["step_s"] for e in engines)
        rows.append(
            Row(
                "step",
                f"{engines[1]} vs {engines[0]} step wall time",
                f"{a / b:.2f}x",
                "-",
                None,
                f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
            )
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--steps", type=int, default=1)
    args = ap.parse_args()
    from bench.common import table

    print(table(run(tuple(args.engines), args.steps)))


if __name__ == "__main__":
    main()
