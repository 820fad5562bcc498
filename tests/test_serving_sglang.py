"""The sglang backend against a fake SGLang server (real HTTP), and its launch command lines."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agora_cli.cli import app
from agora_cli.config import Sampling, config_from_dict
from agora_cli.errors import ServerError
from agora_cli.events import EventBus
from agora_cli.paths import RunPaths
from agora_cli.serving import Serving
from tests.fakes.sglang_server import FakeSGLang

BASE_A = "org/base-a"  # hub ids pass through `prepare` unchanged
BASE_B = "org/base-b"


def _cfg(backend: dict, members: list[tuple[str, str]]) -> dict:
    return {
        "name": "sg",
        "backends": {"gpu": {"kind": "sglang", **backend}},
        "members": [{"name": n, "model": m, "backend": "gpu"} for n, m in members],
        "evaluation": {"calibration": "gsm8k"},
        "protocol": {"generators_per_step": 2},
    }


def _adapter(tmp_path: Path, name: str) -> Path:
    d = tmp_path / "adapters" / name
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text("{}")
    return d


@pytest.mark.unit
def test_launch_commands_one_server_per_base_model(tmp_path: Path) -> None:
    cfg = config_from_dict(
        _cfg(
            {
                "base_port": 31000,
                "max_lora_rank": 32,
                "lora_target_modules": ["q_proj", "v_proj"],
                "max_loras_per_batch": 4,
                "tp_size": 2,
                "python": "python3",
            },
            [("a1", BASE_A), ("a2", BASE_A), ("b1", BASE_B)],
        )
    )
    lines = Serving(cfg, RunPaths(tmp_path)).describe()
    key_file = tmp_path.resolve() / "sglang-gpu.yaml"  # holds the API key, written at start (0600)
    assert lines == [
        "[gpu] python3 -m sglang.launch_server --model-path org/base-a --host 127.0.0.1 "
        "--port 31000 --tp-size 2 --enable-lora --max-lora-rank 32 --lora-target-modules "
        f"q_proj v_proj --max-loras-per-batch 4 --mem-fraction-static 0.342 --config {key_file}    # a1, a2",
        "[gpu] python3 -m sglang.launch_server --model-path org/base-b --host 127.0.0.1 "
        "--port 31001 --tp-size 2 --enable-lora --max-lora-rank 32 --lora-target-modules "
        f"q_proj v_proj --max-loras-per-batch 4 --mem-fraction-static 0.392 --config {key_file}    # b1",
    ]


@pytest.mark.integration
def test_load_switch_unload_sequence_and_routing(tmp_path: Path) -> None:
    """Load, switch, serve on the new adapter; the old one, with no request in flight, is
    unloaded at the switch."""
    with FakeSGLang(BASE_A) as fake:
        cfg = config_from_dict(
            _cfg({"launch": False, "urls": {BASE_A: fake.url}}, [("a1", BASE_A), ("a2", BASE_A)])
        )
        events: list[dict] = []
        with Serving(cfg, RunPaths(tmp_path / "run"), EventBus([events.append])) as serving:
            assert serving.endpoint("a1").model == BASE_A
            v1, v2 = _adapter(tmp_path, "a1-v1"), _adapter(tmp_path, "a1-v2")

            ep = serving.activate("a1", v1, 1)
            assert ep.model == f"{BASE_A}:a1-v1"
            assert ep.base_url == f"{fake.url}/v1"
            serving.activate("a1", v2, 2)
            serving.backends["gpu"].lora.finish()  # the unload runs in the background

            pool = serving.client_pool()

            async def ask() -> list[str]:
                s = Sampling(max_tokens=8)
                msgs = [{"role": "user", "content": "hi"}]
                out = [(await pool.chat(m, msgs, s)).text for m in ("a1", "a2")]
                await pool.aclose()
                return out

            replies = asyncio.run(ask())
        assert replies == ["served by a1-v2", "served by base"]
        assert fake.calls == [
            ("load", "a1-v1"),
            ("load", "a1-v2"),
            ("unload", "a1-v1"),
            ("chat", "a1-v2"),
            ("chat", "base"),
        ]
        assert fake.adapters == {"a1-v2": str(v2.resolve())}
        assert not [e for e in events if e["kind"] == "adapter_unload_failed"]


@pytest.mark.integration
def test_already_loaded_same_path_is_treated_as_loaded(tmp_path: Path) -> None:
    """A retried activation (the server kept the adapter from the first attempt) succeeds."""
    with FakeSGLang(BASE_A) as fake:
        cfg = config_from_dict(
            _cfg({"launch": False, "urls": {BASE_A: fake.url}}, [("a1", BASE_A), ("a2", BASE_A)])
        )
        v1 = _adapter(tmp_path, "a1-v1")
        fake.adapters["a1-v1"] = str(v1.resolve())  # left over from an earlier attempt
        with Serving(cfg, RunPaths(tmp_path / "run")) as serving:
            ep = serving.activate("a1", v1, 1)
        assert ep.model == f"{BASE_A}:a1-v1"
        assert fake.calls == [("load", "a1-v1")]


@pytest.mark.integration
def test_already_loaded_from_another_path_is_an_error(tmp_path: Path) -> None:
    with FakeSGLang(BASE_A) as fake:
        cfg = config_from_dict(
            _cfg({"launch": False, "urls": {BASE_A: fake.url}}, [("a1", BASE_A), ("a2", BASE_A)])
        )
        other = _adapter(tmp_path, "other")
        fake.adapters["a1-v1"] = str(other.resolve())
        with Serving(cfg, RunPaths(tmp_path / "run")) as serving:
            with pytest.raises(ServerError, match="already loaded"):
                serving.activate("a1", _adapter(tmp_path, "a1-v1"), 1)
            assert serving.endpoint("a1").model == BASE_A  # not switched


@pytest.mark.integration
def test_missing_adapter_path_is_refused_and_member_keeps_its_model(tmp_path: Path) -> None:
    with FakeSGLang(BASE_A) as fake:
        cfg = config_from_dict(
            _cfg({"launch": False, "urls": {BASE_A: fake.url}}, [("a1", BASE_A), ("a2", BASE_A)])
        )
        with Serving(cfg, RunPaths(tmp_path / "run")) as serving:
            serving.activate("a1", _adapter(tmp_path, "v1"), 1)
            with pytest.raises(ServerError, match="refused adapter a1-v2"):
                serving.activate("a1", tmp_path / "nope", 2)
            assert serving.endpoint("a1").model == f"{BASE_A}:a1-v1"
        assert ("unload", "a1-v1") not in fake.calls


@pytest.mark.integration
def test_unload_failure_does_not_undo_activation(tmp_path: Path) -> None:
    with FakeSGLang(BASE_A) as fake:
        cfg = config_from_dict(
            _cfg({"launch": False, "urls": {BASE_A: fake.url}}, [("a1", BASE_A), ("a2", BASE_A)])
        )
        events: list[dict] = []
        with Serving(cfg, RunPaths(tmp_path / "run"), EventBus([events.append])) as serving:
            serving.activate("a1", _adapter(tmp_path, "v1"), 1)
            del fake.adapters["a1-v1"]  # someone unloaded it behind our back
            ep = serving.activate("a1", _adapter(tmp_path, "v2"), 2)
        assert ep.model == f"{BASE_A}:a1-v2"
        failed = [e for e in events if e["kind"] == "adapter_unload_failed"]
        assert [e["lora_name"] for e in failed] == ["a1-v1"]


@pytest.mark.integration
def test_slow_unload_does_not_fail_the_activation(tmp_path: Path) -> None:
    """SGLang's unload waits for the old adapter's in-flight requests; a client
    timeout there must not mark the activation failed, since the new adapter already answers."""
    with FakeSGLang(BASE_A, unload_delay_s=3.0) as fake:
        cfg = config_from_dict(
            _cfg(
                {"launch": False, "urls": {BASE_A: fake.url}, "startup_timeout_s": 0.5},
                [("a1", BASE_A), ("a2", BASE_A)],
            )
        )
        events: list[dict] = []
        with Serving(cfg, RunPaths(tmp_path / "run"), EventBus([events.append])) as serving:
            serving.activate("a1", _adapter(tmp_path, "v1"), 1)
            ep = serving.activate("a1", _adapter(tmp_path, "v2"), 2)
            assert ep.model == f"{BASE_A}:a1-v2"
            assert serving.endpoint("a1").model == f"{BASE_A}:a1-v2"
        failed = [e for e in events if e["kind"] == "adapter_unload_failed"]
        assert [e["lora_name"] for e in failed] == ["a1-v1"]
        assert "no answer" in failed[0]["error"]


@pytest.mark.unit
def test_external_server_without_url_is_a_clear_error(tmp_path: Path) -> None:
    cfg = config_from_dict(_cfg({"launch": False}, [("a1", BASE_A), ("a2", BASE_A)]))
    with pytest.raises(ServerError, match="no URL for base model"):
        Serving(cfg, RunPaths(tmp_path)).start()


@pytest.mark.integration
def test_models_ping_on_fake_sglang(tmp_path: Path) -> None:
    with FakeSGLang(BASE_A) as fake:
        config = tmp_path / "sg.yaml"
        import yaml

        config.write_text(
            yaml.safe_dump(
                _cfg({"launch": False, "urls": {BASE_A: fake.url}}, [("a1", BASE_A), ("a2", BASE_A)])
            )
        )
        result = CliRunner().invoke(app, ["models", "ping", str(config), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "served by base" in result.output
    assert sorted(c for c in fake.calls if c[0] == "chat") == [("chat", "base")] * 2


@pytest.mark.integration
def test_second_serving_attaches_to_recorded_servers(tmp_path: Path) -> None:
    """`agora serve` writes the servers file; later commands attach instead of launching."""
    with FakeSGLang(BASE_A) as fake:
        cfg = config_from_dict(
            _cfg({"launch": False, "urls": {BASE_A: fake.url}}, [("a1", BASE_A), ("a2", BASE_A)])
        )
        paths = RunPaths(tmp_path / "run")
        with Serving(cfg, paths) as server:
            server.activate("a1", _adapter(tmp_path, "v3"), 3)
            server.write_servers_file()
            with Serving(cfg, paths) as client:
                assert client.attached
                assert client.endpoint("a1").model == f"{BASE_A}:a1-v3"
                assert client.endpoint("a2").model == BASE_A
            assert paths.servers.exists()  # only the writer removes it
        assert not paths.servers.exists()


@pytest.mark.integration
def test_stale_servers_file_is_ignored(tmp_path: Path) -> None:
    import json

    with FakeSGLang(BASE_A) as fake:
        cfg = config_from_dict(
            _cfg({"launch": False, "urls": {BASE_A: fake.url}}, [("a1", BASE_A), ("a2", BASE_A)])
        )
        paths = RunPaths(tmp_path / "run")
        paths.root.mkdir(parents=True)
        dead_pid = 2**22 + 12345  # above pid_max: no such process
        paths.servers.write_text(
            json.dumps(
                {
                    "pid": dead_pid,
                    "backends": {
                        "gpu": {"kind": "sglang", "servers": {BASE_A: fake.url}, "adapters": {"a1": "a1-v9"}}
                    },
                }
            )
        )
        with Serving(cfg, paths) as serving:
            assert not serving.attached
            assert serving.endpoint("a1").model == BASE_A
