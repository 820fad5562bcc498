"""Runs inside the project's vLLM venv (`.venv-vllm`, scripts/setup.sh), never in agora's own.

Reads {"cases": [{"name", "model", "adapter", "args"}]} as JSON on stdin: `model` a directory with
a config.json (a shrunk copy of a paper architecture), `adapter` a PEFT adapter directory, `args`
the server's arguments after `-m vllm.entrypoints.openai.api_server` as agora launches it. Prints
one line `PROBE {json}` with what vLLM's own code makes of each adapter, the way a server started
with `args` answers `POST /v1/load_lora_adapter` (`WorkerLoRAManager._load_adapter`,
`vllm/lora/worker_manager.py`, then `add_adapter` and `activate_adapter` of its model manager):

- the engine configuration from `args` (vLLM's parser and `AsyncEngineArgs`, as its server's
  `main` does), with the model swapped for `model` and no weights read (`load_format=dummy`);
- the vLLM model class for the architecture, built on CPU with the LoRA model manager a server
  wraps it in, which derives the expected module names from the model's own layers
  (`get_supported_lora_modules`) and its `packed_modules_mapping`;
- `PEFTHelper.from_local_dir` + `validate_legal` (rank against --max-lora-rank, DoRA, bias, ...),
  `LoRAModel.from_local_checkpoint` (every tensor name against the expected modules, through the
  model's `hf_to_vllm_mapper`);
- the adapter packed (q/k/v into qkv_proj, ...) and copied into the LoRA slots of each layer
  (`set_lora`: a tensor of the wrong shape fails here), and which of its modules reached a layer.

A module a server would load but never apply (vLLM drops it silently: `activate_adapter` walks
the model's layers, not the adapter's names) comes back in `unused`.
"""

from __future__ import annotations

import json
import sys
import tempfile
from typing import Any

import torch
from vllm.config import set_current_vllm_config
from vllm.distributed import ensure_model_parallel_initialized, init_distributed_environment
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.lora.request import LoRARequest
from vllm.lora.worker_manager import WorkerLoRAManager
from vllm.model_executor.model_loader.utils import initialize_model
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.utils.torch_utils import set_default_torch_dtype

_distributed = False


def register_gemma3_mm() -> None:
    """Make vLLM's own Gemma3ForConditionalGeneration importable in this venv.

    scripts/setup.sh removes torchvision from the vLLM venv (its wheel does not match the CPU
    torch), and `vllm/model_executor/models/gemma3_mm.py` imports transformers' Gemma-3 image
    processor, which needs it. The processor turns images into pixels and plays no part in
    LoRA; a placeholder stands in for it, and the model class is registered under its own
    architecture name so vLLM inspects it here rather than re-importing it in a subprocess."""
    import types

    from vllm import ModelRegistry

    name = "transformers.models.gemma3.image_processing_gemma3"
    try:
        __import__(name)
    except ImportError:
        stub = types.ModuleType(name)
        stub.Gemma3ImageProcessor = type("Gemma3ImageProcessor", (), {})  # type: ignore[attr-defined]
        sys.modules[name] = stub
    from vllm.model_executor.models.gemma3_mm import Gemma3ForConditionalGeneration

    ModelRegistry.register_model("Gemma3ForConditionalGeneration", Gemma3ForConditionalGeneration)


def engine_config(args: list[str], model_dir: str) -> Any:
    """vLLM's configuration for a server launched with `args`, serving `model_dir` instead."""
    parser = make_arg_parser(FlexibleArgumentParser(description="vLLM OpenAI-Compatible RESTful API server."))
    args = list(args)
    args[args.index("--model") + 1] = model_dir  # parsed with a Hub id, vLLM would look it up
    parsed = parser.parse_args(args)
    validate_parsed_serve_args(parsed)
    engine = AsyncEngineArgs.from_cli_args(parsed)
    engine.load_format = "dummy"  # nothing is read: the layers' shapes are what the check needs
    engine.skip_tokenizer_init = True
    engine.enforce_eager = True
    engine.dtype = "float32"  # the CPU build's float type; LoRA's checks do not depend on it
    engine.max_model_len = 256  # no KV cache is allocated; a short one keeps the buffers small
    engine.gpu_memory_utilization = 0.9  # the GPU plan's share means nothing to the CPU build
    engine.chat_template = None
    return engine.create_engine_config()


def build(args: list[str], model_dir: str) -> tuple[Any, WorkerLoRAManager]:
    """The vLLM model for `model_dir` on CPU, wrapped in the LoRA manager of such a server."""
    global _distributed
    config = engine_config(args, model_dir)
    with set_current_vllm_config(config):
        if not _distributed:  # one process group of one for every model of this probe
            init_distributed_environment(1, 0, f"file://{tempfile.mktemp()}", 0, "gloo")
            ensure_model_parallel_initialized(1, 1)
            _distributed = True
        with set_default_torch_dtype(config.model_config.dtype), torch.device("cpu"):
            model = initialize_model(vllm_config=config)
        worker = WorkerLoRAManager(config, torch.device("cpu"), getattr(model, "embedding_modules", {}))
        worker.create_lora_manager(model, config)
    return config, worker


def judge(config: Any, worker: WorkerLoRAManager, adapter_dir: str, lora_id: int) -> dict[str, Any]:
    """What loading `adapter_dir` into this server does."""
    manager = worker._adapter_manager
    out: dict[str, Any] = {"error": None, "applied": [], "unused": [], "rank": None}
    try:
        with set_current_vllm_config(config):
            lora = worker._load_adapter(LoRARequest(f"probe-{lora_id}", lora_id, adapter_dir))
            manager.add_adapter(lora)  # packs q/k/v, gate/up as the model's layers hold them
            manager.activate_adapter(lora_id)  # copies every tensor into its layer's slot
    except Exception as e:  # noqa: BLE001 - vLLM answers 400 with whatever it raised
        out["error"] = f"{type(e).__name__}: {e}"
        return out
    out["rank"] = lora.rank
    out["applied"] = sorted(n for n in manager.modules if lora.get_lora(n) is not None)
    out["unused"] = sorted(n for n in lora.loras if n not in manager.modules)
    manager.remove_adapter(lora_id)
    return out


def main() -> None:
    job = json.load(sys.stdin)
    register_gemma3_mm()
    out: dict[str, Any] = {"cases": []}
    servers: dict[tuple[str, str], tuple[Any, WorkerLoRAManager]] = {}
    for i, case in enumerate(job["cases"], start=1):
        key = (case["model"], json.dumps(case["args"]))
        if key not in servers:
            servers[key] = build(case["args"], case["model"])
        config, worker = servers[key]
        manager = worker._adapter_manager
        row = {
            "name": case["name"],
            "model_class": type(manager.model).__name__,
            "max_lora_rank": config.lora_config.max_lora_rank,
            "max_loras": config.lora_config.max_loras,
            "supported": sorted(manager.supported_lora_modules),
            "packed": manager.packed_modules_mapping,
            **judge(config, worker, case["adapter"], i),
        }
        out["cases"].append(row)
    print("PROBE " + json.dumps(out, default=str))


if __name__ == "__main__":
    main()
