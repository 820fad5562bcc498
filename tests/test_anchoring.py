"""External anchoring scores every member at every anchor step, whether or not its adapter
changed (so FEM and the strategy have a signal without LoRA rounds); the isolated control's FEM
reads each member's own history; a failed anchor is missing, not 0.0. Real loop steps against the
scripted fake server, real anchor and grader."""

from __future__ import annotations

import pytest

from agora_cli import anchor_store
from agora_cli import steps as db
from agora_cli.config import config_from_dict
from agora_cli.evaluation.anchor import run_anchor
from agora_cli.events import EventBus
from agora_cli.loop import run_step
from agora_cli.protocol.prompts import Prompts
from agora_cli.store import Store
from agora_cli.training.round_store import live_versions
from tests.fakes.ensemble import MEMBERS, config_dict, make_pool, responder
from tests.fakes.openai_server import FakeOpenAI, Reply

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _swap(store: Store, member: str, version: int) -> None:
    """What a training round records when a member's new adapter goes live."""
    store.execute(
        "INSERT INTO adapters(member, version, path, status, model_name, created_at, live_at) "
        "VALUES (?, ?, ?, 'live', ?, 0, 0)",
        (member, version, f"/x/{member}/v{version}", f"{member}-v{version}"),
    )


async def test_anchor_scores_every_member_whether_or_not_its_adapter_changed(run_dir):
    with FakeOpenAI(responder()) as fake:
        data = config_dict(fake.url, run_dir, anchor_every=1)
        data["ablations"]["external_anchor"] = True
        data["evaluation"] = {"calibration_size": 2, "benchmarks": ["gsm8k"]}
        cfg = config_from_dict(data)
        store = Store(run_dir / "agora.sqlite")
        pool = make_pool(cfg, fake.url)
        evaluated: list[list[str]] = []
        try:
            for t in range(3):
                if t == 2:
                    _swap(store, "beta", 1)  # a hot-swap between steps 1 and 2
                n = len(fake.requests)
                await run_step(
                    cfg,
                    store,
                    pool,
                    Prompts(),
                    EventBus(),
                    versions=lambda: live_versions(store),
                    anchor=run_anchor,
                )
                evaluated.append(sorted(r.model for r in fake.requests[n:] if r.role == "evaluate"))
        finally:
            await pool.aclose()

    # Every step scores every member on both calibration items, changed adapter or not.
    assert evaluated == [sorted(MEMBERS * 2)] * 3
    rows = {(r["step"], r["member"]): r for r in store.query("SELECT * FROM anchors")}
    assert all(rows[(t, m)]["reused_from"] is None for t in range(3) for m in MEMBERS)
    assert rows[(2, "beta")]["adapter_version"] == 1 and rows[(1, "beta")]["adapter_version"] == 0
    assert all((t, "@majority") in rows for t in range(3))
    # Eq. 2 from the second anchor on, with no adapter change needed.
    f_t = [r["f_t"] for r in store.query("SELECT f_t FROM steps ORDER BY step")]
    assert f_t[0] is None and f_t[1] is not None and f_t[2] is not None
    assert len(anchor_store.anchor_history(store)) == 3
    store.close()


async def test_isolated_fem_reads_only_the_members_own_anchor_history(run_dir):
    """The isolated control's FEM (Eq. 2) per member: beta answers all 8 calibration items at
    the first two anchors and none at the third, a drop beyond noise, so its F_t at step 2 comes
    from its own history ((1 - 0) / 1)^2 and its d_{t+1}^i is Eq. 1's value lowered by
    difficulty_gain * F_t; alpha (always wrong, which would pull a pooled history's peak down)
    and gamma (always right) have no drop: F_t 0 and Eq. 1's value."""
    from agora_cli.datasets import load_dev_split
    from agora_cli.protocol.difficulty import next_difficulty

    gold = {it.problem: it.answer for it in load_dev_split("gsm8k")}
    base, beta_evals = responder(), []

    def reply(req):  # noqa: ANN001, ANN202
        if req.role != "evaluate":
            return base(req)
        answer = next(a for q, a in gold.items() if q in req.user)
        if req.model == "alpha":
            answer = f"{answer}1"
        if req.model == "beta":
            beta_evals.append(answer)
            if len(beta_evals) > 16:  # beta's third anchor (step 2): every item wrong
                answer = f"{answer}1"
        return f"The answer is \\boxed{{{answer}}}"

    with FakeOpenAI(reply) as fake:
        data = config_dict(fake.url, run_dir, anchor_every=1, mode="isolated", self_consistency_samples=3)
        data["protocol"]["surprise"] = {"min_n": 8}
        data["ablations"]["external_anchor"] = True
        data["evaluation"] = {"calibration_size": 8, "benchmarks": ["gsm8k"]}
        cfg = config_from_dict(data)
        store = Store(run_dir / "agora.sqlite")
        pool = make_pool(cfg, fake.url)
        try:
            for _ in range(3):
                await run_step(
                    cfg,
                    store,
                    pool,
                    Prompts(),
                    EventBus(),
                    versions=lambda: live_versions(store),
                    anchor=run_anchor,
                )
        finally:
            await pool.aclose()
    assert len(beta_evals) == 24
    assert anchor_store.member_anchor_history(store, "beta") == [1.0, 1.0, 0.0]
    rows = db.member_steps(store, 2)
    p = cfg.protocol
    for m, row in rows.items():
        eq1 = next_difficulty(
            row.difficulty, row.v_t, row.v_target, p.difficulty, cfg.ablations.difficulty_control
        )
        if m == "beta":
            assert row.f_t == pytest.approx((1.0 / (1.0 + p.surprise.eps)) ** 2)
            want = min(
                max(eq1 - p.surprise.difficulty_gain * row.f_t, p.difficulty.d_min), p.difficulty.d_max
            )
            assert row.next_difficulty == pytest.approx(want) and want < eq1
        else:
            assert row.f_t == pytest.approx(0.0) and row.next_difficulty == pytest.approx(eq1)
    info = store.scalar("SELECT info FROM steps WHERE step = 2")
    assert '"fem_members": {"beta"' in info  # the move is recorded, for beta alone
    store.close()


async def test_failed_anchor_is_missing_and_left_out_of_the_ensemble_mean(run_dir):
    """Every calibration request of gamma fails: no anchor row is stored for it (not a 0.0), the
    ensemble's anchor mean (Eq. 2's input) is over alpha and beta alone, and the next anchor
    step scores gamma again."""
    from agora_cli.datasets import load_dev_split

    gold = {it.problem: it.answer for it in load_dev_split("gsm8k")}
    base, gamma_fails = responder(), [True]

    def reply(req):  # noqa: ANN001, ANN202
        if req.role != "evaluate":
            return base(req)
        if req.model == "gamma" and gamma_fails[0]:
            return Reply(status=400, text="adapter failed to load")
        return f"The answer is \\boxed{{{next(a for q, a in gold.items() if q in req.user)}}}"

    with FakeOpenAI(reply) as fake:
        data = config_dict(fake.url, run_dir, anchor_every=1)
        data["ablations"]["external_anchor"] = True
        data["evaluation"] = {"calibration_size": 2, "benchmarks": ["gsm8k"]}
        cfg = config_from_dict(data)
        store = Store(run_dir / "agora.sqlite")
        pool = make_pool(cfg, fake.url)
        try:
            for t in range(2):
                gamma_fails[0] = t == 0
                await run_step(
                    cfg,
                    store,
                    pool,
                    Prompts(),
                    EventBus(),
                    versions=lambda: live_versions(store),
                    anchor=run_anchor,
                )
        finally:
            await pool.aclose()
    rows = {(r["step"], r["member"]): r for r in store.query("SELECT * FROM anchors")}
    assert set(rows) == {(0, "alpha"), (0, "beta"), (1, "alpha"), (1, "beta"), (1, "gamma"), (1, "@majority")}
    assert rows[(1, "gamma")]["reused_from"] is None and rows[(1, "gamma")]["n"] == 2  # scored anew
    # Everyone answers every calibration item right: a stored 0.0 for gamma would pull step 0's
    # ensemble mean down to 2/3.
    assert rows[(0, "alpha")]["score"] == rows[(0, "beta")]["score"] == 1.0
    assert anchor_store.anchor_history(store) == [1.0, 1.0]
    store.close()
