"""SGLang's names for LoRA target modules, so an adapter can be checked before a server sees it.

SGLang keeps only the last segment of a PEFT module name and folds the projections it fuses into
one name (`q_proj`/`k_proj`/`v_proj` -> `qkv_proj`, `gate_proj`/`up_proj` -> `gate_up_proj`); its
LoRA memory pool holds only the names in `SGLANG_LORA_MODULES` and refuses an adapter with any
other module ("incompatible with the current LoRA memory pool"). Read from SGLang's
`srt/lora/utils.py` (`get_normalized_target_modules`, `_KNOWN_LORA_TARGET_MODULES`) at the pinned
version; `tests/test_sglang_contract.py` checks these facts against SGLang's own code.
"""

from __future__ import annotations

from collections.abc import Iterable

# The dense-model part of SGLang's mapping (PEFT leaf name -> SGLang's fused name).
_FUSED = {
    "q_proj": "qkv_proj",
    "k_proj": "qkv_proj",
    "v_proj": "qkv_proj",
    "gate_proj": "gate_up_proj",
    "up_proj": "gate_up_proj",
    "vocab_emb": "embed_tokens",
    "embeddings": "embed_tokens",
    "word_embeddings": "embed_tokens",
    "output": "lm_head",
    "unembed_tokens": "lm_head",
    "q_a_proj": "fused_qkv_a_proj_with_mqa",
    "kv_a_proj_with_mqa": "fused_qkv_a_proj_with_mqa",
}

# Names SGLang's LoRA memory pool can hold (its `_KNOWN_LORA_TARGET_MODULES`, DSA indexer aside).
SGLANG_LORA_MODULES = frozenset(
    {
        "qkv_proj",
        "qkvr",
        "o_proj",
        "wo_ud",
        "out_proj",
        "in_proj",
        "in_proj_qkvz",
        "up_proj",
        "gate_up_proj",
        "down_proj",
        "fc1_latent_proj",
        "fc2_latent_proj",
        "embed_tokens",
        "lm_head",
        "fused_qkv_a_proj_with_mqa",
        "q_b_proj",
        "kv_b_proj",
    }
)


def sglang_names(modules: Iterable[str]) -> set[str]:
    """SGLang's names for PEFT target modules (`model.layers.0.self_attn.q_proj` -> `qkv_proj`)."""
    out = set()
    for name in modules:
        leaf = name.split(".")[-1]
        out.add(_FUSED.get(leaf, leaf))
    return out


def unsupported(adapter_modules: Iterable[str], server_modules: Iterable[str]) -> list[str]:
    """The adapter's modules (SGLang's names) a server started with `--lora-target-modules
    server_modules` cannot hold; `all` on the server means whatever SGLang supports."""
    wanted = sglang_names(adapter_modules)
    served = set(server_modules)
    allowed = SGLANG_LORA_MODULES if "all" in served else sglang_names(served)
    return sorted(wanted - allowed)
