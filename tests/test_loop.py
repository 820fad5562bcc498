"""The AGORA loop against a scripted OpenAI-compatible server (real HTTP): exact row counts."""

from __future__ import annotations

import json
import threading

import pytest

from agora_cli import runner
from agora_cli.commit import replay_ratings
from agora_cli.events import EventBus, read_events
from agora_cli.paths import RunPaths
from agora_cli.steps import latest_ratings
from agora_cli.store import Store
from tests.fakes.ensemble import MEMBERS, make_config, responder
from tests.fakes.openai_server import FakeOpenAI, Reply

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def count(store: Store, table: str, where: str = "1") -> int:
    return store.scalar(f"SELECT COUNT(*) FROM {table} WHERE {where}")


def test_two_steps_write_consistent_rows(run_dir):
    with FakeOpenAI(responder(), latency_s=0.01) as fake:
        cfg = make_config(fake.url, run_dir)
        result = runner.run(cfg, run_dir=run_dir, steps=2)
    assert result.committed == 2
    with Store(RunPaths(run_dir).store) as store:
        assert count(store, "steps", "committed_at IS NOT NULL") == 2
        assert count(store, "problems", "status = 'ok'") == 4  # 2 per step
        assert count(store, "solutions") == 12  # every member solves every problem
        assert count(store, "verdicts") == 24  # each solution by the 2 other members
        # gamma's solutions are rejected by both verifiers; alpha's and beta's pass.
        assert count(store, "solutions", "correct = 1") == 8
        assert count(store, "solutions", "correct = 1 AND member = 'gamma'") == 0
        # One pair of correct solutions per problem, 3 voters each, alpha always preferred.
        assert count(store, "votes") == 12
        assert count(store, "votes v JOIN solutions s ON s.id = v.winner", "s.member = 'alpha'") == 12
        # 3 initial rating rows + 2 per decisive vote.
        assert count(store, "ratings") == 3 + 2 * 12
        latest = latest_ratings(store)
        replay = replay_ratings(store, MEMBERS)
        for m in MEMBERS:
            assert latest[m] == pytest.approx(replay[m])
        assert latest["alpha"][0] > 25 > latest["beta"][0]
        assert latest["gamma"][0] == pytest.approx(25.0)
        # Eq. 4: only alpha ends above the ensemble mean, so only its solutions are buffered.
        assert count(store, "buffer") == 4
        assert count(store, "buffer", "member = 'alpha'") == 4
        bad = store.scalar(
            "SELECT COUNT(*) FROM buffer b JOIN solutions s ON s.id = b.solution_id WHERE s.correct IS NOT 1"
        )
        assert bad == 0
        # H_t: each problem's best solution is a candidate; top 3 kept, explanations for entrants.
        # Step 1's two candidates tie step 0's entries and ties go to the newer: 2 + 2 entered.
        assert count(store, "elite", "active = 1") == 3
        assert count(store, "explanations") == 4
        # Step 1's solvers saw step 0's elite entries as few-shot examples.
        shown = [
            json.loads(r["elite_ids"]) for r in store.query("SELECT elite_ids FROM solutions WHERE step = 1")
        ]
        assert all(len(ids) == 2 for ids in shown)
        rows = store.query("SELECT * FROM steps ORDER BY step")
        assert [r["n_solutions"] for r in rows] == [6, 6]
        assert [r["n_correct"] for r in rows] == [4, 4]
        assert rows[0]["v_t"] == pytest.approx(4 / 6)
        # Eq. 1: d_1 = d_0 + alpha * (V_0 - V_target) with V_target = target_init.
        assert rows[0]["next_difficulty"] == pytest.approx(1.0 + 0.05 * (4 / 6 - 0.5))
        assert rows[1]["difficulty"] == pytest.approx(rows[0]["next_difficulty"])
        assert all(r["wall_s"] > 0 and r["request_s"] > 0 for r in rows)
    kinds = [e["kind"] for e in read_events(RunPaths(run_dir).events)]
    assert kinds.count("step_committed") == 2
    assert kinds[-1] == "run_finished"


def test_pipelining_slow_problem_does_not_block_another(run_dir):
    """Problem Q0's solves are held until Q1's three votes have arrived: a loop that made Q1
    wait for Q0 would never send them (the hold times out and the order check fails)."""
    from tests.fakes.ensemble import problem_of

    script = responder()
    q1_voted = threading.Event()
    q1_votes: list[int] = []

    def hold_q0(req):  # noqa: ANN001, ANN202
        out = script(req)
        if req.role == "vote" and problem_of(req) == 1:
            q1_votes.append(1)
            if len(q1_votes) == 3:
                q1_voted.set()
        if req.role == "solve" and problem_of(req) == 0:
            return Reply(text=out, wait_for=q1_voted, wait_timeout_s=30)
        return out

    with FakeOpenAI(hold_q0, latency_s=0.01) as fake:
        cfg = make_config(fake.url, run_dir)
        runner.run(cfg, run_dir=run_dir, steps=1, bus=EventBus())
        reqs = list(fake.requests)
    assert q1_voted.is_set()

    order = [(r.role, problem_of(r)) for r in reqs]
    first_q0_verify = order.index(("verify", 0))
    q1_late = [i for i, (role, p) in enumerate(order) if p == 1 and role in ("verify", "vote")]
    assert len(q1_late) == 6 + 3  # 3 solutions x 2 verifiers, 1 pair x 3 voters
    assert max(q1_late) < first_q0_verify


def test_rerun_with_more_steps_continues(run_dir):
    with FakeOpenAI(responder(), latency_s=0.0) as fake:
        cfg = make_config(fake.url, run_dir)
        runner.run(cfg, run_dir=run_dir, steps=1)
        n1 = len(fake.requests)
        runner.run(cfg, run_dir=run_dir, steps=1)  # already there: nothing asked
        assert len(fake.requests) == n1
        second = runner.run(cfg, run_dir=run_dir, steps=2)
    assert second.first_step == 1 and second.committed == 2


def test_resume_with_changed_config_is_refused(run_dir):
    from agora_cli.errors import ConfigError

    with FakeOpenAI(responder(), latency_s=0.0) as fake:
        runner.run(make_config(fake.url, run_dir), run_dir=run_dir, steps=1)
        changed = make_config(fake.url, run_dir, elite_k=5)
        with pytest.raises(ConfigError, match="protocol.elite_k"):
            runner.run(changed, run_dir=run_dir, steps=2)
        result = runner.run(changed, run_dir=run_dir, steps=2, force=True)
    assert result.committed == 2


def test_isolated_mode(run_dir):
    with FakeOpenAI(responder(), latency_s=0.0) as fake:
        cfg = make_config(fake.url, run_dir, mode="isolated", self_consistency_samples=3)
        runner.run(cfg, run_dir=run_dir, steps=1)
        roles = {r.role for r in fake.requests}
    assert roles == {"generate", "solve"}  # no peers: no verification, no votes
    with Store(RunPaths(run_dir).store) as store:
        assert count(store, "solutions") == 2 * 3 * 3  # problems x members x samples
        assert count(store, "solutions", "correct = 1") == 18  # all agree on 7
        assert count(store, "buffer") == 2 * 3  # one majority sample per (problem, member)
        assert count(store, "votes") == count(store, "verdicts") == 0


def test_all_generated_problems_dropped_falls_back_to_seeds(run_dir):
    base = responder()

    def garbage_generator(req):
        return "hi" if req.role == "generate" else base(req)

    with FakeOpenAI(garbage_generator, latency_s=0.0) as fake:
        runner.run(make_config(fake.url, run_dir), run_dir=run_dir, steps=1)
    with Store(RunPaths(run_dir).store) as store:
        # Each of the 2 slots is asked 1 + problem_retries (2) times, then filled from the pool.
        assert count(store, "problems", "status = 'dropped'") == 2 * 3
        assert count(store, "problems", "status = 'ok' AND author = 'seed'") == 2
        assert count(store, "solutions") == 6
        assert store.scalar("SELECT n_problems FROM steps WHERE step = 0") == 2


def test_anchor_rows_and_surprise(run_dir):
    from agora_cli.config import config_from_dict
    from tests.fakes.ensemble import config_dict

    with FakeOpenAI(responder(), latency_s=0.0) as fake:
        data = config_dict(fake.url, run_dir, anchor_every=1)
        data["ablations"]["external_anchor"] = True
        data["evaluation"] = {"calibration_size": 2, "benchmarks": ["gsm8k"]}
        runner.run(config_from_dict(data), run_dir=run_dir, steps=2)
        evaluated = len(fake.requests_for("evaluate"))
    # 2 items x 3 members at step 0; no adapter changed (LoRA off), so step 1 reuses the scores.
    assert evaluated == 2 * 3
    with Store(RunPaths(run_dir).store) as store:
        rows = store.query("SELECT step, member, n, reused_from FROM anchors ORDER BY step, member")
        assert [(r["step"], r["member"], r["reused_from"]) for r in rows] == [
            (0, m, None) for m in sorted(["@majority", *MEMBERS])
        ] + [(1, m, 0) for m in MEMBERS]
        assert all(r["n"] == 2 for r in rows)
        f = [r["f_t"] for r in store.query("SELECT f_t FROM steps ORDER BY step")]
        assert f == [None, None]  # Eq. 2 needs two anchors that measured a change


def test_unreachable_member_stops_the_step_uncommitted_then_resumes(run_dir):
    from agora_cli.errors import EndpointError
    from tests.fakes.openai_server import Reply

    script = responder()

    def votes_down(req):
        return Reply(text="overloaded", status=503) if req.role == "vote" else script(req)

    with FakeOpenAI(votes_down, latency_s=0.0) as fake:
        cfg = make_config(fake.url, run_dir)
        with pytest.raises(EndpointError):
            runner.run(cfg, run_dir=run_dir, steps=1)
        with Store(RunPaths(run_dir).store) as store:
            assert store.last_committed_step() == -1  # nothing sealed with votes missing
            assert count(store, "solutions") == 6 and count(store, "verdicts") == 12
            assert count(store, "votes") == 0
        n = len(fake.requests)
        fake.responder = script
        runner.run(cfg, run_dir=run_dir, steps=1)
        resumed_roles = {r.role for r in fake.requests[n:]}
    assert resumed_roles == {"vote", "explain"}  # stored solutions and verdicts were reused
    with Store(RunPaths(run_dir).store) as store:
        assert count(store, "votes") == 6 and count(store, "buffer") == 2


def test_dropped_problems_are_asked_again_from_another_member(run_dir):
    """Only gamma writes usable problems: every slot still gets one, asked again of another
    member after a drop, so the step solves `problems_per_step` problems."""
    base = responder()

    def only_gamma_generates(req):
        if req.role == "generate" and req.model != "gamma":
            return "hi"
        return base(req)

    with FakeOpenAI(only_gamma_generates, latency_s=0.0) as fake:
        cfg = make_config(fake.url, run_dir, problems_per_step=4)
        runner.run(cfg, run_dir=run_dir, steps=1)
        asked = [r.model for r in fake.requests if r.role == "generate"]
    with Store(RunPaths(run_dir).store) as store:
        assert store.scalar("SELECT n_problems FROM steps WHERE step = 0") == 4
        kept = store.query("SELECT author, slot FROM problems WHERE status = 'ok' ORDER BY slot")
        assert [r["author"] for r in kept] == ["gamma"] * 4
        assert [r["slot"] for r in kept] == [0, 1, 2, 3]
        assert count(store, "solutions") == 4 * 3
        dropped = store.query(
            "SELECT author, COUNT(*) AS n FROM problems WHERE status = 'dropped' GROUP BY author"
        )
    assert len(asked) == 4 + sum(r["n"] for r in dropped)
    assert {r["author"] for r in dropped} <= {"alpha", "beta"}
