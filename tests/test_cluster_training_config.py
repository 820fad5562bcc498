"""`cluster.training`: training rounds as Ray tasks. Validation, and which workers a config gets
(no Ray, no process: the Ray path itself runs in test_ray_training.py)."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from agora_cli.config import config_from_dict
from agora_cli.errors import ConfigError
from agora_cli.events import NULL_BUS
from agora_cli.training.rounds import LocalWorkers, workers_for

pytestmark = pytest.mark.unit


def _cfg(cluster: dict[str, Any] | None, training: dict[str, Any] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "c",
        "members": [{"name": n, "model": "org/base-a"} for n in ("a", "b", "c")],
        "training": training or {},
    }
    if cluster is not None:
        data["cluster"] = cluster
    return data


def _problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as e:
        config_from_dict(data)
    return e.value.problems


def test_training_section_defaults() -> None:
    cfg = config_from_dict(_cfg({"kind": "ray", "training": {}}))
    assert cfg.cluster is not None and cfg.cluster.training is not None
    t = cfg.cluster.training
    # num_gpus unset: the task asks for training.num_gpus; all members at once; Ray retries twice.
    assert (t.num_gpus, t.num_cpus, t.max_parallel, t.max_retries) == (None, 1.0, None, 2)


def test_a_cluster_without_training_keeps_rounds_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # any `import ray` from here on raises
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU probe (nvidia-smi) in the unit tier
    for data in (_cfg(None), _cfg({"kind": "ray", "address": "auto"})):
        cfg = config_from_dict(data)
        assert cfg.cluster is None or cfg.cluster.training is None
        runner, _ = workers_for(cfg, None, NULL_BUS)
        first, second = (m.name for m in cfg.members[:2])
        assert isinstance(runner, LocalWorkers)
        assert not runner.can_start(second, [first])  # no GPUs here: one local worker at a time


def test_several_gpus_per_task_follow_accelerate() -> None:
    unset = config_from_dict(_cfg({"training": {}}, {"num_gpus": 4}))
    same = config_from_dict(_cfg({"training": {"num_gpus": 4}}, {"num_gpus": 4}))
    shared = config_from_dict(_cfg({"training": {"num_gpus": 0.5, "max_parallel": 2, "max_retries": 0}}))
    assert unset.cluster.training.num_gpus is None  # type: ignore[union-attr]
    assert same.cluster.training.num_gpus == 4  # type: ignore[union-attr]
    t = shared.cluster.training  # type: ignore[union-attr]
    assert (t.num_gpus, t.max_parallel, t.max_retries) == (0.5, 2, 0)


@pytest.mark.parametrize(
    ("training", "path", "words"),
    [
        ({"num_gpus": 1.5}, "cluster.training.num_gpus", "whole number"),
        ({"num_gpus": -1}, "cluster.training.num_gpus", "greater than or equal to 0"),
        ({"num_cpus": 0}, "cluster.training.num_cpus", "greater than 0"),
        ({"max_parallel": 0}, "cluster.training.max_parallel", "greater than or equal to 1"),
        ({"max_retries": -1}, "cluster.training.max_retries", "greater than or equal to 0"),
        ({"gpus": 1}, "cluster.training.gpus", "unknown setting"),
    ],
)
def test_bad_training_settings_name_their_path(training: dict[str, Any], path: str, words: str) -> None:
    problems = _problems(_cfg({"training": training}))
    assert [p for p, _ in problems] == [path]
    assert words in problems[0][1]


def test_a_task_must_hold_the_gpus_accelerate_spreads_over() -> None:
    problems = _problems(_cfg({"training": {"num_gpus": 1}}, {"num_gpus": 2}))
    assert [p for p, _ in problems] == ["cluster.training.num_gpus"]
    assert "training.num_gpus is 2" in problems[0][1] and "set both to 2" in problems[0][1]


def test_a_run_resumes_on_a_cluster_or_off_it_as_it_is() -> None:
    """Where servers and trainers run changes no result: adding, changing or removing the cluster
    section is no config change for a resume; the group and protocol still are."""
    from agora_cli.runner import config_diff

    one_machine: dict[str, Any] = {"protocol": {"elite_k": 3}, "cluster": None}
    on_ray = {
        "protocol": {"elite_k": 3},
        "cluster": {"kind": "ray", "backends": {"vllm": {"replicas": 2}}, "training": {"num_gpus": 1}},
    }
    assert config_diff(one_machine, on_ray) == []
    assert config_diff(on_ray, one_machine) == []
    assert config_diff({"protocol": {"elite_k": 3}}, on_ray) == []  # stored before the section
    changed = {**on_ray, "protocol": {"elite_k": 5}}
    assert [k for k, _ in config_diff(one_machine, changed)] == ["protocol.elite_k"]
