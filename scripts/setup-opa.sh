#!/usr/bin/env bash
# Builds the Open Policy Agent server the OPA policy-source tests run against, from the Go module
# proxy, once: the binary is cached under /var/cache/tetrapipe-build/opa/ (outside the repo, so a
# fresh clone on this machine reuses it). Idempotent; needs `go` (1.24+).
set -euo pipefail
[ "${TETRAPIPE_WITH_TEST_SERVERS:-1}" = 1 ] || exit 0   # images (deploy/Dockerfile) need none
OPA_VERSION=${OPA_VERSION:-v1.22.4}
CACHE=/var/cache/tetrapipe-build/opa
BIN="$CACHE/bin/opa"
if [ -x "$BIN" ] && [ -f "$CACHE/bin/.version-$OPA_VERSION" ]; then
  exit 0
fi
GO=$(command -v go || true)
[ -n "$GO" ] || [ ! -x /usr/local/go/bin/go ] || GO=/usr/local/go/bin/go
if [ -z "$GO" ]; then
  echo "setup-opa: no go toolchain; OPA tests will fail under CI" >&2
  exit 1
fi
mkdir -p "$CACHE/bin" "$CACHE/gopath" "$CACHE/gocache"
echo "setup-opa: building opa $OPA_VERSION (several minutes on 2 cores, once)"
export GOPATH="$CACHE/gopath" GOCACHE="$CACHE/gocache" GOFLAGS=-mod=mod CGO_ENABLED=0
# the build is CPU-heavy: keep the machine usable for others
GOBIN="$CACHE/bin" nice -n 10 "$GO" install -p 1 -ldflags=-s "github.com/open-policy-agent/opa@$OPA_VERSION"
"$BIN" version >/dev/null
rm -f "$CACHE/bin"/.version-*
touch "$CACHE/bin/.version-$OPA_VERSION"
echo "setup-opa: $("$BIN" version | head -1)"
