"""Orchestrator against its limit: one real loop step on a fake server with fixed latency.

    python -m bench orchestrator [--latency 0.5] [--problems 16]

FakeOpenAI (real HTTP on 127.0.0.1, in its own process so its CPU is not counted) answers every
request after exactly `latency` seconds, with unbounded concurrency. One step of the real loop
(3 members, `openai` backend, `ablations.lora: false`, no anchoring) runs against it; then the
same requests (same members, messages and sampling) are replayed one at a time through the same
ClientPool: that is the sequential baseline. Reported:

- step wall / critical path, where the critical path is (dependent phases the step actually went
  through) x latency: generate -> solve -> verify -> vote -> explain is 5 phases;
- speedup = sequential replay wall / step wall;
- orchestrator CPU per request = process CPU time during the step / requests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Row, setup_env

PHASES = ("generate", "solve", "verify", "vote", "explain")  # each depends on the one before


def bench_config(url: str, run_dir: Path, problems: int) -> Any:
    from agora_cli.config import config_from_dict

    return config_from_dict(
        {
            "name": "bench-orchestrator",
            "run_dir": str(run_dir),
            "backends": {"fake": {"kind": "openai", "base_url": url}},
            "members": [
                {"name": m, "model": m, "backend": "fake", "max_concurrency": 1024, "request_timeout_s": 60}
                for m in ("alpha", "beta", "gamma")
            ],
            "protocol": {
                "problems_per_step": problems,
                "generators_per_step": 3,
                "seed_examples": 2,
                "anchor_every": 1000,
                "buffer_threshold": 100000,
            },
            "ablations": {"lora": False, "external_anchor": False},
        }
    )


async def _replay(pool: Any, calls: list[tuple]) -> float:
    t0 = time.perf_counter()
    for member, messages, sampling, role in calls:
        await pool.chat(member, messages, sampling, role=role)
    return time.perf_counter() - t0


def measure(latency_s: float, problems: int) -> dict[str, Any]:
    """Run one step and its sequential replay; return the raw figures."""
    from agora_cli.commit import init_ratings
    from agora_cli.events import EventBus
    from agora_cli.loop import run_step
    from agora_cli.protocol.prompts import Prompts
    from agora_cli.runner import prepare_run_dir
    from agora_cli.serving import Serving
    from agora_cli.store import Store
    from bench.fake_server import FakeProcess

    roles: list[str] = []  # of the step's requests (the replay's are not recorded)
    recording = [True]
    bus = EventBus(
        [lambda e: roles.append(e["role"]) if e["kind"] == "request_done" and recording[0] else None]
    )
    with FakeProcess(latency_s) as fake, tempfile.TemporaryDirectory() as tmp:
        cfg = bench_config(fake.url, Path(tmp) / "run", problems)
        paths = prepare_run_dir(cfg)
        prompts = Prompts(cfg.prompts_dir)
        with Store(paths.store) as store, Serving(cfg, paths, bus) as serving:
            init_ratings(cfg, store)
            pool = serving.client_pool()
            calls: list[tuple] = []
            chat = pool.chat

            async def recording_chat(member, messages, sampling, *, role="chat"):  # noqa: ANN001
                calls.append((member, messages, sampling, role))
                return await chat(member, messages, sampling, role=role)

            pool.chat = recording_chat  # type: ignore[method-assign]

            async def both() -> tuple[Any, float, float, float]:
                cpu0, t0 = time.process_time(), time.perf_counter()
                fx = await run_step(cfg, store, pool, prompts, bus)
                wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
                pool.chat = chat  # type: ignore[method-assign]
                recording[0] = False
                seq = await _replay(pool, calls)
                await pool.aclose()
                return fx, wall, cpu, seq

            fx, wall, cpu, seq = asyncio.run(both())
            failures = sum(u.failures for u in pool.usage.values())
    phases = [p for p in PHASES if p in roles]
    return {
        "latency_s": latency_s,
        "problems": problems,
        "requests": len(calls),
        "by_role": {p: roles.count(p) for p in PHASES},
        "phases": phases,
        "wall_s": wall,
        "step_wall_s": fx.wall_s,
        "cpu_s": cpu,
        "sequential_s": seq,
        "failures": failures,
        "solutions": fx.counts.get("solutions"),
    }


def run(latency_s: float = 0.5, problems: int = 16) -> list[Row]:
    setup_env()
    m = measure(latency_s, problems)
    bound = len(m["phases"]) * latency_s
    ratio = m["wall_s"] / bound
    speedup = m["sequential_s"] / m["wall_s"]
    cpu_ms = 1000 * m["cpu_s"] / m["requests"]
    roles = ", ".join(f"{k} {v}" for k, v in m["by_role"].items())
    load = os.getloadavg()[0]
    name = "orchestrator"
    return [
        Row(
            name,
            "step wall / critical path",
            f"{ratio:.2f}",
            "<= 1.3",
            ratio <= 1.3,
            f"{m['wall_s']:.2f} s vs {len(m['phases'])} phases x {latency_s} s; "
            f"{m['requests']} requests ({roles})",
        ),
        Row(
            name,
            "speedup over sequential",
            f"{speedup:.1f}x",
            ">= 20x",
            speedup >= 20,
            f"same {m['requests']} requests replayed one at a time through the same ClientPool: "
            f"{m['sequential_s']:.1f} s",
        ),
        Row(
            name,
            "orchestrator CPU / request",
            f"{cpu_ms:.2f} ms",
            "-",
            None,
            f"process CPU {m['cpu_s']:.2f} s during the step (fake server in its own process); "
            f"{m['failures']} failed requests; machine load average {load:.1f} on "
            f"{os.cpu_count()} cores",
        ),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.5)
    ap.add_argument("--problems", type=int, default=16)
    args = ap.parse_args()
    from bench.common import table

    print(table(run(args.latency, args.problems)))


if __name__ == "__main__":
    main()
