"""Training rounds as Ray tasks on a simulated two-node Ray cluster (`ray.cluster_utils.Cluster`,
one CPU per node): members train in parallel on different nodes, adapters come back through the
object store into the run directory, and a task whose process is killed is re-run by Ray on the
same rows. The worker is tests/fakes/stub_worker.py (no model), run by agora's own task."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray  # the ray extra (in dev too): pip install 'agora-cli[ray]'
from ray.cluster_utils import Cluster

from agora_cli.config import config_from_dict
from agora_cli.events import EventBus
from agora_cli.paths import RunPaths
from agora_cli.store import Store
from agora_cli.training import round_store as rs
from agora_cli.training.rounds import RoundManager
from tests.ray_nodes import two_simulated_nodes
from tests.test_rounds import SMOL, RecordingServing, adapter_status, add_rows, round_rows

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
STUB = str(Path(__file__).parent / "fakes" / "stub_worker.py")


@pytest.fixture
def two_nodes() -> Iterator[Cluster]:
    with two_simulated_nodes() as cluster:
        yield cluster


@pytest.fixture
def env(run_dir: Path):
    store = Store(RunPaths(run_dir).store)
    events: list[dict] = []
    yield store, RunPaths(run_dir).ensure(), EventBus([events.append]), events
    store.close()


def ray_cfg(max_retries: int = 2):
    return config_from_dict(
        {
            "name": "ray-rounds",
            "members": [{"name": "smol-a", "model": SMOL}, {"name": "smol-b", "model": SMOL}],
            "protocol": {"buffer_threshold": 2},
            "training": {"r": 4, "alpha": 8, "max_length": 96, "max_threads": 1},
            "cluster": {
                "kind": "ray",
                "address": "auto",
                "training": {"num_gpus": 0, "num_cpus": 1, "max_retries": max_retries},
            },
        }
    )


def hold_stub(held: Path):  # noqa: ANN201 - the command, pickled by value into each task
    """The worker command: the stub in `hold` mode (it reports itself in `held`, then waits)."""
    mode = f"hold:{held}"
    return lambda spec_path: [sys.executable, STUB, str(spec_path), mode]


def wait_for_files(held: Path, n: int, timeout: float = 120) -> list[dict]:
    """The reports of the first `n` stub workers to start (a hang guard, not a timing check)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(held.glob("*.json"), key=lambda p: p.stat().st_mtime)
        if len(found) >= n:
            return [{"member": p.name.split(".")[0], **json.loads(p.read_text())} for p in found]
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} workers started in {timeout} s")


def parent_of(pid: int) -> int:
    """A process's parent pid, from /proc (the field after the parenthesised command name)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def adapter_ids(paths: RunPaths, member: str, version: int) -> list[int]:
    return json.loads((paths.adapter_dir(member, version) / "stub.json").read_text())["buffer_ids"]


def metrics(store: Store, member: str, version: int) -> dict:
    row = store.one("SELECT metrics FROM adapters WHERE member = ? AND version = ?", (member, version))
    return json.loads(row["metrics"])


def test_members_train_as_ray_tasks_on_both_nodes_and_adapters_come_back(
    env, two_nodes: Cluster, tmp_path: Path
) -> None:
    store, paths, bus, events = env
    held = tmp_path / "held"
    held.mkdir()
    add_rows(store, 2)
    serving = RecordingServing()
    rm = RoundManager(store, ray_cfg(), paths, serving, bus, poll_interval_s=0.05, command=hold_stub(held))
    r1 = rm.maybe_start(step=0)
    started = wait_for_files(held, 2)  # both at once: all members train in parallel by default
    assert sorted(s["member"] for s in started) == ["smol-a", "smol-b"]
    # Each worker's progress line reaches the run while its task still runs (the live view's
    # training bar), not only when the task returns.
    deadline = time.monotonic() + 60
    while {e["member"] for e in events if e["kind"] == "training_progress"} != {"smol-a", "smol-b"}:
        assert time.monotonic() < deadline, "no progress from the running tasks in 60 s"
        rm.poll()
        time.sleep(0.1)
    assert not (paths.adapter_dir("smol-a", 1) / "adapter_config.json").exists()  # still running
    (held / "release").touch()
    rm.wait(120)
    add_rows(store, 2)
    r2 = rm.maybe_start(step=1)  # continues each member's v1, which must reach the node
    rm.wait(120)
    rm.shutdown()
    assert rs.round_row(store, r1)["status"] == "live"
    assert round_rows(store, r1) == [1, 2]
    for member in ("smol-a", "smol-b"):
        assert adapter_status(store, member) == {1: "retired", 2: "live"}
        # The adapter was written on the node, in its temp dir, and unpacked into the run dir.
        assert adapter_ids(paths, member, 1) == [1, 2]
        assert metrics(store, member, 1)["task_attempt"] == 1
        # Round 2's worker read v1 from a copy on its node, not from the driver's run dir.
        previous = json.loads((paths.adapter_dir(member, 2) / "stub.json").read_text())["previous"]
        assert previous["files"] == ["adapter_config.json", "stub.json"]
        assert not previous["path"].startswith(str(paths.root))
        assert adapter_ids(paths, member, 2) == round_rows(store, r2) == [3, 4]
        assert serving.live[member] == (2, paths.adapter_dir(member, 2))
    assert not list(paths.adapter_dir("smol-a", 1).parent.glob(".*tmp-*"))  # unpacked atomically
    nodes = {metrics(store, m, 1)["node"] for m in ("smol-a", "smol-b")}
    assert nodes == {n["NodeID"] for n in ray.nodes() if n["Alive"]}  # one member on each node
    kinds = [e["kind"] for e in events if e["kind"].startswith(("training", "adapter"))]
    # Each stub wrote one progress line: sent while it ran, never again with the result.
    assert kinds.count("training_progress") == 4 and kinds.count("adapter_live") == 4
    assert "training_retried" not in kinds


def test_a_killed_training_task_is_rerun_by_ray_with_the_same_rows(
    env, two_nodes: Cluster, tmp_path: Path
) -> None:
    store, paths, bus, events = env
    held = tmp_path / "held"
    held.mkdir()
    add_rows(store, 3)
    rm = RoundManager(
        store,
        ray_cfg(),
        paths,
        RecordingServing(),
        bus,
        members=["smol-a"],
        poll_interval_s=0.05,
        command=hold_stub(held),
    )
    r1 = rm.maybe_start(step=0)
    [first] = wait_for_files(held, 1)
    guard = parent_of(first["pid"])  # the stub runs under agora's guard, a child of the task's process
    task_process = parent_of(guard)
    os.kill(task_process, signal.SIGKILL)  # the Ray worker running the task dies mid-round
    deadline = time.monotonic() + 30  # the guard stops the orphaned worker (a hang guard)
    while alive(first["pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(first["pid"])  # before the release: it could not have exited on its own
    (held / "release").touch()
    rm.wait(120)
    rm.shutdown()
    row = rs.round_row(store, r1)
    assert row["status"] == "live", row["error"]
    assert row["attempts"] == 1  # Ray re-ran the task; the round itself was not retried
    assert metrics(store, "smol-a", 1)["task_attempt"] == 2
    reserved = round_rows(store, r1)
    assert reserved == [1, 2]
    runs = wait_for_files(held, 2)
    assert [r["buffer_ids"] for r in runs] == [reserved, reserved]  # each attempt, the same rows
    assert adapter_ids(paths, "smol-a", 1) == reserved  # the adapter is the retry's
    assert json.loads((paths.adapter_dir("smol-a", 1) / "stub.json").read_text())["pid"] == runs[1]["pid"]
    assert not Path(first["spec"]).parent.exists()  # the retry removed the killed task's temp dir
    retried = [e for e in events if e["kind"] == "training_retried"]
    assert [(e["member"], e["task_attempt"]) for e in retried] == [("smol-a", 2)]


def test_shutdown_cancels_the_tasks_and_leaves_the_round_retriable(
    env, two_nodes: Cluster, tmp_path: Path
) -> None:
    store, paths, bus, events = env
    held = tmp_path / "held"
    held.mkdir()
    add_rows(store, 2)
    rm = RoundManager(store, ray_cfg(), paths, None, bus, poll_interval_s=0.05, command=hold_stub(held))
    r1 = rm.maybe_start(step=0)
    started = wait_for_files(held, 2)
    rm.shutdown()  # e.g. Ctrl-C: the tasks are cancelled, their workers stopped by their guards
    deadline = time.monotonic() + 30  # a hang guard
    while any(alive(s["pid"]) for s in started) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [s["pid"] for s in started if alive(s["pid"])]
    assert rs.retriable_round(store)["id"] == r1  # the next run retries it, with its rows
    assert adapter_status(store, "smol-a") == {1: "training"}
    assert not paths.adapter_dir("smol-a", 1).exists()
