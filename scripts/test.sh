#!/usr/bin/env bash
# Install looptrace with its test dependencies into a virtualenv, then run the test suite.
#
#   scripts/test.sh [pytest arguments...]
#
# PYTHON picks the interpreter (default: python3); the virtualenv is .venv-<version>.
# Whatever the tests need beyond Python packages (Chromium for the HTML report check, a
# Jaeger built from the Go module proxy) is installed by the scripts called below, or by
# the test fixtures themselves, so this one command works on a fresh machine.
#
# Before pytest it runs the static checks (scripts/check.sh: ruff check, mypy --strict,
# stubtest of the C accelerator). pytest runs even when a check failed, so one run shows
# everything; the exit status is then 1 and the last line names the failed checks.
# LOOPTRACE_CHECKS=0 skips them (a quick local rerun of a few tests; CI never sets it).
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
checks=0
if [ "${LOOPTRACE_CHECKS:-1}" != 0 ]; then
  scripts/check.sh "$venv" || checks=1
fi
status=0
"$venv/bin/python" -m pytest "$@" || status=$?
if [ "$checks" != 0 ]; then
  echo "scripts/test.sh: FAILED: the static checks failed (see 'looptrace checks FAILED' above)" >&2
  [ "$status" = 0 ] && status=1
fi
exit "$status"
