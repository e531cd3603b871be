#!/usr/bin/env bash
# Builds the compiled helpers (collector/native/*.c: the bulk ring-buffer drain; schemas/native/*.c:
# the Avro writer, against the venv interpreter's headers) with
# the system C compiler into /var/cache/tetrapipe-build/native/, named by the source's hash:
# idempotent, shared by clones on this machine. Without it the collector builds them at first use
# or, with no compiler, drains in pure Python (TETRAPIPE_NO_EXTENSIONS=1 forces that).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cc >/dev/null 2>&1 || { echo "setup-native: no C compiler: the collector drains in pure Python"; exit 0; }
.venv/bin/python -c 'from collector import ringbuf; p = ringbuf.build(quiet=False); print("setup-native:", p or "not built")'
.venv/bin/python -c 'from schemas import native_writer as n; p = n.build(quiet=False); print("setup-native:", p or "not built (the Avro writer stays pure Python)")'
