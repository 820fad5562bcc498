"""Fault injection against the fake OpenAI server: kills, flaky and dead servers.

- SIGKILL `agora run` at seeded random points (twice per run), resume, and check the store's
  invariants and that the final committed state equals an uninterrupted run's.
- A server that answers 20% of requests (seeded) with a 500, a timeout or a dropped connection:
  the run still commits the same steps with the same content.
- A member whose server stays down: one clear error naming the member and its endpoint, a
  non-zero exit, committed steps untouched, and a clean resume once it is back.

Training and hot-swap kill points (the other seeds of the ten) are in test_faults_training.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agora_cli import runner
from agora_cli.commit import replay_ratings
from agora_cli.paths import RunPaths
from agora_cli.steps import latest_ratings
from agora_cli.store import Store
from tests.fakes.ensemble import MEMBERS, REPO, WORDS, config_dict, verify, vote, write_config
from tests.fakes.openai_server import FakeOpenAI, Reply, Request, scripted

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

STEPS = 3
KILL_SEEDS = list(range(8))  # seeds 8 and 9 kill during training / hot-swap (e2e file)


def responder():
    """The loop helpers' script, except that a generator's reply depends only on its request.

    A request asked again after a kill (its reply was sent but never stored) then gets the same
    problem, so a resumed run's content equals an uninterrupted run's exactly.
    """

    def generate(req: Request) -> str:
        n = int(hashlib.sha256((req.model + req.user).encode()).hexdigest()[:8], 16) % 100_000
        a, b, c = WORDS[n % 9], WORDS[(n + 3) % 9], WORDS[(n + 5) % 9]
        return (
            f"Problem: Q{n} A farmer has {n + 11} {a}, sells {n + 2} {b} and buys "
            f"{3 * n + 5} {c} at market number {n}. How many fruits are left?"
        )

    def solve(req: Request) -> str:
        return f"I am {req.model}. Adding the numbers step by step gives \\boxed{{7}}"

    return scripted(
        {
            "generate": generate,
            "solve": solve,
            "verify": verify,
            "vote": vote,
            "explain": "Add what is bought and subtract what is sold.",
        }
    )


def agora(*args: str, env: dict | None = None) -> subprocess.Popen:
    """`agora ...` in a child process (so it can be SIGKILLed)."""
    return subprocess.Popen(
        [sys.executable, "-m", "agora_cli", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def check_invariants(run_dir: Path, members: list[str]) -> dict:
    """Assert what must hold after any crash; return the committed content for comparison."""
    with Store(RunPaths(run_dir).store) as store:
        q = store.scalar
        committed = [
            r["step"]
            for r in store.query("SELECT step FROM steps WHERE committed_at IS NOT NULL ORDER BY step")
        ]
        # Steps commit in order, with no gap.
        assert committed == list(range(len(committed)))
        # Every validated sample is in the buffer once: buffered solutions passed unanimous
        # consensus in a committed step, and no solution is buffered twice.
        assert q("SELECT COUNT(*) FROM (SELECT solution_id FROM buffer GROUP BY 1 HAVING COUNT(*) > 1)") == 0
        for row in store.query(
            "SELECT b.solution_id, s.correct, s.member, t.committed_at FROM buffer b "
            "JOIN solutions s ON s.id = b.solution_id JOIN steps t ON t.step = b.step"
        ):
            assert row["correct"] == 1 and row["committed_at"] is not None
            valid = q(
                "SELECT COUNT(*) FROM verdicts WHERE solution_id = ? AND valid = 1", (row["solution_id"],)
            )
            assert valid == len(members) - 1
        # Every solution of a committed step has its consensus outcome; open-step work has none.
        assert (
            q(
                "SELECT COUNT(*) FROM solutions s JOIN steps t ON t.step = s.step "
                "WHERE t.committed_at IS NOT NULL AND s.correct IS NULL"
            )
            == 0
        )
        # One rating row per author per vote, and ratings equal a replay of the stored votes.
        assert (
            q(
                "SELECT COUNT(*) FROM (SELECT vote_id, member FROM ratings "
                "WHERE vote_id IS NOT NULL GROUP BY 1, 2 HAVING COUNT(*) > 1)"
            )
            == 0
        )
        latest = latest_ratings(store)
        replay = replay_ratings(store, members)
        for m in members:
            assert latest[m] == pytest.approx(replay[m])
        # Every training round's rows are its own: no row reserved by two rounds.
        seen: set[int] = set()
        for r in store.query("SELECT id, buffer_ids FROM rounds"):
            ids = set(json.loads(r["buffer_ids"]))
            assert not ids & seen
            seen |= ids
            assert {
                x["id"] for x in store.query("SELECT id FROM buffer WHERE round_id = ?", (r["id"],))
            } == ids
        return {
            "steps": len(committed),
            "problems": sorted(
                r[0]
                for r in store.query(
                    "SELECT text FROM problems WHERE status = 'ok' AND step IN "
                    "(SELECT step FROM steps WHERE committed_at IS NOT NULL)"
                )
            ),
            "buffer": sorted(
                tuple(r)
                for r in store.query(
                    "SELECT p.text, b.member FROM buffer b JOIN problems p ON p.id = b.problem_id"
                )
            ),
            "correct": q("SELECT COUNT(*) FROM solutions WHERE correct = 1"),
            "votes": q(
                "SELECT COUNT(*) FROM votes v JOIN steps t ON t.step = v.step "
                "WHERE t.committed_at IS NOT NULL"
            ),
            "ratings": {m: tuple(round(x, 9) for x in latest[m]) for m in members},
            "elite": q("SELECT COUNT(*) FROM elite WHERE active = 1"),
            "difficulty": [
                round(r[0], 9)
                for r in store.query(
                    "SELECT next_difficulty FROM steps WHERE committed_at IS NOT NULL ORDER BY step"
                )
            ],
        }


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict, int]:
    """The committed content of an uninterrupted run, and how many requests it asked."""
    d = tmp_path_factory.mktemp("ref")
    with FakeOpenAI(responder(), latency_s=0.002) as fake:
        cfg = write_config(d / "fake.yaml", fake.url, d / "run")
        p = agora("run", str(cfg), "--steps", str(STEPS), "--run-dir", str(d / "run"))
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, out + err
        n = len(fake.requests)
    return check_invariants(d / "run", MEMBERS), n


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_sigkill_twice_at_seeded_points_then_resume(tmp_path, reference, seed):
    ref_state, n_total = reference
    rng = random.Random(seed)
    kill_points = sorted(rng.sample(range(1, n_total), 2))
    script = responder()
    answered = 0
    stall_after: list[int] = []
    reached = threading.Event()

    def stalling(req: Request) -> str | Reply:
        # Once `stall_after` requests were answered, nothing more is: the child is certainly
        # mid-step when it is killed. Requests never answered are asked again on resume.
        nonlocal answered
        if stall_after and answered >= stall_after[0]:
            reached.set()
            return Reply(text="", delay_s=60)
        answered += 1
        return script(req)

    run_dir = tmp_path / "run"
    with FakeOpenAI(stalling, latency_s=0.002) as fake:
        cfg = write_config(tmp_path / "fake.yaml", fake.url, run_dir)
        args = ("run", str(cfg), "--steps", str(STEPS), "--run-dir", str(run_dir))
        for point in kill_points:
            stall_after[:] = [point]
            reached.clear()
            p = agora(*args)
            assert reached.wait(90), f"the run never reached request {point}"
            os.kill(p.pid, signal.SIGKILL)
            p.communicate(timeout=30)
            assert p.returncode == -signal.SIGKILL
            mid = check_invariants(run_dir, MEMBERS)
            assert mid["steps"] < STEPS
        stall_after.clear()
        p = agora(*args)
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, out + err
    # Every request answered before a kill was stored and reused (a reply still in flight at
    # the kill may be asked again, hence at most a few more).
    assert n_total <= answered <= n_total + 8 * len(kill_points)
    assert check_invariants(run_dir, MEMBERS) == ref_state


# --------------------------------------------------------------------------- flaky server


def flaky(script, seed: int, rate: float = 0.2, timeout_s: float = 0.5):
    """Wrap a responder: `rate` of requests (seeded) get a 500, a timeout or a dropped connection."""
    rng = random.Random(seed)
    faults = {"500": 0, "timeout": 0, "drop": 0}

    def respond(req: Request) -> str | Reply:
        if rng.random() < rate:
            kind = rng.choice(list(faults))
            faults[kind] += 1
            if kind == "500":
                return Reply(text="injected server error", status=500)
            if kind == "timeout":
                return Reply(text="too late", delay_s=timeout_s * 3)
            return Reply(drop=True)
        return script(req)

    respond.faults = faults  # type: ignore[attr-defined]
    return respond


def _flaky_config(url: str, run_dir: Path):
    from agora_cli.config import config_from_dict

    data = config_dict(url, run_dir)
    for m in data["members"]:
        m["request_timeout_s"] = 0.5
    data["client"] = {"max_retries": 5, "backoff_initial_s": 0.01, "backoff_max_s": 0.05}
    return config_from_dict(data)


@pytest.mark.parametrize("seed", [0, 1])
def test_flaky_server_run_completes_with_the_same_steps(tmp_path, reference, seed):
    with FakeOpenAI(responder(), latency_s=0.002) as fake:
        clean = runner.run(
            _flaky_config(fake.url, tmp_path / "clean"), run_dir=tmp_path / "clean", steps=STEPS
        )
    respond = flaky(responder(), seed)
    with FakeOpenAI(respond, latency_s=0.002) as fake:
        result = runner.run(
            _flaky_config(fake.url, tmp_path / "flaky"), run_dir=tmp_path / "flaky", steps=STEPS
        )
    faults = respond.faults  # type: ignore[attr-defined]
    assert all(n > 0 for n in faults.values()), faults  # every kind of fault was injected
    assert result.committed == clean.committed == STEPS
    assert check_invariants(tmp_path / "flaky", MEMBERS) == check_invariants(tmp_path / "clean", MEMBERS)
    with Store(RunPaths(tmp_path / "flaky").store) as store:
        # Retries absorbed every fault: nothing was stored as a failed request.
        assert store.scalar("SELECT COUNT(*) FROM solutions WHERE error IS NOT NULL") == 0


# --------------------------------------------------------------------------- dead member


def test_member_down_fails_clearly_keeps_store_and_resumes(tmp_path, reference):
    ref_state, _ = reference
    script = responder()
    down = {"gamma": False}

    def respond(req: Request) -> str | Reply:
        if down.get(req.model):
            return Reply(text="backend unavailable", status=503)
        return script(req)

    run_dir = tmp_path / "run"
    with FakeOpenAI(respond, latency_s=0.002) as fake:
        cfg = write_config(tmp_path / "fake.yaml", fake.url, run_dir)
        p = agora("run", str(cfg), "--steps", "1", "--run-dir", str(run_dir))
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, out + err
        before = check_invariants(run_dir, MEMBERS)
        with Store(RunPaths(run_dir).store) as store:
            rows_before = [dict(r) for r in store.query("SELECT * FROM steps ORDER BY step")]

        down["gamma"] = True
        p = agora("run", str(cfg), "--steps", str(STEPS), "--run-dir", str(run_dir))
        out, err = p.communicate(timeout=120)
        assert p.returncode != 0, out + err
        message = err.strip().splitlines()
        assert len(message) == 1, err  # one line, no traceback
        assert "gamma" in message[0] and fake.url in message[0], err
        assert "Traceback" not in out + err
        with Store(RunPaths(run_dir).store) as store:
            after_rows = [
                dict(r)
                for r in store.query("SELECT * FROM steps WHERE committed_at IS NOT NULL ORDER BY step")
            ]
        assert after_rows == rows_before  # committed steps unchanged, nothing new committed
        assert check_invariants(run_dir, MEMBERS) == before

        down["gamma"] = False
        p = agora("run", str(cfg), "--steps", str(STEPS), "--run-dir", str(run_dir))
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, out + err
    final = check_invariants(run_dir, MEMBERS)
    assert final["steps"] == STEPS
    with Store(RunPaths(run_dir).store) as store:
        assert (
            store.scalar(
                "SELECT COUNT(*) FROM solutions WHERE error IS NOT NULL "
                "AND step IN (SELECT step FROM steps WHERE committed_at IS NOT NULL)"
            )
            == 0
        )
    assert final == ref_state  # the same content as a run that never lost a member
