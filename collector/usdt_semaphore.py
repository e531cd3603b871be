"""USDT semaphores (is-enabled probes), served as Tetragon serves them.

A probe with a semaphore fires only while its semaphore (a ``unsigned short`` in the process,
usually in ``.probes``) is non-zero: ``if (provider_name_ENABLED()) { ...probe... }``. Tetragon
makes the uprobe with the semaphore's *file offset* as its reference counter (the ``uprobe``
PMU's ``ref_ctr_offset``, config bits 32-63, Linux >= 4.20): the kernel then increments the
semaphore in every process that maps the file, now and later, for as long as the uprobe exists,
and decrements it when the uprobe goes. tetrapipe does the same: ``attach`` opens the uprobe
perf event itself (``perf_event_open`` on the uprobe PMU, ``PERF_EVENT_IOC_SET_BPF``,
``PERF_EVENT_IOC_ENABLE``) and hands the fd to bcc's table, so detaching and ``cleanup`` close it
as they close bcc's own (closing the fd removes the uprobe: the kernel takes the count back).

bcc's own path is not used for these: its Python ``attach_uprobe`` passes no reference counter,
and libbcc's C ``bpf_attach_uprobe`` (which takes one) silently falls back to a tracefs uprobe
without it when the PMU refuses, where the probe would never fire. Here a refusal is an error.

bcc's USDT support generates argument readers only for an *enabled* probe, and enables a probe
with a semaphore only inside one given process (by writing its memory). ``readers_path`` gives
bcc an in-memory copy of the file whose note for the probe says "no semaphore" (the 8 bytes of the
semaphore address zeroed, nothing else changed), so bcc generates the same readers (the locations
and argument specs are untouched) without writing into any process.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

UPROBE_PMU = "/sys/bus/event_source/devices/uprobe"
REF_CTR_SHIFT = 32                      # PERF_UPROBE_REF_CTR_OFFSET_SHIFT
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_ENABLE = 0x2400          # _IO('$', 0)
PERF_EVENT_IOC_SET_BPF = 0x40042408     # _IOW('$', 8, __u32)
NR_PERF_EVENT_OPEN = 298                # x86_64
ATTR_SIZE = 112                         # PERF_ATTR_SIZE_VER5
PT_LOAD = 1


class SemaphoreError(Exception):
    """A semaphore probe that cannot be served here; the message is the reason."""


def kernel_reason() -> str:
    """Why this kernel cannot count semaphores ("" where it can)."""
    if not os.path.exists(f"{UPROBE_PMU}/type"):
        return "this kernel has no uprobe PMU (perf_event_open uprobes, Linux >= 4.17)"
    try:
        fmt = Path(f"{UPROBE_PMU}/format/ref_ctr_offset").read_text().strip()
    except OSError:
        return ("this kernel's uprobe PMU has no ref_ctr_offset (uprobe reference counters, "
                "Linux >= 4.20)")
    if fmt != f"config:{REF_CTR_SHIFT}-63":
        return f"this kernel's uprobe ref_ctr_offset is {fmt!r}, not config:{REF_CTR_SHIFT}-63"
    return ""


def file_offset(path: str, vaddr: int) -> int:
    """The file offset of a link-time virtual address (the note's semaphore), through the ELF
    file's PT_LOAD program headers (64-bit little-endian ELF only, as on x86_64)."""
    with open(path, "rb") as f:
        ident = f.read(64)
        if ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
            raise SemaphoreError(f"{path} is not a 64-bit little-endian ELF file")
        phoff, = struct.unpack_from("<Q", ident, 32)
        phentsize, phnum = struct.unpack_from("<HH", ident, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", table, i * phentsize)
        if p_type == PT_LOAD and p_vaddr <= vaddr and vaddr + 2 <= p_vaddr + p_filesz:
            return p_offset + vaddr - p_vaddr
    raise SemaphoreError(f"the semaphore at {vaddr:#x} is in no loaded segment of {path} with file "
                         "contents (a semaphore must live in the file's data, as sys/sdt.h puts it)")


@contextmanager
def readers_path(path: str, provider: str, name: str, semaphore: int) -> Iterator[str]:
    """A path to an in-memory copy of ``path`` whose notes for provider:name carry no semaphore
    (see the module's docstring); closed on exit."""
    data = bytearray(Path(path).read_bytes())
    # the note's description: pc, base, semaphore (8 bytes each), provider\0, name\0, args\0
    tail = struct.pack("<Q", semaphore) + provider.encode() + b"\0" + name.encode() + b"\0"
    at = data.find(tail)
    if at < 0:
        raise SemaphoreError(f"the note of {provider}:{name} in {path} was not found for its readers")
    while at >= 0:
        data[at:at + 8] = bytes(8)
        at = data.find(tail, at + 8)
    fd = os.memfd_create("tetrapipe-usdt", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


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
        raise SemaphoreError(f"perf_event_open(uprobe {path.decode(errors='replace')}+{offset:#x}, "
                             f"ref_ctr_offset {ref_ctr_offset:#x}): {os.strerror(err)}")
    return int(fd)


def attach(bpf: Any, path: str, addr: int, fn_name: str, ref_ctr_offset: int) -> None:
    """Attach ``fn_name`` of a loaded bcc program at a USDT location (``addr`` as bcc's USDT
    support gives it) with the semaphore at ``ref_ctr_offset`` counted by the kernel; the perf
    event fd joins bcc's uprobe table (detach/cleanup close it)."""
    from bcc import BPF

    file, off = BPF._check_path_symbol(path.encode(), b"", addr, -1)
    bpf._check_probe_quota(1)
    fn = bpf.load_func(fn_name.encode(), BPF.KPROBE)
    fd = _perf_uprobe(file, off, ref_ctr_offset)
    try:
        fcntl.ioctl(fd, PERF_EVENT_IOC_SET_BPF, fn.fd)
        fcntl.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)
    except OSError as exc:
        os.close(fd)
        raise SemaphoreError(f"attaching {fn_name} to uprobe {path}+{off:#x}: {exc}") from None
    bpf._add_uprobe_fd(bpf._get_uprobe_evname(b"p", file, off, -1), fd)
