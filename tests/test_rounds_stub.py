"""Training rounds' retry, crash, activation-failure and Ctrl-C paths, in the fast suite.

`RoundManager` runs a real worker process per member, but the worker is `tests/fakes/stub_worker.py`
(no model: it writes an adapter directory and exits with the code a test chooses), so everything
the manager does (rows reserved once, attempts, statuses, activation, shutdown, resume) runs in
seconds. Real training is covered by test_rounds.py and the e2e tests.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from agora_cli.config import Config
from agora_cli.errors import StoreError
from agora_cli.events import EventBus
from agora_cli.paths import RunPaths
from agora_cli.store import Store
from agora_cli.training import round_store as rs
from agora_cli.training.rounds import MAX_ATTEMPTS, RoundManager
from tests.test_rounds import RecordingServing, adapter_status, add_rows, make_cfg, round_rows

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
STUB = Path(__file__).parent / "fakes" / "stub_worker.py"


class Worker:
    """The command for RoundManager: each attempt of each member runs the next scripted mode."""

    def __init__(self, *modes: str, default: str = "ok"):
        self.modes = list(modes)
        self.default = default
        self.launched: Counter[str] = Counter()

    def __call__(self, spec_path: Path) -> list[str]:
        member = json.loads(spec_path.read_text())["member"]
        self.launched[member] += 1
        mode = self.modes.pop(0) if self.modes else self.default
        return [sys.executable, str(STUB), str(spec_path), mode]


@pytest.fixture
def env(run_dir: Path):
    store = Store(RunPaths(run_dir).store)
    events: list[dict] = []
    yield store, RunPaths(run_dir).ensure(), EventBus([events.append]), events
    store.close()


def manager(env, worker: Worker, serving=None, **kw) -> RoundManager:  # noqa: ANN001
    store, paths, bus, _ = env
    return RoundManager(
        store,
        make_cfg(threshold=2),
        paths,
        serving,
        bus,
        members=["smol-a"],
        poll_interval_s=0.02,
        command=worker,
        **kw,
    )


def stub_ids(paths: RunPaths, member: str, version: int) -> list[int]:
    return json.loads((paths.adapter_dir(member, version) / "stub.json").read_text())["buffer_ids"]


def wait_for(events: list[dict], kind: str, rm: RoundManager, timeout: float = 60) -> dict:
    """Poll the manager until an event of `kind` arrives (the event, not a sleep, orders the test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rm.poll()
        found = [e for e in events if e["kind"] == kind]
        if found:
            return found[-1]
        time.sleep(0.02)
    raise AssertionError(f"no {kind} event in {timeout} s")


def test_a_round_goes_live_with_its_rows_and_the_adapter_activated(env):
    store, paths, bus, events = env
    add_rows(store, 3)
    serving = RecordingServing()
    rm = manager(env, Worker(), serving)
    r1 = rm.maybe_start(step=0)
    assert round_rows(store, r1) == [1, 2]
    rm.wait(60)
    assert rs.round_row(store, r1)["status"] == "live"
    assert adapter_status(store, "smol-a") == {1: "live"}
    assert serving.live["smol-a"][0] == 1 and rm.live_versions() == {"smol-a": 1, "smol-b": 0}
    assert stub_ids(paths, "smol-a", 1) == [1, 2]
    assert rs.model_name(store, "smol-a", 1) == "smol-a-v1"
    assert [e["kind"] for e in events if e["kind"].startswith(("training", "adapter"))] == [
        "training_started",
        "training_progress",
        "training_finished",
        "adapter_live",
    ]


def test_a_crashed_worker_leaves_the_round_retriable_with_the_same_rows(env):
    store, paths, bus, events = env
    add_rows(store, 2)
    worker = Worker("exit:3")
    rm = manager(env, worker, RecordingServing())
    r1 = rm.maybe_start(step=0)
    rm.wait(60)
    row = rs.round_row(store, r1)
    assert row["status"] == "pending" and row["attempts"] == 1
    assert "worker exited with code 3" in row["error"]
    assert adapter_status(store, "smol-a") == {1: "failed"}
    assert rm.live_versions()["smol-a"] == 0
    add_rows(store, 2)  # new rows wait: the unfinished round goes first, with its own rows
    assert rm.maybe_start(step=1) == r1
    rm.wait(60)
    row = rs.round_row(store, r1)
    assert row["status"] == "live" and row["attempts"] == 2 and row["error"] is None
    assert stub_ids(paths, "smol-a", 1) == [1, 2] == round_rows(store, r1)
    assert store.scalar("SELECT COUNT(*) FROM buffer WHERE round_id IS NULL") == 2
    assert worker.launched["smol-a"] == 2


def test_an_error_reported_by_the_worker_reaches_the_round(env):
    store, paths, bus, events = env
    add_rows(store, 2)
    rm = manager(env, Worker("error"))
    r1 = rm.maybe_start(step=0)
    rm.wait(60)
    assert "OSError: stub disk is full" in rs.round_row(store, r1)["error"]
    failed = [e for e in events if e["kind"] == "training_failed"]
    assert len(failed) == 1 and "stub disk is full" in failed[0]["error"]


def test_after_max_attempts_only_a_restart_retries_the_round(env):
    store, paths, bus, events = env
    add_rows(store, 4)
    rm = manager(env, Worker(default="exit:1"))
    r1 = rm.maybe_start(step=0)
    rm.wait(60)
    for attempt in range(2, MAX_ATTEMPTS + 1):
        assert rm.maybe_start(step=attempt) == r1
        rm.wait(60)
    row = rs.round_row(store, r1)
    assert row["status"] == "failed" and row["attempts"] == MAX_ATTEMPTS
    assert rm.maybe_start(step=9) is None  # blocks new rounds; rows 3-4 wait
    assert rs.retriable_round(store)["id"] == r1
    restarted = manager(env, Worker())
    restarted.resume()
    assert restarted.in_flight() == r1
    restarted.wait(60)
    assert rs.round_row(store, r1)["status"] == "live"
    assert rs.round_row(store, r1)["attempts"] == MAX_ATTEMPTS + 1


def test_activation_failure_activates_again_without_retraining(env):
    store, paths, bus, events = env
    add_rows(store, 2)
    worker = Worker()
    serving = RecordingServing(fail_first=1)
    rm = manager(env, worker, serving)
    r1 = rm.maybe_start(step=0)
    rm.wait(60)
    assert rs.round_row(store, r1)["status"] == "pending"
    assert adapter_status(store, "smol-a") == {1: "ready"}
    failed = [e for e in events if e["kind"] == "training_failed"]
    assert failed[-1]["stage"] == "activate" and "server rejected" in failed[-1]["error"]
    assert rm.maybe_start(step=1) == r1
    rm.wait(60)
    assert rs.round_row(store, r1)["status"] == "live"
    assert adapter_status(store, "smol-a") == {1: "live"} and serving.live["smol-a"][0] == 1
    assert worker.launched["smol-a"] == 1  # trained once, activated twice


def test_ctrl_c_stops_the_worker_and_the_next_run_resumes_the_round(env):
    store, paths, bus, events = env
    add_rows(store, 2)
    rm = manager(env, Worker("hang"))
    r1 = rm.maybe_start(step=0)
    wait_for(events, "training_progress", rm)  # the worker is mid-round
    pid = rm.workers()["smol-a"]
    rm.shutdown()  # what `agora run` does on Ctrl-C
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # terminated and reaped
    assert rm.in_flight() is None
    assert rs.round_row(store, r1)["status"] == "training"
    assert store.scalar("SELECT COUNT(*) FROM buffer WHERE round_id = ?", (r1,)) == 2
    assert not paths.adapter_dir("smol-a", 1).exists()

    serving = RecordingServing()
    rm2 = manager(env, Worker(), serving)
    rm2.resume()
    assert rm2.in_flight() == r1
    rm2.wait(60)
    assert rs.round_row(store, r1)["status"] == "live"
    assert stub_ids(paths, "smol-a", 1) == [1, 2]
    assert serving.live["smol-a"][0] == 1


def test_a_killed_worker_fails_its_member_and_the_round_is_retried(env):
    store, paths, bus, events = env
    add_rows(store, 2)
    rm = manager(env, Worker("hang"))
    r1 = rm.maybe_start(step=0)
    wait_for(events, "training_progress", rm)
    os.kill(rm.workers()["smol-a"], 9)
    failed = wait_for(events, "training_failed", rm)
    assert "worker exited with code -9" in failed["error"]
    rm.wait(60)
    assert rs.round_row(store, r1)["status"] == "pending"
    assert rm.maybe_start(step=1) == r1
    rm.wait(60)
    assert rs.round_row(store, r1)["status"] == "live"


def test_restart_puts_the_live_adapter_back_into_fresh_servers(env):
    store, paths, bus, events = env
    add_rows(store, 2)
    rm = manager(env, Worker(), RecordingServing())
    rm.maybe_start(step=0)
    rm.wait(60)
    restarted = RecordingServing()  # servers came back on the base weights
    manager(env, Worker(), restarted).resume()
    assert restarted.live["smol-a"] == (1, paths.adapter_dir("smol-a", 1))
    assert [e.get("restored") for e in events if e["kind"] == "adapter_live"] == [None, True]


def test_a_missing_round_or_adapter_row_is_a_store_error_naming_it(env):
    store, paths, _, _ = env
    add_rows(store, 2)
    r1 = rs.create_round(store, 0, ["smol-a"], paths.adapter_dir, limit=None)
    assert r1 is not None and rs.adapter_of(store, r1, "smol-a")["version"] == 1
    with pytest.raises(StoreError, match=f"training round {r1 + 1} is missing from the run store"):
        rs.round_row(store, r1 + 1)
    with pytest.raises(StoreError, match=f"adapter of 'smol-b' in training round {r1} is missing"):
        rs.adapter_of(store, r1, "smol-b")


def test_members_on_one_base_train_with_their_own_seeds(env):
    """smol-a and smol-b share a base and the round's rows; the specs the manager writes give
    each its own `training.seed` (from the run's seed and its name), which the trainer seeds from."""
    from agora_cli.training.data import member_seed
    from agora_cli.training.trainer import TrainSpec

    store, paths, bus, events = env
    add_rows(store, 3)
    cfg = make_cfg(threshold=2)
    rm = RoundManager(store, cfg, paths, None, bus, poll_interval_s=0.02, command=Worker())
    r1 = rm.maybe_start(step=0)
    rm.wait(60)
    specs = {
        m: TrainSpec.from_file(paths.root / "training" / f"round-{r1}" / f"{m}.spec.json")
        for m in ("smol-a", "smol-b")
    }
    assert specs["smol-a"].member_config["model"] == specs["smol-b"].member_config["model"]
    assert specs["smol-a"].samples == specs["smol-b"].samples  # same rows
    seeds = {m: s.training["seed"] for m, s in specs.items()}
    assert seeds == {m: member_seed(cfg.seed, cfg.training.seed, m) for m in specs}
    assert seeds["smol-a"] != seeds["smol-b"]


@pytest.mark.parametrize(("gpus", "at_once"), [(([0], [1]), 2), (([0], [0]), 1), ((None, None), 1)])
def test_members_on_gpus_of_their_own_train_at_once_others_one_at_a_time(
    env, tmp_path: Path, gpus: tuple, at_once: int
) -> None:
    """Two members whose trainers have a GPU each start together; sharing a GPU, or on CPUs, the
    second waits for the first to finish (the worker is given its GPUs; none need exist for the
    stub, which holds until released)."""
    store, paths, bus, events = env
    data = make_cfg(threshold=2).model_dump()
    for m, g in zip(data["members"], gpus, strict=True):
        m["train_gpus"] = g
    held = tmp_path / "held"
    held.mkdir()

    def hold(spec_path: Path) -> list[str]:
        return [sys.executable, str(STUB), str(spec_path), f"hold:{held}"]

    add_rows(store, 2)
    cfg = Config.model_validate(data)
    rm = RoundManager(store, cfg, paths, RecordingServing(), bus, poll_interval_s=0.02, command=hold)
    rm.maybe_start(step=0)
    deadline = time.monotonic() + 60
    while len(list(held.glob("*.json"))) < at_once:  # each started one is running, held
        assert time.monotonic() < deadline, "the workers did not start"
        rm.poll()
        time.sleep(0.05)
    rm.poll()
    started = [e["member"] for e in events if e["kind"] == "training_started"]
    (held / "release").touch()
    rm.wait(60)
    rm.shutdown()
    assert len(started) == at_once  # the workers running while the first was held
    assert adapter_status(store, "smol-a") == {1: "live"} and adapter_status(store, "smol-b") == {1: "live"}
