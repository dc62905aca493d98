#!/usr/bin/env bash
# Build a real Jaeger v2 from the Go module proxy, once, into a cache outside the repository.
# Prints the binary's path. Later runs (and the other Python versions' test runs) reuse it.
#
#   LOOPTRACE_JAEGER_VERSION  module version (default v1.76.0, i.e. Jaeger 2.13.0)
#   LOOPTRACE_CACHE_DIR       cache directory (default ${XDG_CACHE_HOME:-~/.cache}/looptrace)
#
# The binary serves Jaeger's full query API (/api/traces, /api/v3/traces) but only a
# placeholder web UI: the real UI is a Node build that only release images carry.
set -euo pipefail
version="${LOOPTRACE_JAEGER_VERSION:-v1.76.0}"   # Jaeger 2.13.0
cache="${LOOPTRACE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/looptrace}"
bin="$cache/jaeger-$version/jaeger"
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
  PATH="/usr/local/go/bin:$PATH"   # the official tarball's place, often not on PATH
fi
command -v go >/dev/null || { echo "install-jaeger: the 'go' command is needed (Go >= 1.24)" >&2; exit 1; }
work="$cache/jaeger-$version/build"
mkdir -p "$work"
# One build at a time: test runs that start together wait for the first one's binary.
if command -v flock >/dev/null; then
  exec 9>"$cache/jaeger-$version/lock"
  flock 9
  if [ -x "$bin" ]; then
    echo "$bin"
    exit 0
  fi
fi
cd "$work"
echo "install-jaeger: building github.com/jaegertracing/jaeger/cmd/jaeger@$version (a few minutes, once)" >&2
# `go install module@version` refuses modules whose go.mod has replace directives (Jaeger's
# does), so build it as a tool of a throw-away module instead.
if [ ! -f go.mod ]; then
  go mod init looptrace.invalid/jaeger-build >/dev/null 2>&1
fi
go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$version" >&2
go build -trimpath -o "$bin.tmp" github.com/jaegertracing/jaeger/cmd/jaeger >&2
mv "$bin.tmp" "$bin"
echo "$bin"
