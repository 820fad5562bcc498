"""Runs inside the SGLang contract venv (scripts/setup-sglang.sh), never in agora's own.

Reads {"commands": [[arg, ...]], "adapters": [{"dir", "args"}]} as JSON on stdin and prints what
SGLang's own code makes of them: each launch command parsed by `prepare_server_args`, and each
adapter read by `LoRAConfig` and judged by the checks a server launched with `args` runs on
`POST /load_lora_adapter` (`LoRAManager.validate_new_adapter` -> `LoRAMemoryPool.can_support`).

`sglang.srt.lora.utils` and the manager/pool modules import GPU-only packages at module level, so
the functions are taken from their source files and run as written (no copy of their logic).
"""

from __future__ import annotations

import ast
import json
import logging
import sys
import types
import typing
from pathlib import Path

import sglang
from sglang.srt.lora.lora_config import LoRAConfig
from sglang.srt.server_args import prepare_server_args

LORA_DIR = Path(sglang.__file__).parent / "srt" / "lora"


def _load(path: Path, names: list[str], namespace: dict) -> dict:
    """Execute the top-level definitions `names` (functions, classes' methods as `Class.meth`,
    assignments) of one source file in `namespace`."""
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            picked = node
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id in names for t in node.targets
        ):
            picked = node
        elif isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, ast.FunctionDef) and f"{node.name}.{sub.name}" in names:
                    sub_mod = ast.Module(body=[sub], type_ignores=[])
                    exec(compile(sub_mod, str(path), "exec"), namespace)
                    namespace[f"{node.name}.{sub.name}"] = namespace.pop(sub.name)
            continue
        else:
            continue
        exec(compile(ast.Module(body=[picked], type_ignores=[]), str(path), "exec"), namespace)
    return namespace


NS = {**vars(typing), "logger": logging.getLogger("probe"), "LoRAConfig": LoRAConfig}
_load(
    LORA_DIR / "utils.py",
    ["get_normalized_target_modules", "DSA_INDEXER_LORA_NAMES", "_KNOWN_LORA_TARGET_MODULES"],
    NS,
)
_load(LORA_DIR / "mem_pool.py", ["LoRAMemoryPool.can_support"], NS)
_load(LORA_DIR / "lora_manager.py", ["LoRAManager.validate_new_adapter"], NS)


def parse(cmd: list[str]) -> dict:
    try:
        a = prepare_server_args(cmd)
    except SystemExit as e:
        return {"ok": False, "error": f"exit {e.code}"}
    keys = [
        "model_path",
        "host",
        "port",
        "tp_size",
        "dp_size",
        "enable_lora",
        "max_lora_rank",
        "lora_target_modules",
        "max_loras_per_batch",
        "mem_fraction_static",
        "trust_remote_code",
        "chat_template",
        "api_key",
    ]
    out = {k: getattr(a, k, None) for k in keys}
    if isinstance(out["lora_target_modules"], set):
        out["lora_target_modules"] = sorted(out["lora_target_modules"])
    return {"ok": True, "args": out}


def judge(adapter_dir: str, cmd: list[str]) -> dict:
    """What a server launched with `cmd` answers to loading `adapter_dir`."""
    a = prepare_server_args(cmd)
    modules = a.lora_target_modules
    norm = NS["get_normalized_target_modules"]
    server = set(norm(modules)) if modules else set()
    unknown = sorted(server - NS["_KNOWN_LORA_TARGET_MODULES"] - {"all"})
    config = LoRAConfig(adapter_dir)
    pool = types.SimpleNamespace(
        max_lora_rank=a.max_lora_rank, lora_added_tokens_size=0, target_modules=server
    )
    pool.can_support = types.MethodType(NS["LoRAMemoryPool.can_support"], pool)
    manager = types.SimpleNamespace(
        attn_dp_enabled=False,
        lora_refs={},
        memory_pool=pool,
        num_pinned_loras=0,
        max_loras_per_batch=a.max_loras_per_batch,
    )
    ref = types.SimpleNamespace(lora_name="probe", lora_path=adapter_dir, pinned=False)
    try:
        NS["LoRAManager.validate_new_adapter"](manager, config, ref)
        error = None
    except (ValueError, AssertionError) as e:
        error = str(e)
    return {
        "modules": sorted(norm(config.target_modules)),
        "r": config.r,
        "server_modules": sorted(server),
        "unknown_server_modules": unknown,
        "error": error,
    }


def main() -> None:
    job = json.load(sys.stdin)
    out = {
        "version": sglang.__version__,
        "known": sorted(NS["_KNOWN_LORA_TARGET_MODULES"]),
        "normalized": {n: sorted(NS["get_normalized_target_modules"]([n]))[0] for n in job.get("names", [])},
        "commands": [parse(c) for c in job.get("commands", [])],
        "adapters": [judge(x["dir"], x["args"]) for x in job.get("adapters", [])],
    }
    print("PROBE " + json.dumps(out))


if __name__ == "__main__":
    main()
