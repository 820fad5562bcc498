"""Runs inside the project's vLLM venv (`.venv-vllm`, scripts/setup.sh), never in agora's own.

Reads {"commands": [[arg, ...]]} as JSON on stdin (each a server's arguments after
`-m vllm.entrypoints.openai.api_server`) and prints what vLLM's own code makes of them, as its
server's `main` does (`vllm/entrypoints/launchers/api_server/entry.py`): the parser from
`make_arg_parser`, `validate_parsed_serve_args`, then `AsyncEngineArgs.from_cli_args`. A command
vLLM refuses comes back as {"error": ...}.
"""

from __future__ import annotations

import json
import sys

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.utils.argparse_utils import FlexibleArgumentParser

FIELDS = (
    "model",
    "max_model_len",
    "gpu_memory_utilization",
    "trust_remote_code",
    "enable_lora",
    "max_loras",
    "max_lora_rank",
)


def parse(argv: list[str]) -> dict:
    """vLLM's reading of one server command line."""
    parser = make_arg_parser(FlexibleArgumentParser(description="vLLM OpenAI-Compatible RESTful API server."))
    try:
        args = parser.parse_args(argv)
        validate_parsed_serve_args(args)
        engine = AsyncEngineArgs.from_cli_args(args)
    except (SystemExit, Exception) as e:  # argparse exits on an unknown flag or a bad value
        return {"error": f"{type(e).__name__}: {e}"}
    out = {name: getattr(engine, name) for name in FIELDS}
    out["chat_template"] = getattr(args, "chat_template", None)
    return out


def main() -> None:
    request = json.load(sys.stdin)
    print(json.dumps({"commands": [parse(c) for c in request["commands"]]}, default=str))


if __name__ == "__main__":
    main()
