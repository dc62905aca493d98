#!/usr/bin/env bash
# Build a real Jaeger v2 from the Go module proxy, once, into a cache outside the repository.
# Prints the binary's path. Later runs reuse the cached binary.
set -euo pipefail
version="${LOOPTRACE_JAEGER_VERSION:-v1.76.0}"   # Jaeger 2.13.0
cache="${LOOPTRACE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/looptrace}"
bin="$cache/jaeger-$version/jaeger"
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
command -v go >/dev/null || { echo "install-jaeger: the 'go' command is needed (Go >= 1.24)" >&2; exit 1; }
work="$cache/jaeger-$version/build"
mkdir -p "$work"
cd "$work"
# `go install module@version` refuses modules whose go.mod has replace directives (Jaeger's
# does), so build it as a tool of a throw-away module instead.
if [ ! -f go.mod ]; then
  go mod init looptrace.invalid/jaeger-build >/dev/null 2>&1
fi
go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$version" >&2
go build -o "$bin.tmp" github.com/jaegertracing/jaeger/cmd/jaeger >&2
mv "$bin.tmp" "$bin"
echo "$bin"
