#!/usr/bin/env bash
# The code checks CI runs before the tests (and `just lint`): lint, format, types, docs.
# Each must pass with zero findings; any failure fails the script, after every check has run.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
failed=()
check() {
  local name=$1; shift
  echo "== $name: $*"
  "$@" || failed+=("$name")
}
check ruff "$bin/ruff" check agora_cli tests bench scripts
check format "$bin/ruff" format --check agora_cli tests bench scripts
check mypy "$bin/mypy"
check docs "$bin/mkdocs" build --strict --quiet -d "$(mktemp -d)"
if [ ${#failed[@]} -gt 0 ]; then
  echo "lint failed: ${failed[*]}" >&2
  exit 1
fi
echo "lint: all checks passed"
