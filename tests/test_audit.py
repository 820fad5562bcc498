"""The consensus audit.

Gold-labelled seed-pool probes are mixed into each step, solved and verified like any problem,
and scored against gold after the fact; they never vote, never reach the buffer, the elite
history, V_t or the ratings. Loop-level tests run the scripted fake ensemble (real HTTP).
"""

from __future__ import annotations

import io
import json
import sqlite3

import pytest
from rich.console import Console

from agora_cli import runner
from agora_cli.audit import CONSENSUS, Counts, ProbeSolution, tally
from agora_cli.datasets import BENCHMARK_FILES, load_benchmark, load_dev_split
from agora_cli.datasets import normalize_text as norm
from agora_cli.evaluation.report import build_report
from agora_cli.events import read_events
from agora_cli.paths import RunPaths
from agora_cli.protocol.generate import load_seed_pool
from agora_cli.stats import rate_text, wilson
from agora_cli.store import MIGRATIONS, SCHEMA_VERSION, Store
from agora_cli.ui.live import LiveState
from agora_cli.ui.live import render as live_render
from agora_cli.ui.plain import PlainPrinter
from agora_cli.ui.status import collect
from agora_cli.ui.status import render as status_render
from tests.fakes.ensemble import MEMBERS, make_config, responder
from tests.fakes.openai_server import FakeOpenAI

pytestmark = pytest.mark.timeout(180)
GOLD = {r["problem"]: r["answer"] for r in load_seed_pool("gsm8k_train")}


def shown_problem(user: str) -> str:
    """The problem a solve prompt asks (after its last `Problem: ` label)."""
    return user.rsplit("Problem: ", 1)[-1].split("\nSolution:", 1)[0].strip()


PROBE_MARK = "Working it out gives"


def audit_responder(verify: str = "VALID"):
    """The fake ensemble, except on a seed-pool problem (a probe): alpha and gamma answer its
    gold, beta gold + 1 (wrong), and every verdict on those solutions is `verify` (VALID: an
    approve-all verifier)."""
    base = responder()

    def reply(req):  # noqa: ANN001, ANN202
        if req.role == "verify" and PROBE_MARK in req.user:
            return verify
        if req.role == "solve":
            gold = GOLD.get(shown_problem(req.user))
            if gold is not None:
                answer = str(int(gold) + 1) if req.model == "beta" else gold
                return f"I am {req.model}. {PROBE_MARK} \\boxed{{{answer}}}"
        return base(req)

    return reply


def run(run_dir, probes: int, steps: int = 2, verify: str = "VALID"):
    with FakeOpenAI(audit_responder(verify), latency_s=0.005) as fake:
        cfg = make_config(fake.url, run_dir, audit_probes=probes)
        return runner.run(cfg, run_dir=run_dir, steps=steps)


def protocol_state(run_dir) -> dict:
    """Everything the protocol steers by, keyed by content, not row ids (probe rows shift ids)."""
    with Store(RunPaths(run_dir).store) as s:
        q = s.query
        return {
            "steps": [
                tuple(r)
                for r in q(
                    "SELECT step, difficulty, next_difficulty, v_t, v_target, f_t, strategy, "
                    "n_problems, n_dropped, n_solutions, n_correct, n_buffered FROM steps"
                )
            ],
            "ratings": [tuple(r) for r in q("SELECT step, member, mu, sigma FROM ratings")],
            "buffer": sorted(
                tuple(r)
                for r in q(
                    "SELECT b.step, b.member, p.text FROM buffer b JOIN problems p ON p.id = b.problem_id"
                )
            ),
            # Without texts: among equal scores the newer solution wins, and solution ids (like
            # the fake's problem numbers) follow arrival order, which races.
            "elite": sorted(tuple(r) for r in q("SELECT e.step, e.member, e.score, e.active FROM elite e")),
            "votes": len(q("SELECT id FROM votes")),
            # The fake numbers problems in arrival order, so which slot or author got which
            # text races: texts and authors are compared apart.
            "problems": sorted(
                tuple(r) for r in q("SELECT step, text, status FROM problems WHERE status != 'probe'")
            ),
            "authors": sorted(
                tuple(r) for r in q("SELECT step, author FROM problems WHERE status != 'probe'")
            ),
        }


@pytest.mark.unit
def test_tally_of_an_approve_all_verifier():
    """Approving everything: precision is the solutions' accuracy, recall 1; per verifier too."""
    sols = [
        ProbeSolution(1, "5", "5", True, {"v1": True, "v2": True}),
        ProbeSolution(2, "6", "5", True, {"v1": True, "v2": True}),
        ProbeSolution(3, "5", "5", True, {"v1": True}),
        ProbeSolution(4, None, "5", False, {}),  # no answer: wrong, rejected, no verdicts
    ]
    truth, counts = tally(sols, lambda pairs: [a == g for a, g in pairs])
    assert truth == {1: True, 2: False, 3: True, 4: False}
    assert counts[CONSENSUS] == Counts(tp=2, fp=1, fn=0, tn=1)
    assert counts[CONSENSUS].precision == (2, 3)  # = 2 of 3 answered solutions right
    assert counts[CONSENSUS].recall == (2, 2)
    assert counts["v1"] == Counts(tp=2, fp=1) and counts["v2"] == Counts(tp=1, fp=1)
    # A verifier that rejects what is right loses recall, not precision.
    _, c = tally(
        [ProbeSolution(1, "5", "5", False, {"v": False}), ProbeSolution(2, "6", "5", False, {"v": False})],
        lambda pairs: [a == g for a, g in pairs],
    )
    assert c["v"] == Counts(fn=1, tn=1) and c["v"].recall == (0, 1) and c["v"].precision == (0, 0)


@pytest.mark.integration
def test_probes_are_audited_and_never_steer_the_run(tmp_path):
    """The same scripted run with and without probes: identical protocol state (steps, V_t,
    d_t, ratings, buffer, elite, votes, the step's own problems); with them, probe rows are
    solved and verified by everyone, never voted on, and the audit counts are right."""
    plain, audited = tmp_path / "plain", tmp_path / "audited"
    run(plain, probes=0)
    run(audited, probes=1)
    assert protocol_state(audited) == protocol_state(plain)

    with Store(RunPaths(audited).store) as s:
        probes = s.query(
            "SELECT p.*, pr.seed_id, pr.gold FROM problems p "
            "JOIN probes pr ON pr.problem_id = p.id ORDER BY p.id"
        )
        assert [r["step"] for r in probes] == [0, 1]
        assert {r["status"] for r in probes} == {"probe"}
        pool = {r["id"]: r for r in load_seed_pool("gsm8k_train")}
        for r in probes:  # from the seed pool, with its gold; never a calibration item
            assert pool[r["seed_id"]]["problem"] == r["text"]
            assert pool[r["seed_id"]]["answer"] == r["gold"]
        assert not {r["seed_id"] for r in probes} & {it.id for it in load_dev_split("gsm8k")}
        evaluated = {norm(it.problem) for b in BENCHMARK_FILES for it in load_benchmark(b)}
        assert not {norm(r["text"]) for r in probes} & evaluated
        pids = ",".join(str(r["id"]) for r in probes)
        sols = s.query(f"SELECT * FROM solutions WHERE problem_id IN ({pids})")
        assert len(sols) == 2 * len(MEMBERS)  # every member solved each probe
        assert all(r["correct"] is None for r in sols)  # no consensus outcome of the protocol
        sids = ",".join(str(r["id"]) for r in sols)
        assert s.scalar(f"SELECT COUNT(*) FROM verdicts WHERE solution_id IN ({sids})") == 12
        assert s.scalar(f"SELECT COUNT(*) FROM votes WHERE problem_id IN ({pids})") == 0
        assert s.scalar(f"SELECT COUNT(*) FROM buffer WHERE problem_id IN ({pids})") == 0
        assert s.scalar(f"SELECT COUNT(*) FROM elite WHERE solution_id IN ({sids})") == 0
        assert s.scalar(f"SELECT COUNT(*) FROM explanations WHERE solution_id IN ({sids})") == 0
        # Per step: alpha and gamma right, beta wrong, all approved by everyone.
        audit = {
            (r["step"], r["verifier"]): (r["tp"], r["fp"], r["fn"], r["tn"])
            for r in s.query("SELECT * FROM audit")
        }
        for t in (0, 1):
            assert audit[(t, CONSENSUS)] == (2, 1, 0, 0)
            assert audit[(t, "alpha")] == (1, 1, 0, 0)  # judged beta (wrong) and gamma (right)
            assert audit[(t, "beta")] == (2, 0, 0, 0)
            assert audit[(t, "gamma")] == (1, 1, 0, 0)
        graded = {
            (r["member"], r["truth"], r["approved"])
            for r in s.query(
                "SELECT so.member, a.truth, a.approved FROM audit_solutions a "
                "JOIN solutions so ON so.id = a.solution_id"
            )
        }
        assert graded == {("alpha", 1, 1), ("beta", 0, 1), ("gamma", 1, 1)}
    events = [e for e in read_events(RunPaths(audited).events) if e["kind"] == "consensus_audit"]
    assert [e["step"] for e in events] == [0, 1]
    assert events[0]["precision"] == pytest.approx(2 / 3) and events[0]["recall"] == 1.0
    assert not [e for e in read_events(RunPaths(plain).events) if e["kind"] == "consensus_audit"]
    shown_to_user(audited, plain)


def shown_to_user(audited, plain) -> None:
    """`agora status`, the live view and the plain printer show the run's audit with 95% Wilson
    intervals (2 of 3 approved right over 2 steps -> 4/6); a run without probes shows none."""
    want_p, want_r = rate_text(4, 6), rate_text(4, 4)
    assert want_p.startswith("66.7% [") and want_r.startswith("100.0% [")
    status = text_of(status_render(collect(audited)))
    assert f"consensus audit (6 probe solutions, 2 step(s)): precision {want_p}" in status
    assert f"recall {want_r}" in status
    assert f"verifier beta: precision {rate_text(4, 4)}, recall {rate_text(4, 4)}" in status
    assert "verifier alpha: precision " + rate_text(2, 4) in status
    assert "consensus audit" not in text_of(status_render(collect(plain)))
    state, lines = LiveState(), io.StringIO()
    printer = PlainPrinter(lines)
    for e in read_events(RunPaths(audited).events):
        state.apply(e)
        printer(e)
    assert f"consensus vs gold (6 probe solutions): precision {want_p}, recall {want_r}" in (
        text_of(live_render(state))
    )
    assert f"audit 1 | consensus vs gold, run so far: precision {want_p}" in lines.getvalue()
    reported(audited, plain)


def reported(audited, plain) -> None:
    """`agora report` plots precision and recall per step with Wilson bands and tables the
    run's totals per verifier."""
    md = build_report([audited], audited / "report").read_text()
    assert "### Consensus audit: verification against gold" in md
    assert f"| unanimous consensus | 6 | {rate_text(4, 6)} | {rate_text(4, 4)} |" in md
    assert f"| beta | 4 | {rate_text(4, 4)} |" in md
    fig = audited / "report" / "audited-consensus-audit.png"
    assert fig.stat().st_size > 0
    data = json.loads(fig.with_suffix(".json").read_text())
    assert data["step"] == [0, 1]
    assert data["precision"] == pytest.approx([2 / 3, 2 / 3])
    assert data["precision_n"] == [3, 3] and data["recall"] == [1.0, 1.0]
    lo, hi = wilson(2, 3)
    assert data["precision_lo"] == pytest.approx([lo, lo])
    assert data["precision_hi"] == pytest.approx([hi, hi])
    assert "No consensus audit in this run" in build_report([plain], plain / "report").read_text()
    assert not list((plain / "report").glob("*consensus-audit*"))


def text_of(renderable) -> str:  # noqa: ANN001
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


@pytest.mark.integration
def test_a_verifier_rejecting_everything_has_zero_recall(run_dir):
    run(run_dir, probes=2, steps=1, verify="INVALID")
    with Store(RunPaths(run_dir).store) as s:
        c = s.one("SELECT * FROM audit WHERE verifier = ?", (CONSENSUS,))
        # 2 probes x (alpha right, gamma right, beta wrong), nothing approved.
        assert (c["tp"], c["fp"], c["fn"], c["tn"]) == (0, 0, 4, 2)
        assert s.scalar("SELECT COUNT(*) FROM probes") == 2
        info = json.loads(s.scalar("SELECT info FROM steps WHERE step = 0"))
        assert len(set(info["probes"])) == 2


@pytest.mark.integration
def test_audit_off_writes_no_probe_rows(run_dir):
    run(run_dir, probes=0, steps=1)
    with Store(RunPaths(run_dir).store) as s:
        assert s.scalar("SELECT COUNT(*) FROM problems WHERE status = 'probe'") == 0
        assert s.scalar("SELECT COUNT(*) FROM probes") == 0
        assert s.scalar("SELECT COUNT(*) FROM audit") == 0
        assert "probes" not in json.loads(s.scalar("SELECT info FROM steps WHERE step = 0"))


def write_old_store(path, version: int) -> None:
    """A run store as agora wrote it at schema `version` (its first `version` migrations), with
    one problem row: what an older run directory holds."""
    conn = sqlite3.connect(path)
    for script in MIGRATIONS[:version]:
        conn.executescript(script)
    conn.execute(
        "INSERT INTO problems(step, author, text, difficulty, created_at) VALUES (0, 'alpha', 'Q?', 1.0, 0)"
    )
    conn.execute(f"PRAGMA user_version = {int(version)}")
    conn.commit()
    conn.close()


@pytest.mark.unit
def test_a_v2_run_store_migrates_and_keeps_its_rows(tmp_path):
    """A store written before the audit (schema v2) opens, gains the audit tables, loses nothing."""
    path = tmp_path / "run.sqlite"
    write_old_store(path, 2)
    with Store(path, readonly=True) as s:  # `agora status` on an old run: no audit, no error
        from agora_cli.audit import step_counts

        assert step_counts(s) == {}
    with Store(path) as s:
        assert s.scalar("PRAGMA user_version") == SCHEMA_VERSION
        assert s.scalar("SELECT COUNT(*) FROM problems") == 1
        assert s.scalar("SELECT COUNT(*) FROM audit") == 0


@pytest.mark.integration
def test_a_resumed_step_reuses_its_stored_probes(run_dir):
    """Probes solved by a stage command before the step commits are reused by `agora run`: no
    second probe row, no request asked twice, and the audit counts the stored work."""
    with FakeOpenAI(audit_responder(), latency_s=0.005) as fake:
        cfg = make_config(fake.url, run_dir, audit_probes=1)
        runner.run(cfg, run_dir=run_dir, steps=1)
        step, written = runner.run_stage(run_dir, "solve")
        assert step == 1 and written["problems"] == 1 and written["solutions"] == 3
        solves = sum(1 for r in fake.requests if r.role == "solve")
        runner.run(cfg, run_dir=run_dir, steps=2)
        # Step 1's two generated problems were solved by the run, its probe was not again.
        assert sum(1 for r in fake.requests if r.role == "solve") - solves == 2 * len(MEMBERS)
    with Store(RunPaths(run_dir).store) as s:
        assert s.scalar("SELECT COUNT(*) FROM probes WHERE step = 1") == 1
        assert (
            s.scalar(
                "SELECT COUNT(*) FROM solutions s JOIN problems p ON p.id = s.problem_id "
                "WHERE p.step = 1 AND p.status = 'probe'"
            )
            == 3
        )
        c = s.one("SELECT * FROM audit WHERE step = 1 AND verifier = ?", (CONSENSUS,))
        assert (c["tp"], c["fp"], c["fn"], c["tn"]) == (2, 1, 0, 0)


@pytest.mark.integration
def test_probes_never_repeat_a_pool_problem_of_the_run(tmp_path, monkeypatch):
    """With `problem_source: seed_pool` probes and problems come from the same pool. On a pool
    small enough for a blind draw to collide, no probe is a problem of its own step or of an
    earlier one, and no probe repeats."""
    from agora_cli.protocol import generate as gen

    small = load_seed_pool("gsm8k_train")[:9]
    monkeypatch.setattr(gen, "load_seed_pool", lambda name: small)
    run_dir = tmp_path / "run"
    with FakeOpenAI(audit_responder(), latency_s=0.0) as fake:
        cfg = make_config(fake.url, run_dir, audit_probes=1, problem_source="seed_pool")
        runner.run(cfg, run_dir=run_dir, steps=3)
    with Store(RunPaths(run_dir).store) as s:
        problems = [
            (r["step"], json.loads(r["seed_ids"])[0])
            for r in s.query("SELECT step, seed_ids FROM problems WHERE status = 'ok' ORDER BY step")
        ]
        probes = [
            (r["step"], r["seed_id"])
            for r in s.query(
                "SELECT p.step, pr.seed_id FROM probes pr JOIN problems p ON p.id = pr.problem_id "
                "ORDER BY p.step"
            )
        ]
    assert [t for t, _ in probes] == [0, 1, 2]
    assert len({i for _, i in probes}) == 3
    for t, probe in probes:
        assert probe not in {i for step, i in problems if step <= t}
