#!/bin/bash
# Regenerates the Python modules of the Tetragon API (package `tetragon/`) from schemas/proto/.
# The generated files are committed, so running tetrapipe needs no code generation; run this after
# editing a .proto (needs grpcio-tools: .venv/bin/pip install grpcio-tools).
# tests/test_grpc_proto.py checks the committed files are what this script makes.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
PY="${PYTHON:-.venv/bin/python}"
"$PY" -m grpc_tools.protoc -I schemas/proto --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
    schemas/proto/tetragon/*.proto
touch "$out/tetragon/__init__.py"
