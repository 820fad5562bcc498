"""The matched isolated control and `protocol.problem_source`, loop-level.

Against the scripted fake ensemble (tests/fakes/ensemble.py): an isolated member solves only the
problems it wrote (or a seed fallback of its own slot), at its own difficulty d_t^i driven by its
own V_t^i, resumably; with `problem_source: seed_pool` both arms solve the same problems and
nothing is generated.
"""

from __future__ import annotations

import io
import itertools
import json

import pytest
from rich.console import Console

from agora_cli import runner
from agora_cli.cli.validate import protocol_notes
from agora_cli.paths import RunPaths
from agora_cli.runner import config_diff
from agora_cli.store import SCHEMA_VERSION, Store
from agora_cli.ui.status import collect, render
from tests.fakes.ensemble import MEMBERS, make_config, problem_of, responder
from tests.fakes.openai_server import FakeOpenAI
from tests.test_audit import write_old_store

pytestmark = pytest.mark.timeout(180)


def solved_by(store: Store) -> list[tuple[int, str, str, int | None]]:
    """(step, solver, problem author, problem slot) of every stored solution."""
    return [
        (r["step"], r["member"], r["author"], r["slot"])
        for r in store.query(
            "SELECT s.step, s.member, p.author, p.slot FROM solutions s "
            "JOIN problems p ON p.id = s.problem_id ORDER BY s.id"
        )
    ]


def slot_owners(store: Store, step: int) -> list[str | None]:
    info = json.loads(store.scalar("SELECT info FROM steps WHERE step = ?", (step,)))
    return [s.get("owner") for s in info["slots"]]


@pytest.mark.integration
def test_isolated_members_solve_only_problems_they_wrote(run_dir):
    """gamma writes garbage, so its slots fall back to the seed pool; alpha and beta write fine.
    Every solution's problem was written by its solver, or is a seed fallback of the solver's
    own slot; each member solves `problems_per_step` problems per step, as in AGORA."""
    base = responder()

    def reply(req):
        if req.role == "generate" and req.model == "gamma":
            return "hi"
        return base(req)

    with FakeOpenAI(reply, latency_s=0.0) as fake:
        cfg = make_config(fake.url, run_dir, mode="isolated", self_consistency_samples=3)
        runner.run(cfg, run_dir=run_dir, steps=2)
        writers = {r.model for r in fake.requests_for("generate")}
    assert writers == set(MEMBERS)  # everyone writes its own problems
    with Store(RunPaths(run_dir).store) as store:
        rows = solved_by(store)
        assert rows
        for step, solver, author, slot in rows:
            if author == "seed":
                assert slot_owners(store, step)[slot] == solver
            else:
                assert author == solver
        assert {a for _, _, a, _ in rows} == {"alpha", "beta", "seed"}
        for step in (0, 1):
            for m in MEMBERS:
                solved = store.scalar(
                    "SELECT COUNT(DISTINCT problem_id) FROM solutions WHERE step = ? AND member = ?",
                    (step, m),
                )
                assert solved == cfg.protocol.problems_per_step
        # nothing dropped is solved, and every kept problem is solved by exactly one member
        per_problem = store.query(
            "SELECT p.id, COUNT(DISTINCT s.member) AS n FROM problems p "
            "JOIN solutions s ON s.problem_id = p.id GROUP BY p.id"
        )
        assert {r["n"] for r in per_problem} == {1}


def split_responder():
    """alpha and beta always answer 7 (self-consistency validates all their samples, V^i = 1);
    gamma never repeats an answer (no strict majority, V^gamma = 0)."""
    base, counter = responder(), itertools.count(100)

    def reply(req):
        if req.role == "solve" and req.model == "gamma":
            return f"I am gamma. For Q{problem_of(req)} it is \\boxed{{{next(counter)}}}"
        return base(req)

    return reply


def member_rows(store: Store) -> list[tuple]:
    return [
        tuple(r)
        for r in store.query(
            "SELECT step, member, difficulty, v_t, v_target, next_difficulty FROM member_steps "
            "ORDER BY step, member"
        )
    ]


@pytest.mark.integration
def test_members_with_different_v_get_their_own_difficulty_and_resume_keeps_it(tmp_path):
    """alpha's V^i is 1 and gamma's 0, so Eq. 1 moves their difficulties apart (alpha = 1 makes
    the step visible in the prompts' one-decimal difficulty); a run stopped after step 0 and
    resumed stores the same per-member rows as one run straight through."""
    a, b = tmp_path / "straight", tmp_path / "resumed"
    eq1 = {"alpha": 1.0}
    with FakeOpenAI(split_responder(), latency_s=0.0) as fake:
        runner.run(make_config(fake.url, a, mode="isolated", difficulty=eq1), run_dir=a, steps=3)
        n_straight = len(fake.requests)
        runner.run(make_config(fake.url, b, mode="isolated", difficulty=eq1), run_dir=b, steps=1)
        runner.run(make_config(fake.url, b, mode="isolated", difficulty=eq1), run_dir=b, steps=3)
        asked = [(r.model, r.user) for r in fake.requests[:n_straight] if r.role == "generate"]
    with Store(RunPaths(a).store) as store:
        rows = {(r[0], r[1]): r for r in member_rows(store)}
        assert len(rows) == 3 * len(MEMBERS)
        assert rows[(0, "alpha")][3] == pytest.approx(1.0)  # V^alpha: every sample validated
        assert rows[(0, "gamma")][3] == pytest.approx(0.0)  # V^gamma: no strict majority
        # Eq. 1 on each member's own V^i from d0 = 1.0, V_target = target_init = 0.5
        assert rows[(0, "alpha")][5] == pytest.approx(1.5)
        assert rows[(0, "beta")][5] == pytest.approx(1.5)
        assert rows[(0, "gamma")][5] == pytest.approx(0.5)
        for m in MEMBERS:  # d_{t+1}^i of step t is d^i of step t+1
            assert rows[(1, m)][2] == pytest.approx(rows[(0, m)][5])
            assert rows[(2, m)][2] == pytest.approx(rows[(1, m)][5])
        # the outer loop per member: V_target^i = min(1, mean of its own V^i + 0.05)
        assert rows[(1, "alpha")][4] == pytest.approx(1.0)
        assert rows[(1, "gamma")][4] == pytest.approx(0.05)
        assert rows[(1, "gamma")][5] == pytest.approx(0.45)
        # each member's step-1 problems are stored at its own difficulty ...
        for m in MEMBERS:
            ds = [
                r["difficulty"]
                for r in store.query("SELECT difficulty FROM problems WHERE step = 1 AND author = ?", (m,))
            ]
            assert ds and all(d == pytest.approx(rows[(0, m)][5]) for d in ds)
        straight = member_rows(store)
    # ... and asked at it: gamma was asked for difficulty 0.5, alpha for 1.5, nobody else for 0.5
    asked_at = {(m, d) for m, u in asked for d in ("0.5", "1.5") if f"difficulty {d} out of 10" in u}
    assert asked_at == {("alpha", "1.5"), ("beta", "1.5"), ("gamma", "0.5")}
    st = collect(a)  # `agora status` shows each member's d_{t+1}^i and the per-member threshold
    assert st.isolated and st.member_d == pytest.approx({m: rows[(2, m)][5] for m in MEMBERS})
    console = Console(record=True, width=200)
    console.print(render(st))
    page = console.export_text()
    assert f"gamma {rows[(2, 'gamma')][5]:.3f}" in page and "threshold 100 per member" in page
    with Store(RunPaths(b).store) as store:
        resumed = member_rows(store)
    assert [r[:2] for r in resumed] == [r[:2] for r in straight]
    for x, y in zip(resumed, straight, strict=True):
        assert x[2:] == pytest.approx(y[2:])


def pool_texts(run_dir) -> dict[int, list[str]]:
    with Store(RunPaths(run_dir).store) as store:
        out: dict[int, list[str]] = {}
        for r in store.query("SELECT step, text FROM problems WHERE status = 'ok' ORDER BY step, slot"):
            out.setdefault(r["step"], []).append(r["text"])
        return out


@pytest.mark.integration
def test_seed_pool_gives_both_arms_the_same_problems_and_no_generation(tmp_path):
    agora, isolated = tmp_path / "agora", tmp_path / "isolated"
    with FakeOpenAI(split_responder(), latency_s=0.0) as fake:
        runner.run(make_config(fake.url, agora, problem_source="seed_pool"), run_dir=agora, steps=2)
        runner.run(
            make_config(fake.url, isolated, problem_source="seed_pool", mode="isolated"),
            run_dir=isolated,
            steps=2,
        )
        roles = {r.role for r in fake.requests}
    assert "generate" not in roles
    a, b = pool_texts(agora), pool_texts(isolated)
    assert sorted(a) == [0, 1] and all(len(v) == 2 for v in a.values())
    assert a == b
    assert len({t for v in a.values() for t in v}) == 4  # no pool item twice
    with Store(RunPaths(isolated).store) as store:
        # every member solves every pool problem of the step, alone (self-consistency)
        for step in (0, 1):
            for m in MEMBERS:
                assert (
                    store.scalar(
                        "SELECT COUNT(DISTINCT problem_id) FROM solutions WHERE step = ? AND member = ?",
                        (step, m),
                    )
                    == 2
                )
        assert store.scalar("SELECT COUNT(*) FROM verdicts") == 0
    other = tmp_path / "other-seed"
    with FakeOpenAI(responder(), latency_s=0.0) as fake:
        cfg = make_config(fake.url, other, problem_source="seed_pool")
        runner.run(cfg.model_copy(update={"seed": 1}), run_dir=other, steps=1)
    assert pool_texts(other)[0] != a[0]  # the stream is the seed's


@pytest.mark.unit
def test_a_v3_run_store_migrates_to_member_steps(tmp_path):
    """A store written before per-member difficulty (schema v3) opens read-only with no error,
    and a writable open adds the table and keeps its rows."""
    path = tmp_path / "run.sqlite"
    write_old_store(path, 3)
    with Store(path, readonly=True) as s:
        assert s.scalar("SELECT COUNT(*) FROM problems") == 1
    with Store(path) as s:
        assert s.scalar("PRAGMA user_version") == SCHEMA_VERSION == 5
        assert s.scalar("SELECT COUNT(*) FROM member_steps") == 0
        assert s.scalar("SELECT COUNT(*) FROM problems") == 1


@pytest.mark.unit
def test_validate_says_the_difficulty_control_is_inert_with_seed_pool(tmp_path):
    """`agora validate` prints these notes (the command itself also loads torch: too slow here)."""
    pool = make_config("http://127.0.0.1:9", tmp_path / "run", problem_source="seed_pool")
    (note,) = protocol_notes(pool)
    assert "seed_pool" in note and "inert" in note
    assert protocol_notes(make_config("http://127.0.0.1:9", tmp_path / "run")) == []


@pytest.mark.unit
def test_a_run_stored_before_problem_source_resumes_without_force():
    """A stored config without `protocol.problem_source` did what `generated` does: no diff;
    asking such a run for `seed_pool` is a change."""
    stored = {"protocol": {"mode": "agora", "elite_k": 3}}
    assert (
        config_diff(stored, {"protocol": {"mode": "agora", "elite_k": 3, "problem_source": "generated"}})
        == []
    )
    ((key, _),) = config_diff(
        stored, {"protocol": {"mode": "agora", "elite_k": 3, "problem_source": "seed_pool"}}
    )
    assert key == "protocol.problem_source"


@pytest.mark.integration
def test_isolated_views_show_no_ratings_and_a_per_member_threshold(run_dir):
    """The isolated control has no votes: the live view, the plain log and `status` show no
    mu/sigma (a TrueSkill prior would read as a rating), and say the threshold is per member."""
    from agora_cli.events import read_events
    from agora_cli.ui.live import LiveState
    from agora_cli.ui.live import render as live_render
    from agora_cli.ui.plain import PlainPrinter

    with FakeOpenAI(responder(), latency_s=0.0) as fake:
        cfg = make_config(fake.url, run_dir, mode="isolated", self_consistency_samples=3)
        runner.run(cfg, run_dir=run_dir, steps=1)
    events = read_events(RunPaths(run_dir).events)
    assert not [e for e in events if e["kind"] == "rating_update"]
    state, log = LiveState(), io.StringIO()
    printer = PlainPrinter(log)
    for e in events:
        state.apply(e)
        printer(e)
    pages = []
    for renderable in (live_render(state), render(collect(run_dir))):
        console = Console(record=True, width=200, file=io.StringIO())
        console.print(renderable)
        pages.append(console.export_text())
    for page in pages:
        header = next(line for line in page.splitlines() if "member" in line and "sol" in line)
        assert "mu" not in header.split() and "sigma" not in header.split()
        assert "25.00" not in page
        assert f"threshold {cfg.protocol.buffer_threshold} per member" in page
    step_line = next(line for line in log.getvalue().splitlines() if line.startswith("step 0"))
    assert f"(threshold {cfg.protocol.buffer_threshold} per member)" in step_line
    assert " mu " not in step_line
