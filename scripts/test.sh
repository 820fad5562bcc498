#!/usr/bin/env bash
# Run the test suite: every tier unless the arguments pick one, e.g. `./scripts/test.sh -m unit`
# (in process, about a minute), `-m integration` (real processes and fake servers), `-m e2e`
# (the real small models); `-n 2` spreads it over two pytest-xdist workers. The arguments go to
# pytest as they are. pytest's exit code 5 ("no tests collected") is a failure here.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest --durations=20 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
