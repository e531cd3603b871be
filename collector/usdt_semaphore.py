"""USDT semaphores (is-enabled probes), served as Tetragon serves them.

A probe with a semaphore fires only while its semaphore (a ``unsigned short`` in the process,
usually in ``.probes``) is non-zero: ``if (provider_name_ENABLED()) { ...probe... }``. Tetragon
makes the uprobe with the semaphore's *file offset* as its reference counter (the ``uprobe``
PMU's ``ref_ctr_offset``, config bits 32-63, Linux >= 4.20): the kernel then increments the
semaphore in every process that maps the file, now and later, for as long as the uprobe exists,
and decrements it when the uprobe goes. tetrapipe does the same: collector/uprobe_pmu.py opens
the uprobe perf event with the offset this module finds (``file_offset``); closing it removes the
uprobe and the kernel takes the count back.

bcc's USDT support generates argument readers only for an *enabled* probe, and enables a probe
with a semaphore only inside one given process (by writing its memory). ``readers_path`` gives
bcc an in-memory copy of the file whose note for the probe says "no semaphore" (the 8 bytes of the
semaphore address zeroed, nothing else changed), so bcc generates the same readers (the locations
and argument specs are untouched) without writing into any process.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from collector import uprobe_pmu
from collector.uprobe_pmu import REF_CTR_SHIFT

PT_LOAD = 1


class SemaphoreError(Exception):
    """A semaphore probe that cannot be served here; the message is the reason."""


def kernel_reason() -> str:
    """Why this kernel cannot count semaphores ("" where it can)."""
    if not uprobe_pmu.available():
        return "this kernel has no uprobe PMU (perf_event_open uprobes, Linux >= 4.17)"
    try:
        fmt = Path(f"{uprobe_pmu.UPROBE_PMU}/format/ref_ctr_offset").read_text().strip()
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
