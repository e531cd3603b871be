"""What this kernel offers, probed at start and reported (the policy compiler asks here which
mechanism serves a hook)."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass

TRACEFS = "/sys/kernel/tracing"


@dataclass(frozen=True)
class KernelFeatures:
    release: str
    btf: bool
    tracefs: bool
    kprobes: bool
    syscall_tracepoints: bool
    raw_tracepoints: bool
    bpf_lsm: bool
    ring_buffer: bool
    kernel_headers: bool

    def summary(self) -> str:
        on = [k for k, v in asdict(self).items() if v is True]
        off = [k for k, v in asdict(self).items() if v is False]
        return f"kernel {self.release}: have {', '.join(on)}; lack {', '.join(off) or 'nothing'}"


def _lsms() -> list[str]:
    try:
        with open("/sys/kernel/security/lsm") as f:
            return f.read().strip().split(",")
    except OSError:
        return []


def probe() -> KernelFeatures:
    release = platform.release()
    major, minor = (int(x) for x in release.split(".")[:2])
    return KernelFeatures(
        release=release,
        btf=os.path.exists("/sys/kernel/btf/vmlinux"),
        tracefs=os.path.isdir(f"{TRACEFS}/events"),
        kprobes=os.path.exists(f"{TRACEFS}/kprobe_events"),
        syscall_tracepoints=os.path.isdir(f"{TRACEFS}/events/syscalls"),
        raw_tracepoints=(major, minor) >= (4, 17),
        # BPF LSM programs need "bpf" in the active LSMs *and* BPF trampolines; the latter are
        # refused on some kernels (EPERM), which the policy loader finds out by trying.
        bpf_lsm="bpf" in _lsms(),
        ring_buffer=(major, minor) >= (5, 8),
        kernel_headers=os.path.exists(f"/lib/modules/{release}/build"),
    )
