"""SIGKILL `agora run` mid-step, rerun it, and check the committed state of an uninterrupted run.

The fake server counts requests; once it has seen `kill_after`, it stalls every further reply so
the child is certainly mid-step (or mid-commit) when the test kills it with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from agora_cli.commit import replay_ratings
from agora_cli.paths import RunPaths
from agora_cli.steps import latest_ratings
from agora_cli.store import Store
from tests.fakes.ensemble import MEMBERS, REPO, responder, write_config
from tests.fakes.openai_server import FakeOpenAI, Reply, Request

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

# An uninterrupted 2-step run of the script asks 56 requests: 4 generate, 12 solve, 24 verify,
# 12 vote, 4 explain. Kill points cover generation, solving, verifying, voting, step 1 and its end.
KILL_POINTS = [2, 9, 20, 33, 45, 54]


def agora(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "agora_cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def committed_state(run_dir) -> dict:
    with Store(RunPaths(run_dir).store) as store:
        q = store.scalar
        state = {
            "steps": q("SELECT COUNT(*) FROM steps WHERE committed_at IS NOT NULL"),
            "problems": q("SELECT COUNT(*) FROM problems"),
            "solutions": q("SELECT COUNT(*) FROM solutions"),
            "verdicts": q("SELECT COUNT(*) FROM verdicts"),
            "votes": q("SELECT COUNT(*) FROM votes"),
            "ratings": q("SELECT COUNT(*) FROM ratings"),
            "buffer": q("SELECT COUNT(*) FROM buffer"),
            "explanations": q("SELECT COUNT(*) FROM explanations"),
            "elite": q("SELECT COUNT(*) FROM elite WHERE active = 1"),
            "correct": q("SELECT COUNT(*) FROM solutions WHERE correct = 1"),
        }
        # No (problem, member), (solution, verifier), (pair, voter) or buffered solution twice.
        assert (
            q(
                "SELECT COUNT(*) FROM (SELECT problem_id, member FROM solutions "
                "GROUP BY 1, 2 HAVING COUNT(*) > 1)"
            )
            == 0
        )
        assert q("SELECT COUNT(*) FROM (SELECT solution_id FROM buffer GROUP BY 1 HAVING COUNT(*) > 1)") == 0
        assert (
            q(
                "SELECT COUNT(*) FROM (SELECT vote_id FROM ratings WHERE vote_id IS NOT NULL "
                "GROUP BY vote_id, member HAVING COUNT(*) > 1)"
            )
            == 0
        )
        # Every buffered row's solution passed unanimous consensus (2 valid verdicts).
        for row in store.query("SELECT solution_id FROM buffer"):
            sid = row["solution_id"]
            assert q("SELECT correct FROM solutions WHERE id = ?", (sid,)) == 1
            assert (
                q("SELECT COUNT(*) FROM verdicts WHERE solution_id = ? AND valid = 1", (sid,))
                == len(MEMBERS) - 1
            )
        # Ratings are a replay of the stored votes.
        latest = latest_ratings(store)
        replay = replay_ratings(store, MEMBERS)
        for m in MEMBERS:
            assert latest[m] == pytest.approx(replay[m])
    return state


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The committed state of an uninterrupted 2-step run."""
    d = tmp_path_factory.mktemp("ref")
    with FakeOpenAI(responder(), latency_s=0.005) as fake:
        cfg = write_config(d / "fake.yaml", fake.url, d / "run")
        p = agora("run", str(cfg), "--steps", "2", "--run-dir", str(d / "run"))
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out
        assert len(fake.requests) == 56  # 3 explanations at step 0, 1 more at step 1
    return committed_state(d / "run")


@pytest.mark.parametrize("kill_after", KILL_POINTS)
def test_sigkill_mid_step_then_resume(tmp_path, reference, kill_after):
    script = responder()
    seen = 0
    reached = threading.Event()

    def stalling(req: Request) -> str | Reply:
        nonlocal seen
        seen += 1
        if seen > kill_after:
            reached.set()
            return Reply(text="", delay_s=30)  # never answered: the child is killed first
        return script(req)

    run_dir = tmp_path / "run"
    with FakeOpenAI(stalling, latency_s=0.005) as fake:
        cfg = write_config(tmp_path / "fake.yaml", fake.url, run_dir)
        p = agora("run", str(cfg), "--steps", "2", "--run-dir", str(run_dir))
        assert reached.wait(60), "the run never reached the kill point"
        os.kill(p.pid, signal.SIGKILL)
        p.communicate(timeout=30)
        assert p.returncode == -signal.SIGKILL
        before = committed_state(run_dir)
        assert before["steps"] < 2
        n_killed = len(fake.requests)
        with Store(RunPaths(run_dir).store) as store:
            stored = sum(
                store.scalar(f"SELECT COUNT(*) FROM {t}")
                for t in ("problems", "solutions", "verdicts", "votes", "explanations")
            )

        fake.responder = script  # the server answers again; the same script continues
        p = agora("run", str(cfg), "--steps", "2", "--run-dir", str(run_dir))
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out
        asked_again = len(fake.requests) - n_killed
    after = committed_state(run_dir)
    assert after == reference
    # Only missing requests were asked on resume: every stored request was reused.
    assert stored + asked_again == 56
