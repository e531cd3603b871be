#!/usr/bin/env bash
# Builds the compiled helpers (collector/native/*.c: the bulk ring-buffer drain; schemas/native/*.c:
# the Avro writer, against the venv interpreter's headers) with the system C compiler into
# /var/cache/tetrapipe-build/native/, named by the source's hash: idempotent, shared by clones on
# this machine. As root, also the Avro writer for services run as nobody (run --user,
# tests/test_least_privilege.py): the venv's python may be another interpreter for them (root's is
# out of their reach) and they cannot build into this root-owned cache. Without this the collector
# builds them at first use or, with no compiler, drains in pure Python (TETRAPIPE_NO_EXTENSIONS=1
# forces that).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cc >/dev/null 2>&1 || { echo "setup-native: no C compiler: the collector drains in pure Python"; exit 0; }
.venv/bin/python -c 'from collector import ringbuf; p = ringbuf.build(quiet=False); print("setup-native:", p or "not built")'
.venv/bin/python -c 'from schemas import native_writer as n; p = n.build(quiet=False); print("setup-native:", p or "not built (the Avro writer stays pure Python)")'
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null 2>&1; then
  .venv/bin/python -c 'from schemas import native_writer as n; p = n.build_for_user(65534, 65534, quiet=False); print("setup-native: for nobody:", p or "not built (services run as nobody write Avro in pure Python)")'
fi
