"""A training round hot-swapped into the real embedded server: the new model answers by name."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agora_cli.config import Sampling, config_from_dict
from agora_cli.events import EventBus
from agora_cli.paths import RunPaths
from agora_cli.serving import Serving
from agora_cli.store import Store
from agora_cli.training.rounds import RoundManager
from tests.test_rounds import SMOL, add_rows


@pytest.mark.e2e
@pytest.mark.timeout(1200)  # hang guard only
def test_round_goes_live_in_the_embedded_server(run_dir: Path) -> None:
    cfg = config_from_dict(
        {
            "name": "rounds-serving",
            "backends": {"embedded": {"kind": "transformers", "cb_num_blocks": 16}},
            "members": [
                {"name": "smol-a", "model": SMOL, "request_timeout_s": 300},
                {"name": "smol-b", "model": SMOL, "request_timeout_s": 300},
            ],
            "protocol": {"buffer_threshold": 2},
            "training": {
                "r": 4,
                "alpha": 8,
                "epochs": 1,
                "batch_size": 2,
                "learning_rate": 1e-3,
                "max_length": 96,
                "max_threads": 2,
            },
        }
    )
    paths = RunPaths(run_dir).ensure()
    events: list[dict] = []
    bus = EventBus([events.append])
    with Store(paths.store) as store, Serving(cfg, paths, bus) as serving:
        base = serving.endpoint("smol-a").model
        add_rows(store, 2)
        rounds = RoundManager(store, cfg, paths, serving, bus, members=["smol-a"])
        try:
            assert rounds.maybe_start(step=0) == 1
            rounds.wait()
        finally:
            rounds.shutdown()
        live = store.one("SELECT version, status, model_name FROM adapters WHERE member='smol-a'")
        assert (live["version"], live["status"]) == (1, "live")
        assert live["model_name"] == serving.endpoint("smol-a").model != base
        assert serving.endpoint("smol-b").model == base  # untouched member keeps the base

        async def ask() -> object:
            pool = serving.client_pool()
            try:
                return await pool.chat(
                    "smol-a",
                    [{"role": "user", "content": "What is 3 + 3?"}],
                    Sampling(temperature=0.0, top_p=1.0, max_tokens=24),
                )
            finally:
                await pool.aclose()

        reply = asyncio.run(ask())
        assert reply.model == live["model_name"] and reply.text.strip()
        swap = [e for e in events if e["kind"] == "adapter_live"]
        assert swap and swap[0]["model_name"] == live["model_name"] and swap[0]["latency_s"] > 0
