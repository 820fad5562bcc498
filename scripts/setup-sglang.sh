#!/usr/bin/env bash
# A small venv with SGLang's own code for the contract tests (tests/test_sglang_contract.py): the
# pinned SGLang release without its GPU dependencies (--no-deps), plus only what its argument
# parser (`sglang.srt.server_args`) and LoRA config (`sglang.srt.lora.lora_config`) import on a
# CPU. Kept apart from .venv because SGLang pins torch/transformers versions agora does not use.
# GPU users install the real thing instead: pip install -e '.[sglang]'.
#
# To bump SGLang: change SGLANG_VERSION (and the matching pins below from its METADATA:
# `pip download --no-deps sglang==X` then read Requires-Dist), rerun this script, and run
# `pytest tests/test_sglang_contract.py`: it fails on any launch flag, module name or adapter
# check that changed. Keep pyproject's `sglang` extra's lower bound in step.
set -euo pipefail
cd "$(dirname "$0")/.."
SGLANG_VERSION=0.5.23
VENV=${AGORA_SGLANG_VENV:-.venv-sglang}
PY=${PYTHON:-python3}
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import sglang, sys; sys.exit(sglang.__version__ != '$SGLANG_VERSION')" 2>/dev/null; then
  echo "sglang $SGLANG_VERSION contract venv ready in $VENV"; exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then  # CPU torch, as scripts/setup.sh
  "$VENV/bin/python" -m pip install -q torch==2.13.0 \
    || "$VENV/bin/python" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
TORCH=$("$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')
"$VENV/bin/python" -m pip install -q --no-deps "sglang==$SGLANG_VERSION"
# What the two imports need (pins as in SGLang's METADATA); torch held at the CPU build.
# No torchvision: PyPI's is a CUDA build that cannot load on CPU torch, and those two imports
# do not need it (sglang.srt.lora.utils does; the tests read its functions from source).
"$VENV/bin/python" -m pip install -q -c <(echo "torch==$TORCH") \
  transformers==5.19.0 tokenizers==0.23.2 sentencepiece==0.2.1 apache-tvm-ffi==0.1.11 \
  orjson pybase64 triton msgspec pyzmq IPython aiohttp dill requests pillow starlette
"$VENV/bin/python" -c "import sglang.srt.server_args, sglang.srt.lora.lora_config"
echo "sglang $SGLANG_VERSION contract venv ready in $VENV"
