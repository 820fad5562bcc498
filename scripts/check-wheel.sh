#!/usr/bin/env bash
# Build agora's wheel and run it away from the source tree: the installed CLI must find its shipped
# configs and prompt sets inside the package (an editable install reads the repository's folders,
# so the test suite alone cannot tell). Exits non-zero on any failure; prints its duration.
#
#   scripts/check-wheel.sh            # .venv's python and setuptools; no network needed
#   PYTHON=/path/to/python scripts/check-wheel.sh
#   AGORA_WHEEL_ISOLATED=1 scripts/check-wheel.sh   # the wheel in pip's isolated build (fetches setuptools)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-$REPO/.venv/bin/python}
unset PYTHONPATH  # nothing from the caller (e.g. PYTHONPATH=$PWD) may put the source tree on the path
start=$SECONDS
TMP=$(mktemp -d "${TMPDIR:-/tmp}/agora-wheel.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
fail() { echo "check-wheel: FAIL: $*" >&2; exit 1; }
step() { echo "check-wheel: $*"; }

# 1. Build as a release does (`python -m build`): an sdist from a clean copy of the tree (tracked
#    and new files, uncommitted edits included), then the wheel from that sdist. So the sdist must
#    carry prompts/ and configs/ too, and no build/lib left by an earlier build in the repository
#    can put files in the wheel that the build step no longer ships.
step "building the sdist, then the wheel from it"
mkdir "$TMP/src"
git ls-files -z --cached --others --exclude-standard \
    | (cd "$REPO" && xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh) \
    | tar --null -T - -cf - | tar -xf - -C "$TMP/src"
sdist=$(cd "$TMP/src" && "$PY" -c 'import sys; from setuptools import build_meta
print(build_meta.build_sdist(sys.argv[1]))' "$TMP/sdist" 2>"$TMP/build.log" | tail -1) \
    || { cat "$TMP/build.log" >&2; fail "building the sdist failed"; }
isolation=(--no-build-isolation)
[ "${AGORA_WHEEL_ISOLATED:-0}" = 1 ] && isolation=()
"$PY" -m pip wheel --no-deps "${isolation[@]}" -q -w "$TMP/dist" "$TMP/sdist/$sdist" >"$TMP/build.log" 2>&1 \
    || { cat "$TMP/build.log" >&2; fail "pip wheel failed"; }
wheel=$(ls "$TMP"/dist/agora_cli-*.whl)
step "built $sdist, then $(basename "$wheel")"

# 2. Install it alone into a folder of its own; the dependencies come from $PY's environment.
SITE=$TMP/site
"$PY" -m pip install --no-deps --no-compile -q --target "$SITE" "$wheel"
SHIPPED=$SITE/agora_cli/_shipped

# 3. Run it from a directory outside the repository, with only the installed copy on the path.
mkdir "$TMP/work" "$TMP/home"
cd "$TMP/work"
export PYTHONPATH=$SITE AGORA_HOME=$TMP/home HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
AGORA=$SITE/bin/agora
"$PY" - "$SITE/agora_cli" <<'EOF' || fail "agora is not imported, or does not read its files, from the wheel"
import sys
from pathlib import Path

import agora_cli
from agora_cli import paths

installed = Path(sys.argv[1]).resolve()
where = {"agora_cli": Path(agora_cli.__file__), "CONFIGS_DIR": paths.CONFIGS_DIR, "PROMPTS_DIR": paths.PROMPTS_DIR}
for name, path in where.items():
    print(f"check-wheel: {name} = {path}")
    if not path.resolve().is_relative_to(installed):
        sys.exit(f"{name} is not inside {installed}")
EOF

out=$("$AGORA" configs list) || fail "agora configs list"
echo "$out" | sed 's/^/  /'
for name in tiny.yaml paper-mixed.yaml ablations/no-fem.yaml cluster/paper-mixed-ray.yaml; do
    grep -q "^$name " <<<"$out" || fail "agora configs list does not name $name"
done
grep -qF "from $SHIPPED/configs" <<<"$out" || fail "agora configs list does not read $SHIPPED/configs"

for name in tiny.yaml paper-mixed.yaml ablations/no-fem.yaml cluster/paper-mixed-ray.yaml; do
    copy=$TMP/copies/$(basename "$name")
    "$AGORA" configs copy "$name" "$copy" >/dev/null || fail "agora configs copy $name"
    out=$("$AGORA" validate "$copy") || { echo "$out" >&2; fail "agora validate $copy"; }
    echo "$out" | head -2 | sed 's/^/  /'
    # tiny uses the default prompt set; paper-mixed (and the ablation extending it) names
    # `prompts_dir: prompts/capable`: both must be read from the package.
    want="prompts: the default set $SHIPPED/prompts "
    [ "$name" = tiny.yaml ] || want="from $SHIPPED/prompts/capable; the rest from $SHIPPED/prompts"
    grep -qF "$want" <<<"$out" || fail "$copy: its prompt note does not say: $want"
done

# The KubeRay recipe's ConfigMap holds a config that extends a shipped one by its name alone.
printf 'extends: cluster/paper-mixed-ray.yaml\nname: from-configmap\n' >"$TMP/configmap.yaml"
"$AGORA" validate "$TMP/configmap.yaml" >/dev/null || fail "a config extending cluster/paper-mixed-ray.yaml"

step "rendering a shipped prompt"
"$PY" - "$SHIPPED" <<'EOF' || fail "rendering a prompt from the shipped set"
import sys
from pathlib import Path

from agora_cli.protocol.prompts import Prompts

shipped = Path(sys.argv[1])
prompts = Prompts("prompts/capable")
prompts.validate()
assert prompts.path("verify") == shipped / "prompts/capable/verify.jinja", prompts.path("verify")
assert prompts.path("solve") == shipped / "prompts/solve.jinja", prompts.path("solve")
messages = prompts.render("verify", problem="What is 2 + 2?", solution="4. \\boxed{4}", delimiter="Q7F3")
assert "What is 2 + 2?" in messages[-1]["content"], messages
print(f"  verify: {len(messages)} messages, user turn starts {messages[-1]['content'][:60]!r}")
EOF

step "ok in $((SECONDS - start)) s"
