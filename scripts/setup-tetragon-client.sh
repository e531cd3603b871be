#!/usr/bin/env bash
# Builds tests/tetragon_client (a client of our gRPC API made from Tetragon's own generated Go code,
# module github.com/cilium/tetragon/api) from the Go module proxy, once per version of its source:
# the binary is cached under /var/cache/tetrapipe-build/tetragon-client/ (outside the repo, so a
# fresh clone on this machine reuses it). Idempotent; needs `go` (1.26+).
set -euo pipefail
[ "${TETRAPIPE_WITH_TEST_SERVERS:-1}" = 1 ] || exit 0   # images (deploy/Dockerfile) need none
cd "$(dirname "$0")/../tests/tetragon_client"
CACHE=/var/cache/tetrapipe-build/tetragon-client
KEY=$(cat go.mod go.sum main.go no-tetragon/go.mod | sha256sum | cut -c1-16)
BIN="$CACHE/bin/tetragon-client"
if [ -x "$BIN" ] && [ -f "$CACHE/bin/.source-$KEY" ]; then
  exit 0
fi
GO=$(command -v go || true)
[ -n "$GO" ] || [ ! -x /usr/local/go/bin/go ] || GO=/usr/local/go/bin/go
if [ -z "$GO" ]; then
  echo "setup-tetragon-client: no go toolchain; the Tetragon client test will fail under CI" >&2
  exit 1
fi
mkdir -p "$CACHE/bin" "$CACHE/gopath" "$CACHE/gocache"
echo "setup-tetragon-client: building the test client on Tetragon's Go API (a few minutes on 2 cores, once)"
export GOPATH="$CACHE/gopath" GOCACHE="$CACHE/gocache" GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0
nice -n 10 "$GO" build -p 1 -ldflags=-s -o "$BIN.new" .
mv "$BIN.new" "$BIN"
rm -f "$CACHE/bin"/.source-*
touch "$CACHE/bin/.source-$KEY"
echo "setup-tetragon-client: $BIN"
