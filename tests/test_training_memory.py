"""Training memory: the estimate's formula, the checkpointing decision, and `agora validate`'s
warning when a configured batch cannot fit the budget even with gradient checkpointing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from agora_cli.cli import app
from agora_cli.config import Training
from agora_cli.training.memory import (
    KNOWN_DIMS,
    GiB,
    ModelDims,
    dims_from_config,
    estimate_training_memory,
    lora_params,
    plan_memory,
)

pytestmark = pytest.mark.unit

runner = CliRunner()
DIMS = ModelDims(hidden=64, intermediate=256, layers=4, heads=4, kv_heads=2, head_dim=16, vocab=1000)
COMMON = dict(
    batch_size=2,
    seq_len=100,
    r=8,
    target_modules="all-linear",
    loss_chunk_tokens=50,
    half_precision=False,
    attention_scores=True,
)


def test_parts_of_the_estimate_follow_the_formula() -> None:
    est = estimate_training_memory(DIMS, checkpointing=False, **COMMON)
    q, kv, tokens = 64, 32, 200
    assert est.weights == 4 * (1000 * 64 + 4 * (2 * 64 * q + 2 * 64 * kv + 3 * 64 * 256))
    # r x (in + out) for q, k, v, o, gate, up, down; 16 bytes per trainable parameter
    per_layer_lora = 8 * ((64 + q) + 2 * (64 + kv) + (q + 64) + 2 * (64 + 256) + (256 + 64))
    assert est.lora == 16 * 4 * per_layer_lora
    per_layer = 4 * (9 * 64 + 4 * q + 3 * kv + 5 * 256) + 4 * 2 * 4 * 100
    assert est.activations == tokens * 4 * per_layer
    assert est.logits == 50 * 1000 * 12  # one chunk of 50 rows, float32: logits + log-softmax + grad
    assert est.total == est.weights + est.lora + est.activations + est.logits + GiB


def test_checkpointing_chunking_and_precision_lower_the_estimate() -> None:
    plain = estimate_training_memory(DIMS, checkpointing=False, **COMMON)
    ckpt = estimate_training_memory(DIMS, checkpointing=True, **COMMON)
    assert ckpt.activations < plain.activations and ckpt.weights == plain.weights
    full = estimate_training_memory(DIMS, checkpointing=False, **{**COMMON, "loss_chunk_tokens": 0})
    assert full.logits == 200 * 1000 * 12 > plain.logits  # every position vs one chunk
    half = estimate_training_memory(DIMS, checkpointing=False, **{**COMMON, "half_precision": True})
    assert half.activations * 2 == plain.activations
    gpu = estimate_training_memory(DIMS, checkpointing=False, **{**COMMON, "attention_scores": False})
    assert gpu.activations < plain.activations


def test_lora_targets_lists_and_the_head() -> None:
    all_linear = lora_params(DIMS, 8, "all-linear")
    qv = lora_params(DIMS, 8, ["q_proj", "v_proj"])
    assert qv == 4 * 8 * ((64 + 64) + (64 + 32))
    assert lora_params(DIMS, 8, ["q_proj", "v_proj", "lm_head"]) == qv + 8 * (64 + 1000)
    assert lora_params(DIMS, 8, ["nothing_here"]) == 0 < qv < all_linear


def test_dims_from_configs_flat_and_nested() -> None:
    flat = {
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "vocab_size": 49152,
    }
    assert dims_from_config(flat) == ModelDims(576, 1536, 30, 9, 3, 64, 49152)
    nested = {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "text_config": {
            "hidden_size": 2560,
            "intermediate_size": 10240,
            "num_hidden_layers": 34,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "head_dim": 256,
            "vocab_size": 262208,
        },
    }
    assert dims_from_config(nested) == KNOWN_DIMS["google/gemma-3-4b-it"]
    assert dims_from_config({"hidden_size": 8}) is None
    assert 3.8e9 < KNOWN_DIMS["google/gemma-3-4b-it"].params < 4.0e9  # the text model's 3.88B


def test_plan_switches_checkpointing_on_only_when_over_budget() -> None:
    kw = dict(batch_size=2, seq_len=100, half_precision=False, device="cpu")
    t = Training(r=8)
    first = plan_memory(DIMS, t, budget_gb=1000.0, **kw)
    plain_gb, between = first.plain.total_gb, (first.plain.total_gb + first.checkpointed.total_gb) / 2
    roomy = plan_memory(DIMS, t, budget_gb=plain_gb * 1.01, **kw)
    assert (roomy.checkpointing, roomy.auto, roomy.fits) == (False, True, True)
    tight = plan_memory(DIMS, t, budget_gb=between, **kw)
    assert (tight.checkpointing, tight.fits) == (True, True)
    assert tight.estimate == tight.checkpointed and "on (auto)" in tight.describe()
    hopeless = plan_memory(DIMS, t, budget_gb=0.5, **kw)  # below even the runtime's 1 GiB
    assert hopeless.checkpointing and not hopeless.fits
    forced_off = plan_memory(DIMS, Training(r=8, gradient_checkpointing=False), budget_gb=0.5, **kw)
    assert (forced_off.checkpointing, forced_off.auto) == (False, False)
    # The budget comes from the config when set.
    from_cfg = plan_memory(DIMS, Training(r=8, memory_budget_gb=between), **kw)
    assert from_cfg.checkpointing and from_cfg.budget_gb == between


def test_the_paper_batch_of_gemma3_4b_fits_an_80gb_gpu_only_with_checkpointing() -> None:
    from agora_cli.config import load_config

    t = load_config(Path(__file__).resolve().parent.parent / "configs" / "paper-mixed.yaml").training
    plan = plan_memory(
        KNOWN_DIMS["google/gemma-3-4b-it"],
        t,
        batch_size=t.batch_size,
        seq_len=t.max_length,
        half_precision=True,
        device="cuda",
        budget_gb=80.0,
    )
    assert plan.checkpointing and plan.fits and plan.plain.total_gb > 80.0
    full = plan_memory(
        KNOWN_DIMS["google/gemma-3-4b-it"],
        t.model_copy(update={"loss_chunk_tokens": 0}),
        batch_size=t.batch_size,
        seq_len=t.max_length,
        half_precision=True,
        device="cuda",
        budget_gb=80.0,
    )
    assert full.checkpointed.logits > 10 * plan.checkpointed.logits


# --------------------------------------------------------------------------- agora validate


def _config(tmp_path: Path, **training) -> Path:
    """Two members on a local model directory whose config.json gives Gemma-3-4B's dims."""
    model = tmp_path / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text(
        json.dumps(
            {
                "hidden_size": 2560,
                "intermediate_size": 10240,
                "num_hidden_layers": 34,
                "num_attention_heads": 8,
                "num_key_value_heads": 4,
                "head_dim": 256,
                "vocab_size": 262208,
            }
        )
    )
    cfg = {
        "name": "mem",
        "members": [{"name": "big", "model": str(model)}, {"name": "hub", "model": "nobody/unknown-model"}],
        "training": {"precision": "fp32", **training},
    }
    path = tmp_path / "mem.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_validate_warns_when_a_batch_cannot_fit_even_checkpointed(tmp_path: Path) -> None:
    path = _config(tmp_path, batch_size=8, max_length=2048, memory_budget_gb=24)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "ok " in out
    assert "warning: big: a training micro-batch of 8 x 2048 tokens needs about" in out
    assert "over the 24.0 GB budget" in out and "lower training.batch_size" in out
    # A model with no dims offline is named, not guessed.
    assert "note: hub: training memory not estimated" in out
    assert "warning: hub" not in out


def test_validate_is_quiet_when_the_batch_fits(tmp_path: Path) -> None:
    path = _config(tmp_path, batch_size=1, max_length=128, memory_budget_gb=200)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    # Between the two: fits only checkpointed -> a note that checkpointing will switch on.
    path2 = _config(tmp_path / "b", batch_size=2, max_length=2048, memory_budget_gb=30)
    result = runner.invoke(app, ["validate", str(path2)])
    out = " ".join(result.output.split())
    assert result.exit_code == 0 and "warning" not in out
    assert "note: big: gradient checkpointing will switch on for 2 x 2048 tokens" in out
