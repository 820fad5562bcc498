"""A resumed anchor step asks only the calibration requests it has not stored: each graded anchor
answer is kept as it arrives (like every other request of an open step), so an anchor interrupted
after some answers does not ask them again. Real anchor and grader, scripted fake server."""

from __future__ import annotations

import pytest

from agora_cli import anchor_store
from agora_cli.config import config_from_dict
from agora_cli.evaluation.anchor import run_anchor
from agora_cli.events import EventBus
from agora_cli.loop import anchor_scores
from agora_cli.protocol.prompts import Prompts
from agora_cli.store import Store
from tests.fakes.ensemble import MEMBERS, config_dict, make_pool, responder
from tests.fakes.openai_server import FakeOpenAI

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
ITEMS = 3


def evaluate_requests(fake: FakeOpenAI) -> int:
    return sum(r.role == "evaluate" for r in fake.requests)


async def test_a_resumed_anchor_asks_only_what_it_has_not_stored(run_dir):
    with FakeOpenAI(responder()) as fake:
        data = config_dict(fake.url, run_dir, anchor_every=1)
        data["ablations"]["external_anchor"] = True
        data["evaluation"] = {"calibration_size": ITEMS, "benchmarks": ["gsm8k"], "grade_workers": 1}
        cfg = config_from_dict(data)
        store = Store(run_dir / "agora.sqlite")
        pool = make_pool(cfg, fake.url)
        bus, t = EventBus(), 0
        try:
            await anchor_scores(cfg, store, pool, Prompts(), bus, t, MEMBERS, dict, run_anchor)
            assert len(anchor_store.anchor_items(store, t)) == ITEMS * len(MEMBERS)
            # An interruption before the anchor finished: its scores were never written, and of
            # its answers only the first five were (the others were still in flight).
            store.execute("DELETE FROM anchors WHERE step = ?", (t,))
            store.execute("DELETE FROM anchor_items WHERE rowid > 5")
            kept = anchor_store.anchor_items(store, t)
            asked = evaluate_requests(fake)
            await anchor_scores(cfg, store, pool, Prompts(), bus, t, MEMBERS, dict, run_anchor)
            again = [r for r in fake.requests[asked:] if r.role == "evaluate"]
        finally:
            await pool.aclose()
    # The resumed anchor asked exactly the answers it had not stored, and scored everyone on all.
    assert len(kept) == 5 and len(again) == ITEMS * len(MEMBERS) - 5
    asked_again = {(r.model, r.user) for r in again}
    assert len(asked_again) == len(again)  # none twice
    assert {
        m: n for m, (_, n) in anchor_store.step_anchors(store, t).items() if m in MEMBERS
    } == dict.fromkeys(MEMBERS, ITEMS)
    assert len(anchor_store.anchor_items(store, t)) == ITEMS * len(MEMBERS)
    store.close()
