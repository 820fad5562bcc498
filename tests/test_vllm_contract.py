"""Contract test against vLLM's own code (the project's `.venv-vllm`, vLLM 0.32): every server
command agora builds for a shipped vLLM config on GPU parses with vLLM's own argument parser
(`tests/contract/vllm_probe.py`, as vLLM's server `main` does) to the values agora meant: the
plan's --gpu-memory-utilization, --max-model-len, the LoRA pool, remote code.

The vLLM venv holds the CPU build; its argument parser and engine arguments are the GPU build's.
Runs one subprocess of that venv for all commands.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from agora_cli.config import load_config
from agora_cli.model_facts import facts_for
from agora_cli.paths import REPO_DIR, RunPaths
from agora_cli.serving import Serving
from agora_cli.serving.vllm import VLLMServing

pytestmark = pytest.mark.integration

MODULE = "vllm.entrypoints.openai.api_server"


def vllm_python() -> str:
    python = os.environ.get("AGORA_VLLM_PYTHON") or str(REPO_DIR / ".venv-vllm/bin/python")
    if not Path(python).exists():
        pytest.fail(f"no vLLM venv at {python}: run scripts/setup.sh or set AGORA_VLLM_PYTHON")
    return python


def gpu_servers(tmp: Path) -> list[tuple[VLLMServing, str, list[str]]]:
    """(backend, base, arguments after the module) of every GPU-planned vLLM server shipped."""
    out = []
    for path in sorted((REPO_DIR / "configs").rglob("*.yaml")):
        cfg = load_config(path)
        for backend in Serving(cfg, RunPaths(tmp / path.stem)).backends.values():
            if isinstance(backend, VLLMServing) and backend.on_gpu:
                for i, base in enumerate(backend._bases(planned=True)):
                    cmd = backend.command(
                        base, 8100 + i, backend._chat_template(base, backend._bases(True)[base])
                    )
                    out.append((backend, base, cmd[cmd.index(MODULE) + 1 :]))
    return out


def test_every_shipped_vllm_gpu_command_parses_in_vllm_to_what_agora_meant(tmp_path: Path) -> None:
    servers = gpu_servers(tmp_path)
    assert servers, "no shipped config plans vLLM on a GPU"
    proc = subprocess.run(
        [vllm_python(), str(REPO_DIR / "tests/contract/vllm_probe.py")],
        input=json.dumps({"commands": [args for _, _, args in servers]}),
        capture_output=True,
        text=True,
        timeout=600,
        # With HF_HUB_OFFLINE set, AsyncEngineArgs turns a Hub id into its cached snapshot path
        # (arg_utils.py, __post_init__), which fails for models not downloaded here; unset, it
        # keeps the id and reads nothing from the Hub.
        env={k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])["commands"]
    total = 0.0
    for (backend, base, args), parsed in zip(servers, got, strict=True):
        assert "error" not in parsed, (base, args, parsed)
        assert parsed["model"] == base
        assert parsed["enable_lora"] is True
        assert parsed["max_lora_rank"] == backend.cfg.max_lora_rank
        assert parsed["max_loras"] == backend.cfg.max_loras
        assert parsed["gpu_memory_utilization"] == backend.utilization(base)
        assert 0 < parsed["gpu_memory_utilization"] < 1
        total += parsed["gpu_memory_utilization"]
        assert parsed["max_model_len"] == int(args[args.index("--max-model-len") + 1]) <= 8192
        assert parsed["trust_remote_code"] is facts_for(base).trust_remote_code
    assert total < 1
