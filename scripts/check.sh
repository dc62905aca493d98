#!/usr/bin/env bash
# The static checks the project relies on: ruff (lint), mypy --strict, stubtest (the C
# accelerator against _speedups.pyi). scripts/test.sh runs them before pytest; run this
# alone for a quick look:
#
#   scripts/check.sh [venv]        (default: .venv-<python3 version>)
#
# Each check runs even when an earlier one failed, so one run shows every problem. The last
# line names the checks that failed (exit status 1), or says all passed.
set -uo pipefail
cd "$(dirname "$0")/.."
venv="${1:-${LOOPTRACE_VENV:-.venv-$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')}}"
py="$venv/bin/python"
failed=()

run() {
  local name=$1
  shift
  if ! "$@"; then
    failed+=("$name")
  fi
}

# ruff check: the rules and the reasons for each ignore are in pyproject.toml.
run "ruff check" "$py" -m ruff check --quiet src tests benchmarks scripts
# mypy --strict over src/looptrace (files and options in pyproject.toml).
run "mypy --strict" "$py" -m mypy --no-error-summary
# stubtest: _speedups.pyi must describe the compiled module exactly (names, signatures,
# read-only attributes). Its allowlist says why each remaining difference is right.
run "stubtest looptrace._speedups" "$py" -m mypy.stubtest looptrace._speedups \
  --mypy-config-file pyproject.toml --allowlist scripts/stubtest-allowlist.txt
echo  # stubtest ends its last line without a newline

if [ ${#failed[@]} -gt 0 ]; then
  printf 'looptrace checks FAILED: %s\n' "$(IFS=,; echo "${failed[*]}" | sed 's/,/, /g')" >&2
  exit 1
fi
echo "looptrace checks passed: ruff check, mypy --strict, stubtest looptrace._speedups"
