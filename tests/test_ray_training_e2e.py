"""One member's real PEFT LoRA rounds (SmolLM2-135M, two rows, short sequences) as Ray tasks on a
simulated two-node cluster: the worker agora runs locally trains on the node, the second round
continues the first's adapter shipped to the node, and both adapters come back into the run dir."""

from __future__ import annotations

import pytest
from ray.cluster_utils import Cluster

from agora_cli.training import round_store as rs
from agora_cli.training.rounds import RoundManager
from agora_cli.training.trainer import read_adapter_meta
from tests.test_ray_training import env, ray_cfg, two_nodes  # noqa: F401 - fixtures
from tests.test_rounds import RecordingServing, adapter_status, add_rows, round_rows

# A hang guard, not a timing assertion: the box is shared and training speed varies tenfold.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def test_real_rounds_train_as_ray_tasks_and_continue_the_previous_adapter(
    env,  # noqa: F811 - the fixture imported above
    two_nodes: Cluster,  # noqa: F811
) -> None:
    store, paths, bus, events = env
    add_rows(store, 4)
    serving = RecordingServing()
    rm = RoundManager(store, ray_cfg(), paths, serving, bus, members=["smol-a"], poll_interval_s=0.2)
    r1 = rm.maybe_start(step=0)
    rm.wait(600)
    r2 = rm.maybe_start(step=1)
    rm.wait(600)
    rm.shutdown()
    assert [rs.round_row(store, r)["status"] for r in (r1, r2)] == ["live", "live"], [
        rs.round_row(store, r)["error"] for r in (r1, r2)
    ]
    assert adapter_status(store, "smol-a") == {1: "retired", 2: "live"}
    v1, v2 = paths.adapter_dir("smol-a", 1), paths.adapter_dir("smol-a", 2)
    for v, r in ((v1, r1), (v2, r2)):
        assert (v / "adapter_model.safetensors").stat().st_size > 0
        assert read_adapter_meta(v)["buffer_ids"] == round_rows(store, r)
    assert round_rows(store, r1) == [1, 2] and round_rows(store, r2) == [3, 4]
    assert read_adapter_meta(v2)["previous_adapter"] == str(v1)  # the lineage, on the driver's disk
    assert serving.live["smol-a"] == (2, v2)
    steps = [e for e in events if e["kind"] == "training_progress" and e.get("step")]
    assert {e["round"] for e in steps} == {r1, r2} and all(e["loss"] > 0 for e in steps)
    for r in (r1, r2):  # sent while the task ran or with its result, each step once
        seen = [e["step"] for e in steps if e["round"] == r]
        assert seen == sorted(set(seen)), seen
