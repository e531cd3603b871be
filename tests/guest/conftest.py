"""Tests that run inside a stock kernel booted under qemu (tests/test_stock_kernels.py boots it).

They never run on this host by accident: without ``TETRAPIPE_VM_GUEST=1`` (set only by the VM
runner's command) they are not collected, and an explicitly named one is skipped. Each kernel
boots once and runs every test here; a BPF program should compile once per boot (bcc compiles
are 15-27 s in the guest), so share loaded programs through module- or session-scoped fixtures.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

IN_GUEST = os.environ.get("TETRAPIPE_VM_GUEST") == "1"
GUEST_DIR = Path(__file__).resolve().parent

if not IN_GUEST:
    collect_ignore_glob = ["test_*.py"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IN_GUEST:
        return
    skip = pytest.mark.skip(reason="guest test: runs only inside a VM (tests/test_stock_kernels.py)")
    for item in items:
        if GUEST_DIR in Path(str(item.fspath)).parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def guest_release() -> str:
    """The kernel release the runner booted (``uname -r``)."""
    return os.environ["TETRAPIPE_VM_RELEASE"]
