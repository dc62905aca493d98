#!/usr/bin/env bash
# Every benchmark behind docs/performance.md, one after the other (about 90 minutes on the
# 2-core machine): the peer comparison on the first interpreter, looptrace alone on the
# others, then scale and memory on the first.
#
#   benchmarks/run-all.sh PYTHON [PYTHON...]     e.g. /work/venvs/py3.11/bin/python ...
#
# Results go to benchmarks/results/ (JSON and Markdown).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 PYTHON [PYTHON...]" >&2; exit 2; }
scripts/setup-wrk.sh
first=$1
"$first" benchmarks/overhead.py --suite peers --pairs "${PEER_PAIRS:-7}"
shift
for python in "$@"; do
  "$python" benchmarks/overhead.py --suite looptrace --pairs "${PAIRS:-7}"
done
"$first" benchmarks/scale.py --pairs "${SCALE_PAIRS:-5}"
"$first" benchmarks/memory.py --steps 10000000
