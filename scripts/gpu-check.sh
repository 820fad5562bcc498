#!/usr/bin/env bash
# The GPU check: agora's trainer on the paper's architectures (random bf16 weights from shipped
# configs) and the transformers backend, on one card, in under 10 minutes. Needs torch,
# transformers and peft (a bare CUDA image's), plus pydantic, PyYAML, jinja2; installs nothing.
#   scripts/gpu-check.sh            # full run on the GPU (tiny on CPU when there is none)
#   scripts/gpu-check.sh --tiny     # the same code paths, shrunk models, CPU, a minute or two
# Writes bench/gpu-check-<full|tiny>.json (or --out FILE) and prints one table.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
python="${PYTHON:-python3}"
if [ -x "$repo/.venv/bin/python" ] && [ -z "${PYTHON:-}" ]; then python="$repo/.venv/bin/python"; fi
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m bench.gpu_check "$@"
