#!/usr/bin/env bash
# Install Debian's Chromium, which tests/test_html.py drives headless to check the HTML
# report. Idempotent: does nothing (quickly) when /usr/bin/chromium is already there.
# Runs as root in CI; elsewhere it needs root (or sudo) only when Chromium is missing.
set -euo pipefail
browser="${LOOPTRACE_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$browser" ]; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null; then
  as_root=(sudo)
else
  echo "setup-chromium: $browser is missing and installing it needs root (apt-get install chromium)" >&2
  exit 1
fi
command -v apt-get >/dev/null || {
  echo "setup-chromium: $browser is missing and this system has no apt-get; install Chromium and set LOOPTRACE_CHROMIUM to its path" >&2
  exit 1
}
echo "setup-chromium: installing Debian's chromium package" >&2
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq >&2
"${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
[ -x "$browser" ] || { echo "setup-chromium: apt-get ran but $browser is still missing" >&2; exit 1; }
