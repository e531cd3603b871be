#!/usr/bin/env bash
# Builds a real Kubernetes API server for the CRD tests, once, cached under
# /var/cache/tetrapipe-build/kube-apiserver/: k8s.io/apiextensions-apiserver (serves CRDs and
# custom resources; from the Go module proxy) and Debian's etcd-server. Idempotent. The tests use
# it when it is there and say so; tests/fake_kube_api.py (a stand-in) serves the rest.
set -euo pipefail
[ "${TETRAPIPE_WITH_TEST_SERVERS:-1}" = 1 ] || exit 0   # images (deploy/Dockerfile) need none
KUBE_VERSION=${KUBE_VERSION:-v0.37.2}
CACHE=/var/cache/tetrapipe-build/kube-apiserver
BIN="$CACHE/bin/apiextensions-apiserver"
if ! command -v etcd >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server >/dev/null; }
  systemctl disable --now etcd >/dev/null 2>&1 || true
fi
if [ -x "$BIN" ] && [ -f "$CACHE/bin/.version-$KUBE_VERSION" ]; then
  exit 0
fi
GO=$(command -v go || true)
[ -n "$GO" ] || [ ! -x /usr/local/go/bin/go ] || GO=/usr/local/go/bin/go
[ -n "$GO" ] || { echo "setup-kube-apiserver: no go toolchain" >&2; exit 1; }
mkdir -p "$CACHE/bin" "$CACHE/gopath" "$CACHE/gocache"
echo "setup-kube-apiserver: building apiextensions-apiserver $KUBE_VERSION (long, once)"
export GOPATH="$CACHE/gopath" GOCACHE="$CACHE/gocache" GOFLAGS=-mod=mod CGO_ENABLED=0
GOBIN="$CACHE/bin" nice -n 10 "$GO" install -ldflags=-s "k8s.io/apiextensions-apiserver@$KUBE_VERSION"
rm -f "$CACHE/bin"/.version-*
touch "$CACHE/bin/.version-$KUBE_VERSION"
echo "setup-kube-apiserver: built $BIN"
