#!/usr/bin/env bash
# What the tests need beyond what `run` needs: setup.sh, then the real servers and kernels the tests
# start (each cached under /var/cache/tetrapipe-build, built or fetched once per machine). The
# README's run command never calls this: a user running the pipeline builds no test servers.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/setup-opa.sh               # real OPA server for the OPA policy-source tests (cached)
./scripts/setup-kube-apiserver.sh    # real API server (apiextensions-apiserver + etcd) for the CRD tests (cached)
[ "${TETRAPIPE_WITH_KAFKA:-1}" = 1 ] && ./scripts/setup-kafka.sh  # Apache Kafka (KRaft) and kcat for the tests (cached)
./scripts/setup-tetragon-client.sh  # a client built on Tetragon's own Go API for tests/test_grpc_api.py (cached)
./scripts/setup-vmkernels.sh  # stock Debian kernels (qemu) for tests/test_stock_kernels.py (cached)
echo "setup-test: ready"
