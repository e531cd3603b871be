"""The guest looks like a real install of the stock kernel: what tetrapipe's start relies on."""

from __future__ import annotations

import os
from pathlib import Path


def test_booted_the_requested_kernel(guest_release: str) -> None:
    assert os.uname().release == guest_release


def test_kernel_installed_as_debian_does(guest_release: str) -> None:
    modules = Path("/lib/modules") / guest_release
    assert (Path("/boot") / f"config-{guest_release}").read_text().count("CONFIG_BPF=y") == 1
    assert (modules / "build" / "Makefile").is_file()  # linux-headers-<release>
    assert (modules / "source" / "include" / "linux" / "kconfig.h").is_file()  # ...-common
    assert not Path("/proc/config.gz").exists()  # Debian: no CONFIG_IKCONFIG_PROC


def test_kernel_interfaces_mounted() -> None:
    assert Path("/sys/kernel/btf/vmlinux").is_file()
    assert Path("/sys/kernel/tracing/events/syscalls").is_dir()
    assert "bpf" in Path("/sys/kernel/security/lsm").read_text().split(",")
    assert os.statvfs("/sys/fs/bpf").f_bsize > 0
