#!/usr/bin/env bash
# Creates (or reuses) the project's Python virtualenv at ./.venv and installs the pinned Python
# tools the checks use: pymongo, for the pymongo compatibility check of mongo-sim.
# Idempotent: a second run with the same pins does nothing and prints nothing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
requirements=(
  "pymongo==4.20.0"
  "dnspython==2.8.0"
)
stamp="$venv/.python-tools"
wanted="${requirements[*]}"

if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi

if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
  exit 0
fi

"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "${requirements[@]}"
printf '%s' "$wanted" >"$stamp"
