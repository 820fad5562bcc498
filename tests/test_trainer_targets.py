"""LoRA adapts the text model only (a multimodal Gemma-3's vision tower holds
fc1/fc2/out_proj, which SGLang's LoRA pool refuses)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agora_cli.config import Training
from agora_cli.lora_names import unsupported
from agora_cli.training.trainer import lora_model

pytestmark = pytest.mark.unit


def test_multimodal_gemma3_adapter_touches_the_text_model_only(tmp_path: Path) -> None:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    Gemma3ForConditionalGeneration(
        Gemma3Config(
            text_config=dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=1,
                head_dim=16,
                vocab_size=300,
            ),
            vision_config=dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=2,
                image_size=28,
                patch_size=14,
            ),
            mm_tokens_per_image=4,
        )
    ).save_pretrained(str(tmp_path / "base"))
    model = lora_model(str(tmp_path / "base"), Training(), None, "cpu")
    wrapped = [n for n, _ in model.named_modules() if n.endswith(".lora_A")]
    assert wrapped and not [n for n in wrapped if "vision" in n]
    targets = model.peft_config["default"].target_modules
    assert set(targets) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert unsupported(targets, ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]) == []
