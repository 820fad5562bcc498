"""vLLM on CPU: every server on vLLM's `auto` cores against each server on its own cores.

    python -m bench binding
    python -m bench.bench_binding [--per-member 8] [--max-tokens 96]

vLLM's `auto` OpenMP binding (`VLLM_CPU_OMP_THREADS_BIND=auto`, vllm/utils/ompmultiprocessing.py)
reserves a core for an engine's scheduler and binds its compute threads to the rest, the same
cores for every engine: on a 2-core machine both of configs/tiny.yaml's servers (SmolLM2 for
smol-a and smol-b, Gemma-3-270M for gemma) compute on core 0. agora now gives each server of a
backend its own cores (`serving/vllm.py: cpu_binding`). Both settings run here one after the
other, each with fresh servers started exactly as `agora run configs/tiny.yaml` starts them, on
the same two loads (greedy, so both settings produce the same tokens):

1. decode: every member answers `--per-member` GSM8K problems at once (all members together);
2. prefill: every member reads `--per-member` long prompts (six worked problems of context
   before each question, distinct per request, so the prefix cache cannot help) and writes 8
   tokens.

Reported: wall time per load and setting, tokens/s, and the ratio (per-server / auto); the CPU
flags and load average, since absolute speeds differ between machines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, Row, cpu_flags, gsm8k_train, setup_env, table

SETTINGS = (("vLLM auto", {"VLLM_CPU_OMP_THREADS_BIND": "auto"}), ("per-server cores", {}))


def loads(per_member: int) -> dict[str, list[str]]:
    """name -> the prompts one member sends (every member sends the same ones)."""
    rows = gsm8k_train()
    solve = [
        f"Solve step by step, then give the answer as \\boxed{{N}}.\n\n{p['problem']}"
        for p in rows[:per_member]
    ]
    context = rows[100 : 100 + 6 * per_member]
    prefill = []
    for i, p in enumerate(rows[50 : 50 + per_member]):
        shots = "\n\n".join(
            f"Problem: {c['problem']}\nSolution: {c['solution']}" for c in context[6 * i : 6 * i + 6]
        )
        prefill.append(f"{shots}\n\nProblem: {p['problem']}\nSolution:")
    return {"decode": solve, "prefill": prefill}


async def _load(pool: Any, members: list[str], prompts: list[str], max_tokens: int) -> tuple[float, int, int]:
    """(wall s, prompt tokens, completion tokens) of every member sending every prompt at once."""
    from agora_cli.config import Sampling

    sampling = Sampling(temperature=0.0, top_p=1.0, max_tokens=max_tokens)
    t0 = time.perf_counter()
    results = await asyncio.gather(
        *(pool.chat(m, [{"role": "user", "content": p}], sampling) for p in prompts for m in members)
    )
    wall = time.perf_counter() - t0
    return (wall, sum(r.prompt_tokens for r in results), sum(r.completion_tokens for r in results))


def measure(env: dict[str, str], per_member: int, max_tokens: int) -> dict[str, Any]:
    from agora_cli.config import config_from_dict, load_config
    from agora_cli.paths import RunPaths
    from agora_cli.serving import Serving

    base = load_config(REPO / "configs" / "tiny.yaml").model_dump(mode="json")
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base["run_dir"] = str(Path(tmp) / "run")
        base["backends"]["vllm"]["env"] = {**base["backends"]["vllm"]["env"], **env}
        for m in base["members"]:
            m["max_concurrency"], m["request_timeout_s"] = 64, 1800
        cfg = config_from_dict(base)
        paths = RunPaths(cfg.run_dir).ensure()
        members = [m.name for m in cfg.members]
        with Serving(cfg, paths) as serving:
            pool = serving.client_pool()

            async def go() -> None:
                await _load(pool, members, ["Say hi."], 4)  # warm every server once
                for name, prompts in loads(per_member).items():
                    out[name] = await _load(pool, members, prompts, max_tokens if name == "decode" else 8)
                    print(
                        f"{env or 'per-server'}: {name}: {out[name][0]:.1f} s, "
                        f"{out[name][1]} prompt + {out[name][2]} completion tokens",
                        flush=True,
                    )
                await pool.aclose()

            asyncio.run(go())
    return out


def run(per_member: int = 8, max_tokens: int = 96) -> list[Row]:
    setup_env()
    load_at_start = os.getloadavg()[0]
    got = {label: measure(env, per_member, max_tokens) for label, env in SETTINGS}
    (a_label, a), (b_label, b) = got.items()
    rows = []
    for name, tokens in (("decode", 2), ("prefill", 1)):
        what = "completion" if tokens == 2 else "prompt"
        ta, tb = a[name][tokens] / a[name][0], b[name][tokens] / b[name][0]
        rows.append(
            Row(
                "binding",
                f"{name}: {what} tokens/s, {a_label} -> {b_label}",
                f"{ta:.1f} -> {tb:.1f} ({tb / ta:.2f}x)",
                "-",
                None,
                f"wall {a[name][0]:.1f} -> {b[name][0]:.1f} s; tokens {a[name][1]}+"
                f"{a[name][2]} / {b[name][1]}+{b[name][2]}",
            )
        )
    rows[-1].note += (
        f"; CPU flags {cpu_flags()}, {os.cpu_count()} cores, load average "
        f"{load_at_start:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-member", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=96)
    args = ap.parse_args()
    print(table(run(args.per_member, args.max_tokens)))


if __name__ == "__main__":
    main()
