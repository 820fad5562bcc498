"""Which GPUs each member's trainer gets (training/devices.py), and that the worker is given them."""

from __future__ import annotations

from pathlib import Path

import pytest

from agora_cli.config import Config, load_config
from agora_cli.training import rounds
from agora_cli.training.devices import server_gpus, training_gpus, worker_env
from agora_cli.training.rounds import LocalWorkers

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]


def test_homogeneous_groups_train_each_member_beside_its_own_server() -> None:
    data = load_config(REPO / "configs/homogeneous-1b.yaml").model_dump()
    bases = [m["model"] for m in data["members"]]
    data["backends"]["sglang"]["cuda_visible_devices"] = {b: str(i) for i, b in enumerate(bases)}
    cfg = Config.model_validate(data)  # one server per GPU 0-2, no GPU left free
    gpus = training_gpus(cfg, ["0", "1", "2"])
    assert gpus == {m.name: server_gpus(cfg)[m.name] for m in cfg.members}
    assert sorted(g for v in gpus.values() for g in v) == ["0", "1", "2"]  # none idle


def test_gpus_no_server_uses_are_shared_out_round_robin() -> None:
    cfg = load_config(REPO / "configs/paper-mixed.yaml")  # every server on the default GPU
    assert {g for v in server_gpus(cfg).values() for g in v} == {"0"}
    gpus = training_gpus(cfg, ["0", "1", "2", "3"])
    assert [gpus[m.name] for m in cfg.members] == [["1"], ["2"], ["3"], ["1"]][: len(cfg.members)]
    one_gpu = training_gpus(cfg, ["0"])  # nothing free: the servers' GPU
    assert all(v == ["0"] for v in one_gpu.values())


def test_configured_gpus_win_and_a_cpu_machine_is_left_alone() -> None:
    cfg = load_config(REPO / "configs/paper-mixed.yaml")
    data = cfg.model_dump()
    data["members"][0]["train_gpus"] = [2, 3]
    data["training"]["num_gpus"] = 2
    cfg2 = Config.model_validate(data)
    gpus = training_gpus(cfg2, ["0", "1", "2", "3"])
    assert gpus[cfg2.members[0].name] == ["2", "3"]
    assert gpus[cfg2.members[1].name] == ["1", "2"]  # two each from the free ones
    tiny = load_config(REPO / "configs/tiny.yaml")
    assert training_gpus(tiny, []) == {}  # CPU: the worker's environment unchanged
    assert worker_env(None) == {} and worker_env(["1", "2"]) == {"CUDA_VISIBLE_DEVICES": "1,2"}


def _workers(train_gpus: dict[str, list[int]], visible: list[str], monkeypatch) -> LocalWorkers:  # noqa: ANN001
    data = load_config(REPO / "configs/paper-mixed.yaml").model_dump()
    for m in data["members"]:
        m["train_gpus"] = train_gpus.get(m["name"])
    monkeypatch.setattr(rounds, "visible_gpus", lambda: visible)
    return LocalWorkers(Config.model_validate(data), command=lambda spec: [])


def test_members_with_gpus_of_their_own_train_at_once(monkeypatch) -> None:  # noqa: ANN001
    names = [m.name for m in load_config(REPO / "configs/paper-mixed.yaml").members]
    a, b, c = names[:3]
    own = _workers({n: [i] for i, n in enumerate(names)}, ["0", "1", "2", "3"], monkeypatch)
    assert own.can_start(c, [a, b])  # no GPU shared: all at once
    shared = _workers({a: [0], b: [1, 2], c: [2]}, ["0", "1", "2", "3"], monkeypatch)
    assert shared.can_start(b, [a]) and not shared.can_start(c, [b])  # GPU 2 is b's
    assert shared.can_start(c, [a])
    cpu = _workers({}, [], monkeypatch)  # a CPU machine: no member has GPUs
    assert cpu.can_start(a, []) and not cpu.can_start(b, [a])  # one trainer at a time
    half = _workers({a: [0]}, [], monkeypatch)  # b trains on CPU: it waits, and blocks the rest
    assert not half.can_start(b, [a]) and not half.can_start(a, [b])
