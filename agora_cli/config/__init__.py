"""Strict, validated run configuration, one module per job.

- `schema`: the pydantic models (unknown keys forbidden; the paper's defaults), including each
  serving backend's settings;
- `gpu`: the GPU memory plan (device, share and engine flag per server; does it fit);
- `checks`: cross-field checks no single field can see;
- `loading`: YAML, `extends`, `key=value` overrides, and one `ConfigError` with every problem.

Import from the package (`from agora_cli.config import Config, load_config`); the modules are
how the code is organised, not a second API.
"""

from agora_cli.config.gpu import gpu_plan, memory_plan, sglang_device, sglang_memory_plan
from agora_cli.config.loading import (
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
    parse_override,
)
from agora_cli.config.schema import (
    BACKEND_KINDS,
    Ablations,
    Backend,
    BackendSpec,
    ClientSettings,
    Config,
    Difficulty,
    Evaluation,
    Logging,
    Member,
    OpenAIBackend,
    Protocol,
    ProtocolSampling,
    Sampling,
    SGLangBackend,
    Strict,
    Surprise,
    Training,
    TransformersBackend,
    VLLMBackend,
    _template_path,
    chat_template_text,
)

__all__ = [
    "BACKEND_KINDS",
    "Ablations",
    "Backend",
    "BackendSpec",
    "ClientSettings",
    "Config",
    "Difficulty",
    "Evaluation",
    "Logging",
    "Member",
    "OpenAIBackend",
    "Protocol",
    "ProtocolSampling",
    "SGLangBackend",
    "Sampling",
    "Strict",
    "Surprise",
    "Training",
    "TransformersBackend",
    "VLLMBackend",
    "_template_path",
    "apply_overrides",
    "chat_template_text",
    "config_from_dict",
    "dump_config",
    "gpu_plan",
    "load_config",
    "memory_plan",
    "parse_override",
    "sglang_device",
    "sglang_memory_plan",
]
