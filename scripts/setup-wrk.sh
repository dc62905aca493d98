#!/usr/bin/env bash
# Install wrk (Debian package), the HTTP load generator of benchmarks/overhead.py's aiohttp
# workload. Idempotent: does nothing when wrk is already on PATH.
set -euo pipefail
if command -v wrk >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "setup-wrk: wrk is missing; run 'apt-get install -y wrk' as root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q wrk >/dev/null 2>&1; then
  # A fresh machine may have no package lists yet.
  apt-get update -q >/dev/null
  apt-get install -y -q wrk >/dev/null
fi
command -v wrk >/dev/null || { echo "setup-wrk: wrk did not install" >&2; exit 1; }
