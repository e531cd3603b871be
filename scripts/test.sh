#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite (kernel tests need root).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-test.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=30 "$@"
