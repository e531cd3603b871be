#!/usr/bin/env bash
# Sets everything up, then runs the whole pipeline on this host with the embedded broker.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/tetrapipe run "$@"
