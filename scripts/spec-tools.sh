#!/usr/bin/env bash
# Prepares what the driver specification tests need (mongo-sim/tests/spec.rs): the project's
# virtualenv with pymongo (scripts/python-tools.sh), pytest pinned, and pymongo's published
# source distribution, whose test/ directory carries the MongoDB specification tests (unified
# format JSON) and pymongo's own runner for them.
#
# The source distribution is downloaded from PyPI at a pinned version and verified against a
# pinned SHA-256 before use; it is unpacked under .venv/spec/ (ignored by git) and reused by
# later runs. Nothing from it is ever committed. Prints the unpacked directory on its last line.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
py="$venv/bin/python"

# The same pymongo release scripts/python-tools.sh installs, so the suite tests the driver
# the project uses. The URL is the file PyPI's simple index lists for that release.
sdist_name="pymongo-4.20.0"
sdist_url="https://files.pythonhosted.org/packages/8b/a6/a1ae45c0469af85f2c6793961b5d14de05176ce6265a909a90a0a81aea18/pymongo-4.20.0.tar.gz"
sdist_sha256="f773b0aec28687587cdeda490463a82debc4566a4a3620dcc8dada9d2c0a1acd"

# pytest and its dependencies, pinned; pytest-asyncio because pymongo's pytest configuration
# names its options (and runs with --strict-config).
requirements=(
  "pytest==9.2.0"
  "pytest-asyncio==1.5.0"
  "pluggy==1.7.0"
  "iniconfig==2.3.1"
  "packaging==26.4"
  "Pygments==2.21.0"
  "typing_extensions==4.16.0"
)

bash "$root/scripts/python-tools.sh"

stamp="$venv/.spec-tools"
wanted="${requirements[*]}"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$wanted" ]]; then
  "$py" -m pip install --quiet --disable-pip-version-check --no-input "${requirements[@]}"
  printf '%s' "$wanted" >"$stamp"
fi

spec="$venv/spec"
unpacked="$spec/$sdist_name"
if [[ ! -f "$unpacked/.verified-$sdist_sha256" ]]; then
  mkdir -p "$spec"
  archive="$spec/$sdist_name.tar.gz"
  "$py" - "$sdist_url" "$archive" "$sdist_sha256" <<'EOF'
import hashlib, os, sys, urllib.request

url, archive, expected = sys.argv[1:4]
if not os.path.exists(archive) or hashlib.sha256(open(archive, "rb").read()).hexdigest() != expected:
    with urllib.request.urlopen(url, timeout=120) as response:
        body = response.read()
    actual = hashlib.sha256(body).hexdigest()
    if actual != expected:
        sys.exit(f"{url}: sha256 {actual}, expected {expected}; refusing to use it")
    with open(archive + ".part", "wb") as f:
        f.write(body)
    os.replace(archive + ".part", archive)
EOF
  rm -rf "$unpacked"
  tar -xzf "$archive" -C "$spec"
  touch "$unpacked/.verified-$sdist_sha256"
fi

echo "$unpacked"
