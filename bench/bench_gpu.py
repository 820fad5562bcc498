"""GPU section: SGLang throughput where CUDA and SGLang are present; a clear skip line elsewhere.

    python -m bench gpu [--config configs/homogeneous-1b.yaml] [--max-tokens 256]

Starts the config's SGLang servers through `Serving` (as `agora run` would), then measures
tokens/s for one member at 1, 16 and 64 concurrent requests (target: 64 concurrent >= 10x one).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import tempfile
import time
from pathlib import Path

from bench.common import REPO, Row, setup_env, skipped


def unavailable() -> str | None:
    """Why the GPU section cannot run here, or None when it can."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    if importlib.util.find_spec("sglang") is None:
        return "SGLang is not installed (pip install 'sglang[all]')"
    return None


def run(
    config: str = "configs/homogeneous-1b.yaml", max_tokens: int = 256, levels: tuple[int, ...] = (1, 16, 64)
) -> list[Row]:
    setup_env()
    why = unavailable()
    if why:
        print(f"gpu: skipped: {why}", flush=True)
        return [skipped("gpu", why)]
    from agora_cli.config import Sampling, load_config
    from agora_cli.paths import RunPaths
    from agora_cli.serving import Serving

    cfg = load_config(REPO / config, ["ablations.lora=false"])
    member = cfg.members[0].name
    sampling = Sampling(temperature=0.6, top_p=0.95, max_tokens=max_tokens)
    messages = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
    tps: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp, Serving(cfg, RunPaths(Path(tmp)).ensure()) as srv:
        pool = srv.client_pool()
        pool.limits[member].max_concurrency = max(levels)

        async def go() -> None:
            for n in levels:
                t0 = time.perf_counter()
                rs = await asyncio.gather(*(pool.chat(member, messages, sampling) for _ in range(n)))
                tps[n] = sum(r.completion_tokens for r in rs) / (time.perf_counter() - t0)
            await pool.aclose()

        asyncio.run(go())
    rows = []
    for n in levels:
        ratio = tps[n] / tps[levels[0]]
        last = n == levels[-1]
        rows.append(
            Row(
                "gpu",
                f"{member} tokens/s at {n} concurrent",
                f"{tps[n]:.0f} ({ratio:.1f}x)",
                ">= 10x one request" if last else "-",
                ratio >= 10 if last else None,
                config,
            )
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/homogeneous-1b.yaml")
    ap.add_argument("--max-tokens", type=int, default=256)
    args = ap.parse_args()
    from bench.common import table

    print(table(run(args.config, args.max_tokens)))


if __name__ == "__main__":
    main()
