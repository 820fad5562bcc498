"""The elite history with and without quality_vote: the elite history H_t keeps turning over.

The scripted ensemble of `tests.fakes.ensemble` makes alpha win every vote of every step, so every
step's candidates score exactly what the current entries scored. A share of votes won (1.0 for
all of them) with ties kept by the older entry froze H_t after the first step; the Wilson lower
bound with ties to the newer entry lets each step's winners in.
"""

from __future__ import annotations

import pytest

from agora_cli import runner
from agora_cli.paths import RunPaths
from agora_cli.protocol.select import elite_score, update_elite
from agora_cli.protocol.types import EliteExample
from agora_cli.store import Store
from tests.fakes.ensemble import config_dict, responder
from tests.fakes.openai_server import FakeOpenAI

pytestmark = pytest.mark.timeout(180)


def _example(sid: int, score: float) -> EliteExample:
    return EliteExample(problem="p", solution="s", explanation=None, member="m", solution_id=sid, score=score)


@pytest.mark.unit
def test_more_wins_beat_one_win_and_ties_go_to_the_newer_entry():
    assert elite_score(1, 1) < elite_score(3, 3) < elite_score(6, 6) < 1.0
    assert elite_score(2, 3) < elite_score(3, 3)
    old = [_example(1, elite_score(1, 1)), _example(2, elite_score(3, 3))]
    new = [_example(7, elite_score(3, 3)), _example(8, elite_score(6, 6))]
    assert [e.solution_id for e in update_elite(old, new, 3)] == [8, 7, 2]
    # Equal scores: the newest entries win the places.
    same = update_elite([_example(1, 0.5), _example(2, 0.5)], [_example(5, 0.5)], 2)
    assert [e.solution_id for e in same] == [5, 2]
    assert [e.solution_id for e in update_elite(same, [_example(5, 0.5)], 3)] == [5, 2]


def _elite_by_step(run_dir, steps: int, **ablations: bool) -> list[set[int]]:
    """Active H_t (solution ids) after each of `steps` steps, plus each step's solution ids."""
    history = []
    with FakeOpenAI(responder(), latency_s=0.0) as fake:
        from agora_cli.config import config_from_dict

        data = config_dict(fake.url, run_dir, elite_k=2)
        data["ablations"].update(ablations)
        cfg = config_from_dict(data)
        for t in range(1, steps + 1):
            runner.run(cfg, run_dir=run_dir, steps=t)
            with Store(RunPaths(run_dir).store, readonly=True) as store:
                history.append({r[0] for r in store.query("SELECT solution_id FROM elite WHERE active = 1")})
    return history


def _solutions_of_step(run_dir, step: int) -> set[int]:
    with Store(RunPaths(run_dir).store, readonly=True) as store:
        return {r[0] for r in store.query("SELECT id FROM solutions WHERE step = ?", (step,))}


@pytest.mark.integration
def test_elite_history_turns_over_across_steps(run_dir):
    history = _elite_by_step(run_dir, 3)
    assert all(len(h) == 2 for h in history)
    # Every step's two winners (alpha's solution to each problem, 3 of 3 votes) replace the last.
    for t, h in enumerate(history):
        assert h <= _solutions_of_step(run_dir, t), (t, history)
    assert history[0] != history[1] != history[2]
    with Store(RunPaths(run_dir).store, readonly=True) as store:
        rows = store.query("SELECT member, score FROM elite WHERE active = 1")
        assert {r["member"] for r in rows} == {"alpha"}
        assert all(r["score"] == pytest.approx(elite_score(3, 3)) for r in rows)


@pytest.mark.integration
def test_without_quality_vote_the_elite_history_is_still_filled(run_dir):
    history = _elite_by_step(run_dir, 2, quality_vote=False)
    assert [len(h) for h in history] == [2, 2]
    assert history[1] <= _solutions_of_step(run_dir, 1)  # still turning over
    with Store(RunPaths(run_dir).store) as store:
        assert store.scalar("SELECT COUNT(*) FROM votes") == 0
        rows = store.query("SELECT e.score, s.correct FROM elite e JOIN solutions s ON s.id = e.solution_id")
        assert rows and all(r["correct"] == 1 for r in rows)
        assert all(r["score"] == pytest.approx(elite_score(2, 2)) for r in rows)  # 2 verifiers
        # Step 1's solvers saw step 0's entries (elite ICL is not silently switched off).
        shown = [r[0] for r in store.query("SELECT elite_ids FROM solutions WHERE step = 1")]
        assert all(ids != "[]" for ids in shown)
