"""External anchoring scores a member again only when what is evaluated changed (its live
adapter); otherwise the last score is reused and recorded as reused, and Eq. 2's F_t is computed
on real changes only. Real loop steps against the scripted fake server, real anchor and grader."""

from __future__ import annotations

import pytest

from agora_cli import steps as db
from agora_cli.config import config_from_dict
from agora_cli.evaluation.anchor import run_anchor
from agora_cli.events import EventBus
from agora_cli.loop import run_step
from agora_cli.protocol.prompts import Prompts
from agora_cli.store import Store
from agora_cli.training.round_store import live_versions
from tests.fakes.ensemble import MEMBERS, config_dict, make_pool, responder
from tests.fakes.openai_server import FakeOpenAI

pytestmark = pytest.mark.timeout(180)


def _swap(store: Store, member: str, version: int) -> None:
    """What a training round records when a member's new adapter goes live."""
    store.execute(
        "INSERT INTO adapters(member, version, path, status, model_name, created_at, live_at) "
        "VALUES (?, ?, ?, 'live', ?, 0, 0)", (member, version, f"/x/{member}/v{version}",
                                               f"{member}-v{version}"))


async def test_anchor_runs_only_for_members_whose_adapter_changed(run_dir):
    with FakeOpenAI(responder()) as fake:
        data = config_dict(fake.url, run_dir, anchor_every=1)
        data["ablations"]["external_anchor"] = True
        data["evaluation"] = {"calibration_size": 2, "benchmarks": ["gsm8k"]}
        cfg = config_from_dict(data)
        store = Store(run_dir / "agora.sqlite")
        pool = make_pool(cfg, fake.url)
        evaluated: list[list[str]] = []
        try:
            for t in range(4):
                if t == 2:
                    _swap(store, "beta", 1)  # a hot-swap between steps 1 and 2
                n = len(fake.requests)
                await run_step(cfg, store, pool, Prompts(), EventBus(),
                               versions=lambda: live_versions(store), anchor=run_anchor)
                evaluated.append(sorted(r.model for r in fake.requests[n:]
                                        if r.role == "evaluate"))
        finally:
            await pool.aclose()

    # Step 0 scores everyone; step 1 nothing changed: no anchor request at all; step 2 only the
    # swapped member (2 calibration items); step 3 nothing changed again.
    assert evaluated == [sorted(MEMBERS * 2), [], ["beta", "beta"], []]
    rows = {(r["step"], r["member"]): r for r in store.query("SELECT * FROM anchors")}
    for m in MEMBERS:
        assert rows[(0, m)]["reused_from"] is None
        assert rows[(1, m)]["reused_from"] == 0  # recorded, as reused from step 0
        assert rows[(1, m)]["score"] == rows[(0, m)]["score"]
    assert rows[(2, "beta")]["reused_from"] is None and rows[(2, "beta")]["adapter_version"] == 1
    assert rows[(2, "alpha")]["reused_from"] == 0 and rows[(3, "beta")]["reused_from"] == 2
    assert (0, "@majority") in rows and (2, "@majority") not in rows  # needs every member anew
    # Eq. 2 on real changes only: steps 0 and 2 are the anchor history's two points.
    f_t = [r["f_t"] for r in store.query("SELECT f_t FROM steps ORDER BY step")]
    assert f_t[0] is None and f_t[1] is None and f_t[2] is not None and f_t[3] is None
    assert len(db.anchor_history(store)) == 2
    store.close()
