#!/usr/bin/env bash
# Install looptrace with its test dependencies into a virtualenv, then run the test suite.
#
#   scripts/test.sh [pytest arguments...]
#
# PYTHON picks the interpreter (default: python3); the virtualenv is .venv-<version>.
# Whatever the tests need beyond Python packages (Chromium for the HTML report check, a
# Jaeger built from the Go module proxy) is installed by the scripts called below, or by
# the test fixtures themselves, so this one command works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
venv="${LOOPTRACE_VENV:-.venv-$version}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e ".[test]"
for setup in scripts/setup-*.sh; do
  [ -e "$setup" ] && "$setup"
done
exec "$venv/bin/python" -m pytest "$@"
