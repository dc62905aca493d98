#!/usr/bin/env bash
# Called by scripts/test.sh before pytest: build the Jaeger the end-to-end tests run
# (cached, so instant after the first time). Never fatal here: if it cannot be built, the
# Jaeger tests fail and say why, while every other test still runs.
cd "$(dirname "$0")/.."
if ! scripts/install-jaeger.sh >/dev/null; then
  echo "setup-jaeger: Jaeger could not be built; the end-to-end tests will fail" >&2
fi
exit 0
