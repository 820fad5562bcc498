"""scripts/gpu-check.sh: its shipped model configs are the models' own dims, and its tiny CPU run
(the GPU run's code paths on shrunk models) produces every row with its checks passed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from agora_cli.training.memory import KNOWN_DIMS, dims_from_config

REPO = Path(__file__).resolve().parents[1]
HUB = {
    "qwen3-1.7b": "Qwen/Qwen3-1.7B",
    "phi-4-mini": "microsoft/Phi-4-mini-instruct",
    "gemma-3-4b": "google/gemma-3-4b-it",
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B-Instruct",
}


@pytest.mark.parametrize("arch", sorted(HUB))
@pytest.mark.unit
def test_each_shipped_config_has_the_dims_the_memory_plan_knows(arch: str) -> None:
    config = json.loads((REPO / "tests/data/model_configs" / arch / "config.json").read_text())
    assert dims_from_config(config) == KNOWN_DIMS[HUB[arch]]


@pytest.mark.parametrize("arch", sorted(HUB))
@pytest.mark.unit
def test_each_full_size_config_builds_the_published_model(arch: str) -> None:
    # On the meta device: shapes only. The parameter count is the published size (Qwen3 1.72B,
    # Phi-4-mini 3.84B, Gemma-3-4B's text model 3.88B, Llama-3.2-1B 1.24B) up to the norms.
    from bench.gpu_check import build_model, load_config

    config = load_config(arch, tiny=False)
    model = build_model(config, torch.bfloat16, "meta")
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(dims_from_config(config).params, rel=1e-3)
    assert type(model).__name__ == config["architectures"][0]


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_the_tiny_run_produces_every_row_with_its_checks_passed(tmp_path: Path) -> None:
    out = tmp_path / "gpu-check.json"
    proc = subprocess.run(
        [str(REPO / "scripts/gpu-check.sh"), "--tiny", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["mode"] == "tiny" and result["device"] and result["checks_ok"] is True
    assert result["placement"] == {"device": "cpu", "base_dtype": "bfloat16", "autocast": "bfloat16"}
    rows = {r["arch"]: r for r in result["training"]}
    assert sorted(rows) == sorted(HUB)
    for arch, r in rows.items():
        assert "error" not in r, (arch, r)
        assert r["loss_ok"] and abs(r["loss_chunked"] - r["loss_model"]) <= 1e-2 * r["loss_model"], arch
        assert r["grad_ok"] and r["grad_tensors"] > 0 and r["grad_max_rel_err"] <= 5e-2, arch
        assert r["fused_layers"] > 0 and r["losses_finite"], arch  # the fused kernel ran under autocast
        assert r["tokens_per_s"] > 0 and r["peak_mb"] > 0 and r["estimated_mb"] > 0, arch
    serving = {r["concurrency"]: r for r in result["serving"]}
    assert sorted(serving) == [1, 16], result["serving"]
    for n, r in serving.items():
        assert "error" not in r and r["requests_ok"] == n and r["output_tokens"] > 0, r
    assert "gpu-check on" in proc.stdout and "checks passed: True" in proc.stdout
