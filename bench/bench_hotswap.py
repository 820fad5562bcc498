"""Hot-swap on the embedded backend: adapter saved -> adapter live, and failures during the swap.

    python -m bench hotswap [--concurrency 4] [--max-tokens 16]

Starts the embedded backend (`transformers serve --continuous-batching`, via `Serving`) for two
SmolLM2 members, saves a LoRA adapter for one of them (PEFT, r=16, all linear layers, as the
trainer saves it), and keeps `concurrency` requests in flight to that member while
`Serving.activate` merges the adapter, starts and warms the merged model's server, switches the
member and retires the old server. Reported: seconds from adapter saved to adapter live (with the
merge's share), requests completed during the swap, failed requests (target 0), and whether the
requests after the swap reached the new model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_engine import engine_config
from bench.common import Row, setup_env


def save_adapter(base_dir: Path, out: Path) -> Path:
    """A PEFT LoRA adapter for `base_dir`, saved like the trainer's (random B so it changes W)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    lora = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        target_modules="all-linear",
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    get_peft_model(model, lora).save_pretrained(str(out))
    return out


def measure(concurrency: int, max_tokens: int) -> dict[str, Any]:
    from agora_cli.config import Sampling
    from agora_cli.models import prepare
    from agora_cli.paths import RunPaths
    from agora_cli.serving import Serving

    with tempfile.TemporaryDirectory() as tmp:
        cfg = engine_config(Path(tmp) / "run")
        paths = RunPaths(Path(tmp) / "run").ensure()
        adapter = save_adapter(prepare(cfg.member("smol-a")), paths.adapter_dir("smol-a", 1))
        with Serving(cfg, paths) as serving:
            pool = serving.client_pool()
            old_model = serving.endpoint("smol-a").model
            sampling = Sampling(temperature=0.6, top_p=0.95, max_tokens=max_tokens)
            messages = [{"role": "user", "content": "Count from one to twenty in words."}]
            done: list[tuple[float, float, str]] = []  # (start, finish, model) of successes
            failed: list[str] = []
            swapping = [True]

            async def client() -> None:
                while swapping[0]:
                    start = time.perf_counter()
                    try:
                        r = await pool.chat("smol-a", messages, sampling)
                        done.append((start, time.perf_counter(), r.model))
                    except Exception as exc:  # noqa: BLE001 - counted: the figure we report
                        failed.append(f"{type(exc).__name__}: {exc}"[:200])

            async def go() -> tuple[float, float]:
                clients = [asyncio.create_task(client()) for _ in range(concurrency)]
                await asyncio.sleep(2.0)  # load is on before the adapter is "saved"
                t0 = time.perf_counter()
                await asyncio.to_thread(serving.activate, "smol-a", adapter, 1)
                t1 = time.perf_counter()
                while sum(1 for s, _, _ in done if s > t1) < concurrency:  # some after the swap
                    await asyncio.sleep(0.2)
                swapping[0] = False
                await asyncio.gather(*clients)
                await pool.aclose()
                return t0, t1

            t0, t1 = asyncio.run(go())
            new_model = serving.endpoint("smol-a").model
        manifest = (
            json.loads((paths.root / "merged" / "smol-a" / "v1" / "agora-merged.json").read_text())
            if (paths.root / "merged" / "smol-a" / "v1").exists()
            else {}
        )
    return {
        "swap_s": t1 - t0,
        "merge_s": manifest.get("seconds"),
        "during": sum(1 for _, f, _ in done if t0 <= f <= t1),
        # Requests sent after the switch must reach the new model (those in flight at the
        # switch finish on the old one, by design).
        "after_new": sum(1 for s, _, m in done if s > t1 and m == new_model),
        "after": sum(1 for s, _, _ in done if s > t1),
        "failed": failed,
        "changed": new_model != old_model,
        "total": len(done),
    }


def run(concurrency: int = 4, max_tokens: int = 16) -> list[Row]:
    setup_env()
    m = measure(concurrency, max_tokens)
    merge = f"merge {m['merge_s']} s, then start + warm the merged server" if m["merge_s"] else ""
    first = m["failed"][0] if m["failed"] else ""
    return [
        Row("hotswap", "adapter saved -> live", f"{m['swap_s']:.1f} s", "-", None, merge),
        Row(
            "hotswap",
            "failed requests during swap",
            str(len(m["failed"])),
            "0",
            not m["failed"],
            f"{m['during']} requests completed during the swap at concurrency {concurrency}; "
            f"{m['after_new']}/{m['after']} requests sent after it reached the new model "
            f"{first}".strip(),
        ),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=16)
    args = ap.parse_args()
    from bench.common import table

    print(table(run(args.concurrency, args.max_tokens)))


if __name__ == "__main__":
    main()
