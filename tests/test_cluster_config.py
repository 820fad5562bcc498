"""The `cluster` section and replica URL lists: validation only (no Ray, no server)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from agora_cli.config import config_from_dict
from agora_cli.errors import ConfigError
from agora_cli.paths import RunPaths
from agora_cli.serving import Serving

pytestmark = pytest.mark.unit

BASE = "org/base-a"


def _cfg(backend: dict[str, Any], cluster: dict[str, Any] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "c",
        "backends": {"gpu": backend, "api": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "members": [{"name": n, "model": BASE, "backend": "gpu"} for n in ("a", "b")],
        "evaluation": {"calibration": "gsm8k"},
    }
    if cluster is not None:
        data["cluster"] = cluster
    return data


def _problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as e:
        config_from_dict(data)
    return e.value.problems


def test_replica_urls_are_a_list_and_one_url_is_still_accepted() -> None:
    one = config_from_dict(_cfg({"kind": "sglang", "launch": False, "urls": {BASE: "http://h1:30000"}}))
    many = config_from_dict(
        _cfg({"kind": "vllm", "launch": False, "urls": {BASE: ["http://h1:8000", "http://h2:8000"]}})
    )
    assert one.backends["gpu"].urls == {BASE: ["http://h1:30000"]}  # type: ignore[union-attr]
    assert many.backends["gpu"].urls == {BASE: ["http://h1:8000", "http://h2:8000"]}  # type: ignore[union-attr]


def test_an_empty_replica_list_is_refused() -> None:
    problems = _problems(_cfg({"kind": "sglang", "launch": False, "urls": {BASE: []}}))
    assert [p for p, _ in problems] == [f"backends.gpu.urls.{BASE}"]


def test_no_cluster_is_one_machine_and_imports_no_ray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # any `import ray` from here on raises
    cfg = config_from_dict(_cfg({"kind": "sglang"}))
    assert cfg.cluster is None
    serving = Serving(cfg, RunPaths(tmp_path / "run"))
    assert serving.backends["gpu"].placement is None  # type: ignore[attr-defined]
    assert serving.describe()  # plans the one local server


def test_a_ray_cluster_with_replicas_per_backend() -> None:
    cfg = config_from_dict(
        _cfg(
            {"kind": "sglang"},
            {
                "kind": "ray",
                "address": "ray://head.lab:10001",
                "runtime_env": {"env_vars": {"HF_HOME": "/shared/hf"}},
                "backends": {"gpu": {"replicas": 4, "placement": "SPREAD", "num_gpus": 0.5}},
            },
        )
    )
    assert cfg.cluster is not None
    spec = cfg.cluster.backends["gpu"]
    assert (cfg.cluster.address, spec.replicas, spec.placement, spec.num_gpus) == (
        "ray://head.lab:10001",
        4,
        "SPREAD",
        0.5,
    )
    assert cfg.cluster.runtime_env == {"env_vars": {"HF_HOME": "/shared/hf"}}
    assert config_from_dict(_cfg({"kind": "vllm"}, {"kind": "ray"})).cluster.address == "auto"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("cluster", "path", "words"),
    [
        ({"kind": "slurm"}, "cluster.kind", "'ray'"),
        ({"address": "head.lab:10001"}, "cluster.address", "ray://HOST:PORT"),
        ({"address": "ray://head.lab"}, "cluster.address", "ray://HOST:PORT"),
        (
            {"backends": {"gpu": {"replicas": 0}}},
            "cluster.backends.gpu.replicas",
            "greater than or equal to 1",
        ),
        ({"backends": {"gpu": {"placement": "STRICT_SPREAD"}}}, "cluster.backends.gpu.placement", "PACK"),
        ({"backends": {"gpu": {"num_gpus": 1.5}}}, "cluster.backends.gpu.num_gpus", "whole number"),
        (
            {"backends": {"gpu": {"num_gpus": -1}}},
            "cluster.backends.gpu.num_gpus",
            "greater than or equal to 0",
        ),
        ({"backends": {"gpu": {"gpus": 1}}}, "cluster.backends.gpu.gpus", "unknown setting"),
        ({"backends": {"nope": {}}}, "cluster.backends.nope", "unknown backend 'nope'"),
        ({"backends": {"api": {}}}, "cluster.backends.api", "sglang or vllm"),
        ({"adapters": "nfs"}, "cluster.adapters", "'object_store', 'shared' or 's3'"),
        ({"adapters": "s3"}, "cluster", "needs an s3 section"),
        ({"adapters": "s3", "s3": {"bucket": ""}}, "cluster.s3.bucket", "at least 1 character"),
        ({"s3": {"bucket": "b", "secret_key": "x"}}, "cluster.s3.secret_key", "unknown setting"),
        ({"max_restarts": -2}, "cluster.max_restarts", "greater than or equal to -1"),
    ],
)
def test_bad_cluster_settings_name_their_path(cluster: dict[str, Any], path: str, words: str) -> None:
    problems = _problems(_cfg({"kind": "sglang"}, cluster))
    assert [p for p, _ in problems] == [path]
    assert words in problems[0][1]


def test_ray_replicas_of_servers_started_elsewhere_are_refused() -> None:
    problems = _problems(
        _cfg(
            {"kind": "sglang", "launch": False, "urls": {BASE: "http://h1:30000"}}, {"backends": {"gpu": {}}}
        )
    )
    assert problems == [("cluster.backends.gpu", problems[0][1])]
    assert "launch: false" in problems[0][1]


def test_adapters_go_through_the_object_store_unless_told_otherwise() -> None:
    plain = config_from_dict(_cfg({"kind": "sglang"}, {"kind": "ray"})).cluster
    s3 = config_from_dict(
        _cfg(
            {"kind": "sglang"},
            {"adapters": "s3", "s3": {"bucket": "lab", "endpoint_url": "http://127.0.0.1:9000"}},
        )
    ).cluster
    assert plain is not None and (plain.adapters, plain.s3, plain.max_restarts) == ("object_store", None, -1)
    assert s3 is not None and s3.s3 is not None
    assert (s3.adapters, s3.s3.bucket, s3.s3.prefix) == ("s3", "lab", "agora")
