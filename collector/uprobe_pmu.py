"""Uprobes opened on the kernel's ``uprobe`` PMU directly, with an explicit reference counter.

Why not bcc's ``BPF.attach_uprobe``: Debian's Python bcc (0.26) calls libbcc's C
``bpf_attach_uprobe`` with six arguments, but that function takes seven, the last the uprobe's
reference-counter offset (``ref_ctr_offset``, a USDT semaphore's file offset). On x86_64 the
seventh argument is read from the stack, so every uprobe bcc's Python makes gets whatever was
there as its reference counter (0x6 measured on this machine: the kernel logged "ref_ctr_offset
mismatch ... ref_ctr_offset(old): 0x6" when a second uprobe came at the same place). The kernel
then increments the two bytes at that file offset in any process that maps them writable, and
refuses ("ref_ctr_offset mismatch", EINVAL) any other uprobe at the same place with another
counter: another tracer's, or a USDT semaphore probe's. And libbcc falls back silently to a
tracefs uprobe without the counter when the PMU refuses, where a semaphore probe would never fire.

``attach`` makes the uprobe itself: ``perf_event_open`` on the uprobe PMU (its type from sysfs,
``config1`` = the path, ``config2`` = the file offset, ``ref_ctr_offset`` in config bits 32-63, 0
for none), ``PERF_EVENT_IOC_SET_BPF`` with the program, ``PERF_EVENT_IOC_ENABLE``; the fd joins
bcc's uprobe table under the event name bcc would give it, so ``detach_uprobe_event`` and
``cleanup`` close it as they close bcc's own. A refusal is an error naming the errno. Kernels
without the uprobe PMU (< 4.17) keep bcc's path (a tracefs uprobe, where the stray argument is
not used).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
from pathlib import Path
from typing import Any

UPROBE_PMU = "/sys/bus/event_source/devices/uprobe"
REF_CTR_SHIFT = 32                      # PERF_UPROBE_REF_CTR_OFFSET_SHIFT
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_ENABLE = 0x2400          # _IO('$', 0)
PERF_EVENT_IOC_SET_BPF = 0x40042408     # _IOW('$', 8, __u32)
NR_PERF_EVENT_OPEN = 298                # x86_64
ATTR_SIZE = 112                         # PERF_ATTR_SIZE_VER5


class UprobeAttachError(Exception):
    """The kernel refused the uprobe; the message says where and why."""


def available() -> bool:
    return os.path.exists(f"{UPROBE_PMU}/type")


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _perf_uprobe(path: bytes, offset: int, ref_ctr_offset: int) -> int:
    pmu_type = int(Path(f"{UPROBE_PMU}/type").read_text())
    path_buf = ctypes.create_string_buffer(path)
    attr = bytearray(ATTR_SIZE)
    struct.pack_into("<IIQQ", attr, 0, pmu_type, ATTR_SIZE, ref_ctr_offset << REF_CTR_SHIFT, 1)
    struct.pack_into("<I", attr, 48, 1)                                        # wakeup_events
    struct.pack_into("<QQ", attr, 56, ctypes.addressof(path_buf), offset)      # uprobe_path, probe_offset
    buf = (ctypes.c_char * ATTR_SIZE).from_buffer(attr)
    fd = _libc.syscall(ctypes.c_long(NR_PERF_EVENT_OPEN), buf, ctypes.c_int(-1), ctypes.c_int(0),
                       ctypes.c_int(-1), ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise UprobeAttachError(f"perf_event_open(uprobe {path.decode(errors='replace')}+{offset:#x}, "
                             f"ref_ctr_offset {ref_ctr_offset:#x}): {os.strerror(err)}")
    return int(fd)


def attach(bpf: Any, path: str, fn_name: str, *, sym: str = "", addr: int | None = None,
           ref_ctr_offset: int = 0) -> None:
    """Attach ``fn_name`` of a loaded bcc program at ``sym`` or ``addr`` in ``path`` (resolved as
    bcc's ``attach_uprobe`` resolves them), with ``ref_ctr_offset`` as the uprobe's reference
    counter (0: none); the perf event fd joins bcc's uprobe table (detach/cleanup close it)."""
    from bcc import BPF

    if not available():
        if ref_ctr_offset:
            raise UprobeAttachError("this kernel has no uprobe PMU for a uprobe with a reference counter")
        bpf.attach_uprobe(name=path.encode(), sym=sym.encode(), addr=addr, fn_name=fn_name.encode())
        return
    file, off = BPF._check_path_symbol(path.encode(), sym.encode(), addr, -1)
    bpf._check_probe_quota(1)
    fn = bpf.load_func(fn_name.encode(), BPF.KPROBE)
    fd = _perf_uprobe(file, off, ref_ctr_offset)
    try:
        fcntl.ioctl(fd, PERF_EVENT_IOC_SET_BPF, fn.fd)
        fcntl.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)
    except OSError as exc:
        os.close(fd)
        raise UprobeAttachError(f"attaching {fn_name} to uprobe {path}+{off:#x}: {exc}") from None
    bpf._add_uprobe_fd(bpf._get_uprobe_evname(b"p", file, off, -1), fd)
