#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite (kernel tests need root).
#
# With no arguments, the stock-kernel VM tests (tests/test_stock_kernels.py: qemu, CPU-bound in
# the guest) run as a second pytest beside the rest, which mostly waits on brokers, servers and
# processes; their output follows the main run's. TETRAPIPE_VM_PARALLEL=0 runs everything in one
# pytest. With arguments, exactly one pytest with those arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-test.sh
.venv/bin/ruff check .
PYTEST=(.venv/bin/python -m pytest -q -p no:cacheprovider --durations=30)
VM_TESTS=tests/test_stock_kernels.py
if [ "$#" -gt 0 ] || [ "${TETRAPIPE_VM_PARALLEL:-1}" = 0 ]; then
    exec "${PYTEST[@]}" "$@"
fi
vm_log=$(mktemp /tmp/tetrapipe-vm-tests.XXXXXX.log)
"${PYTEST[@]}" "$VM_TESTS" >"$vm_log" 2>&1 &
vm_pid=$!
trap 'kill "$vm_pid" 2>/dev/null || true' INT TERM
main_rc=0
"${PYTEST[@]}" --ignore "$VM_TESTS" || main_rc=$?
vm_rc=0
wait "$vm_pid" || vm_rc=$?
echo
echo "==== stock-kernel VM tests ($VM_TESTS), run beside the rest: exit $vm_rc ===="
cat "$vm_log"
rm -f "$vm_log"
echo "test.sh: main suite exit $main_rc, VM tests exit $vm_rc"
[ "$main_rc" = 0 ] && [ "$vm_rc" = 0 ]
