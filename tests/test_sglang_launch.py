"""SGLang on agora's side: launch plan (order, memory fractions, per-member flags,
interpreter), config validation, adapter checks before loading, request body extras, readiness and
the API key. The engine's own acceptance of all this is tests/test_sglang_contract.py."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agora_cli.cli import app
from agora_cli.config import Sampling, config_from_dict
from agora_cli.errors import ConfigError, ServerError
from agora_cli.paths import RunPaths
from agora_cli.serving import Serving
from tests.fakes.sglang_server import FakeSGLang

BASE = "org/base-a"


def _cfg(backend: dict, members: list[dict], **top: object) -> dict:
    return {
        "name": "sg",
        "backends": {"gpu": {"kind": "sglang", **backend}},
        "members": [{"backend": "gpu", **m} for m in members],
        "evaluation": {"calibration": "gsm8k"},
        "protocol": {"generators_per_step": 2},
        **top,
    }


def _problems(data: dict) -> str:
    with pytest.raises(ConfigError) as e:
        config_from_dict(data)
    return str(e.value)


@pytest.mark.unit
def test_paper_mixed_dry_run_starts_servers_in_order_and_they_fit_one_gpu() -> None:
    r = CliRunner().invoke(app, ["serve", "configs/paper-mixed.yaml", "--dry-run"])
    assert r.exit_code == 0, r.output
    lines = [x for x in r.output.splitlines() if "sglang.launch_server" in x]
    assert len(lines) == 4
    ports = [int(re.search(r"--port (\d+)", x).group(1)) for x in lines]
    assert ports == sorted(ports)  # printed in start order
    fractions = [float(re.search(r"--mem-fraction-static ([\d.]+)", x).group(1)) for x in lines]
    free, taken = 1.0, []
    for f in fractions:  # SGLang takes f of the memory free when it starts
        taken.append(f * free)
        free -= f * free
    assert sum(taken) == pytest.approx(0.65, abs=0.005)  # the rest is the trainer's
    # Shares follow need (weights + KV cache), not equal splits: Gemma-3-4B's 8 GiB of weights
    # and larger KV per token get more of the GPU than Qwen3-1.7B.
    share = {re.search(r"--model-path (\S+)", x).group(1): t for x, t in zip(lines, taken, strict=True)}
    assert share["google/gemma-3-4b-it"] > share["Qwen/Qwen3-1.7B"] + 0.05
    assert lines[0].split()[1] == sys.executable or sys.executable in lines[0]
    bitcpm = next(x for x in lines if "BitCPM4" in x)  # its facts (agora_cli/model_facts.py)
    assert "--trust-remote-code" in bitcpm and re.search(r"--chat-template \S+/chatml\.jinja", bitcpm)


@pytest.mark.unit
def test_memory_shares_per_base_and_per_device(tmp_path: Path) -> None:
    cfg = config_from_dict(
        _cfg(
            {
                "memory_shares": {"b": 0.3, "org/base-c": 0.1},
                "gpu_memory_for_servers": 0.6,
                "cuda_visible_devices": {"org/base-d": "1"},
            },
            [
                {"name": "a", "model": BASE},
                {"name": "b", "model": "org/base-b"},
                {"name": "c", "model": "org/base-c"},
                {"name": "d", "model": "org/base-d"},
            ],
        )
    )
    text = "\n".join(Serving(cfg, RunPaths(tmp_path)).describe())
    got = dict(re.findall(r"--model-path (\S+) .*?--mem-fraction-static ([\d.]+)", text))
    # device default: a 0.2 (what is left), b 0.3, c 0.1 in start order; d alone on device 1
    assert got == {
        BASE: "0.2",
        "org/base-b": str(round(0.3 / 0.8, 3)),
        "org/base-c": str(round(0.1 / 0.5, 3)),
        "org/base-d": "0.6",
    }
    assert "CUDA_VISIBLE_DEVICES=1 " in text


@pytest.mark.unit
def test_validate_rejects_what_sglang_would_refuse_later() -> None:
    too_much = _problems(
        _cfg(
            {"memory_shares": {"a": 0.7, "b": 0.4}},
            [{"name": "a", "model": BASE}, {"name": "b", "model": "org/b"}],
        )
    )
    assert "keep the sum below 1" in too_much
    dp = _problems(_cfg({"dp_size": 2}, [{"name": "a", "model": BASE}, {"name": "b", "model": BASE}]))
    assert "backends.gpu.dp_size" in dp
    names = _problems(
        _cfg(
            {"lora_target_modules": ["qkv_proj", "fc1"]},
            [{"name": "a", "model": BASE}, {"name": "b", "model": BASE}],
        )
    )
    assert "backends.gpu.lora_target_modules" in names and "fc1" in names
    trained = _problems(
        _cfg(
            {},
            [{"name": "a", "model": BASE}, {"name": "b", "model": BASE}],
            training={"target_modules": ["q_proj", "fc2"]},
        )
    )
    assert "training.target_modules" in trained and "fc2" in trained
    templates = _problems(
        _cfg(
            {},
            [
                {"name": "a", "model": BASE, "chat_template": "{{ x }}\n"},
                {"name": "b", "model": BASE, "chat_template": "{{ y }}\n"},
            ],
        )
    )
    assert "members[1].chat_template" in templates
    ok = _cfg(
        {},
        [{"name": "a", "model": BASE}, {"name": "b", "model": BASE}],
        training={"target_modules": ["q_proj", "k_proj", "v_proj", "up_proj"]},
    )
    config_from_dict(ok)


@pytest.mark.unit
def test_member_chat_template_reaches_the_server_as_a_file(tmp_path: Path) -> None:
    cfg = config_from_dict(
        _cfg(
            {},
            [
                {"name": "a", "model": BASE, "chat_template": "configs/chat_templates/gemma3.jinja"},
                {"name": "b", "model": "org/b", "chat_template": "{{ messages }}\n"},
            ],
        )
    )
    lines = {
        re.search(r"--model-path (\S+)", x).group(1): x for x in Serving(cfg, RunPaths(tmp_path)).describe()
    }
    a = re.search(r"--chat-template (\S+)", lines[BASE]).group(1)
    assert Path(a).read_text() == Path("configs/chat_templates/gemma3.jinja").read_text()
    b = re.search(r"--chat-template (\S+)", lines["org/b"]).group(1)
    assert Path(b).read_text() == "{{ messages }}\n"


def _adapter(root: Path, name: str, modules: list[str], r: int = 16) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text(json.dumps({"r": r, "target_modules": modules}))
    return d


@pytest.mark.integration
def test_adapter_checked_against_the_server_before_loading(tmp_path: Path) -> None:
    with FakeSGLang(BASE) as fake:
        cfg = config_from_dict(
            _cfg(
                {"launch": False, "urls": {BASE: fake.url}, "max_lora_rank": 16},
                [{"name": "a", "model": BASE}, {"name": "b", "model": BASE}],
            )
        )
        with Serving(cfg, RunPaths(tmp_path / "run")) as serving:
            vision = _adapter(tmp_path, "a-v1", ["q_proj", "v_proj", "fc1", "fc2", "out_proj"])
            with pytest.raises(ServerError, match=r"\['fc1', 'fc2', 'out_proj'\]"):
                serving.activate("a", vision, 1)
            wide = _adapter(tmp_path, "a-v2", ["q_proj"], r=32)
            with pytest.raises(ServerError, match="max-lora-rank 16"):
                serving.activate("a", wide, 2)
            assert [k for k, _ in fake.calls if k == "load"] == []  # refused before SGLang
            assert serving.endpoint("a").model == BASE
            good = _adapter(
                tmp_path,
                "a-v3",
                ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            )
            assert serving.activate("a", good, 3).model == f"{BASE}:a-v3"


@pytest.mark.integration
def test_requests_carry_lora_path_and_member_chat_template_kwargs(tmp_path: Path) -> None:
    with FakeSGLang(BASE) as fake:
        cfg = config_from_dict(
            _cfg(
                {"launch": False, "urls": {BASE: fake.url}},
                [
                    {"name": "a", "model": BASE, "chat_template_kwargs": {"enable_thinking": False}},
                    {"name": "b", "model": BASE},
                ],
            )
        )
        with Serving(cfg, RunPaths(tmp_path / "run")) as serving:
            serving.activate("a", _adapter(tmp_path, "a-v1", ["q_proj"]), 1)
            pool = serving.client_pool()

            async def ask() -> None:
                for m in ("a", "b"):
                    await pool.chat(m, [{"role": "user", "content": "hi"}], Sampling(max_tokens=4))
                await pool.aclose()

            asyncio.run(ask())
    a, b = fake.bodies
    assert a["model"] == f"{BASE}:a-v1" and a["lora_path"] == "a-v1"
    assert a["chat_template_kwargs"] == {"enable_thinking": False}
    assert "lora_path" not in b and "chat_template_kwargs" not in b


@pytest.mark.integration
def test_attach_does_not_wait_on_a_generating_health_check(tmp_path: Path) -> None:
    """SGLang's /health generates a token (up to 20 s under load); attach must not read a busy
    server as dead and launch duplicates."""
    with FakeSGLang(BASE, health_delay_s=5.0) as fake:
        cfg = config_from_dict(
            _cfg(
                {"launch": False, "urls": {BASE: fake.url}},
                [{"name": "a", "model": BASE}, {"name": "b", "model": BASE}],
            )
        )
        backend = Serving(cfg, RunPaths(tmp_path)).backends["gpu"]
        state = {"kind": "sglang", "servers": {BASE: fake.url}, "adapters": {}}
        assert backend.attach(state) is True
        assert backend.health() is True


@pytest.mark.integration
def test_api_key_server_gets_the_key_on_every_call(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SG_KEY", "s3cret")
    with FakeSGLang(BASE, api_key="s3cret") as fake:
        cfg = config_from_dict(
            _cfg(
                {"launch": False, "urls": {BASE: fake.url}, "api_key_env": "SG_KEY"},
                [{"name": "a", "model": BASE}, {"name": "b", "model": BASE}],
            )
        )
        with Serving(cfg, RunPaths(tmp_path / "run")) as serving:
            serving.activate("a", _adapter(tmp_path, "a-v1", ["q_proj"]), 1)
            serving.activate("a", _adapter(tmp_path, "a-v2", ["q_proj"]), 2)
            pool = serving.client_pool()

            async def ask() -> None:
                await pool.chat("a", [{"role": "user", "content": "hi"}], Sampling(max_tokens=4))
                await pool.aclose()

            asyncio.run(ask())
            assert serving.health()
        kinds = [k for k, _ in fake.calls]
    assert "unauthorized" not in kinds
    assert kinds.count("load") == 2 and kinds.count("unload") == 1 and "chat" in kinds
    line = Serving(cfg, RunPaths(tmp_path)).describe()[0]
    assert "s3cret" not in line
