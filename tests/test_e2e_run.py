"""`agora run configs/tiny-transformers.yaml --steps 2` on the real small models (embedded
transformers backend; tests/test_e2e_vllm.py runs configs/tiny.yaml, the vLLM default).

Sizes are shrunk by overrides so two steps fit in a few minutes on 2 CPU cores; the assertions are
about consistency of what the real models produced, not about its quality.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from agora_cli.commit import replay_ratings
from agora_cli.paths import RunPaths
from agora_cli.steps import latest_ratings
from agora_cli.store import Store
from tests.fakes.ensemble import REPO

MEMBERS = ["smol-a", "smol-b", "gemma"]
OVERRIDES = [
    "protocol.problems_per_step=1",
    "protocol.generators_per_step=1",
    "protocol.seed_examples=1",
    "protocol.sampling.generate.max_tokens=40",
    "protocol.sampling.solve.max_tokens=48",
    "protocol.sampling.verify.max_tokens=4",
    "protocol.sampling.vote.max_tokens=4",
    "protocol.sampling.explain.max_tokens=24",
    # The anchor is the evaluation engineer's (tested there and against the fake server here).
    "ablations.external_anchor=false",
]


@pytest.mark.e2e
@pytest.mark.timeout(1900)
def test_tiny_two_steps_on_real_models(tmp_path):
    run_dir = tmp_path / "tiny"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agora_cli",
            "run",
            "configs/tiny-transformers.yaml",
            *OVERRIDES,
            "--steps",
            "2",
            "--run-dir",
            str(run_dir),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = p.communicate(timeout=1700)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: the run stops the model servers it started on its way out.
        p.terminate()
        stdout, stderr = p.communicate(timeout=120)
        pytest.fail(f"agora run did not finish in time:\n{stdout[-2000:]}\n{stderr[-2000:]}")
    assert p.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "step 1 |" in stdout  # the plain one-line-per-step printer (stdout is a pipe)
    with Store(RunPaths(run_dir).store) as store:
        q = store.scalar
        assert q("SELECT COUNT(*) FROM steps WHERE committed_at IS NOT NULL") == 2
        n_ok = q("SELECT COUNT(*) FROM problems WHERE status = 'ok'")
        n_all = q("SELECT COUNT(*) FROM problems")
        # Every problem slot filled (one per step here): a dropped problem is asked again up to
        # `protocol.problem_retries` (2) times, then the slot takes a seed problem; every
        # attempt is stored, kept or dropped.
        generated = q("SELECT COUNT(*) FROM problems WHERE author != 'seed'")
        assert 2 <= generated <= 2 * 3
        assert n_all >= 2
        for step in (0, 1):
            assert q("SELECT COUNT(*) FROM problems WHERE step = ? AND status = 'ok'", (step,)) == 1
        # The consensus audit (tiny: one gold-labelled probe per step) went through solve and
        # verify like any problem, on the real models.
        n_probe = q("SELECT COUNT(*) FROM problems WHERE status = 'probe'")
        assert n_probe == 2 and q("SELECT COUNT(*) FROM probes") == 2
        # Every kept problem and probe was solved by every member, and every answered solution
        # verified by the two other members.
        assert q("SELECT COUNT(*) FROM solutions") == 3 * (n_ok + n_probe)
        answered = q("SELECT COUNT(*) FROM solutions WHERE answer IS NOT NULL AND error IS NULL")
        assert q("SELECT COUNT(*) FROM verdicts") == 2 * answered
        # correct == unanimous consensus, recomputed from the stored verdicts; a probe's solutions
        # carry no `correct` (it must not steer the run), their consensus is in audit_solutions.
        probe_solutions = {r["solution_id"]: r for r in store.query("SELECT * FROM audit_solutions")}
        for s in store.query("SELECT id, answer, correct FROM solutions"):
            valid = q("SELECT COUNT(*) FROM verdicts WHERE solution_id = ? AND valid = 1", (s["id"],))
            if s["id"] in probe_solutions:
                assert s["correct"] is None
                assert probe_solutions[s["id"]]["approved"] == int(s["answer"] is not None and valid == 2)
            else:
                assert s["correct"] == int(s["answer"] is not None and valid == 2)
        assert 0 < len(probe_solutions) <= 3 * n_probe  # a failed solve request is no decision
        # The audit's counts: per step, @consensus's tp+fp+fn+tn covers every audited solution.
        for step in (0, 1):
            row = store.query(
                "SELECT tp + fp + fn + tn AS n FROM audit WHERE step = ? AND verifier = '@consensus'", (step,)
            )
            audited = q("SELECT COUNT(*) FROM audit_solutions WHERE step = ?", (step,))
            assert row and row[0]["n"] == audited > 0
        # Votes only on pairs of correct solutions of the same problem, 3 voters per pair.
        for v in store.query("SELECT * FROM votes"):
            pair = store.query(
                "SELECT problem_id, correct FROM solutions WHERE id IN (?, ?)",
                (v["solution_a"], v["solution_b"]),
            )
            assert {r["problem_id"] for r in pair} == {v["problem_id"]}
            assert all(r["correct"] == 1 for r in pair)
        n_pairs = q("SELECT COUNT(*) FROM (SELECT DISTINCT solution_a, solution_b FROM votes)")
        assert q("SELECT COUNT(*) FROM votes") == 3 * n_pairs
        # Ratings: one row per member and decisive vote, equal to a replay of the votes.
        decisive = q("SELECT COUNT(*) FROM votes WHERE winner IS NOT NULL")
        assert q("SELECT COUNT(*) FROM ratings") == 3 + 2 * decisive
        latest = latest_ratings(store)
        replay = replay_ratings(store, MEMBERS)
        for m in MEMBERS:
            assert latest[m] == pytest.approx(replay[m])
        # Buffer: only solutions that passed consensus.
        assert (
            q(
                "SELECT COUNT(*) FROM buffer b JOIN solutions s ON s.id = b.solution_id "
                "WHERE s.correct IS NOT 1"
            )
            == 0
        )
        steps = store.query("SELECT * FROM steps ORDER BY step")
        assert steps[1]["difficulty"] == pytest.approx(steps[0]["next_difficulty"])
        sample = store.query(
            "SELECT p.text AS problem, s.member, s.answer, s.correct, s.text FROM solutions s "
            "JOIN problems p ON p.id = s.problem_id ORDER BY s.id LIMIT 6"
        )
    (tmp_path / "sample.json").write_text(json.dumps([dict(r) for r in sample], indent=1))
