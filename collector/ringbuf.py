"""A BPF ring buffer consumed in bulk: the map is mmapped here (consumer page rw, producer page
and the twice-mapped data area ro) and one call copies every committed record, framed as a
RawBatch carries them (u32 length + bytes), into one buffer: a ``Span``. No bcc callback, no
per-record Python object on the hot path.

The copy is done by a small C helper (collector/native/ringbuf_drain.c) built with the system C
compiler by ``scripts/setup-native.sh`` (or at first use) into a cache directory, loaded with
ctypes; ``TETRAPIPE_NO_EXTENSIONS=1`` (or no compiler) selects the pure-Python loop that does
the same work record by record (as aiokafka's AIOKAFKA_NO_EXTENSIONS).
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import hashlib
import logging
import mmap
import select
import struct
from pathlib import Path

from tetrapipe import native_build

log = logging.getLogger(__name__)

SRC = Path(__file__).parent / "native" / "ringbuf_drain.c"
BUSY, DISCARD, HDR = 1 << 31, 1 << 30, 8
KTIME_AT, PID_AT = 16, 8
REC_EXEC, REC_EXIT, REC_FORK = 1, 2, 3
NO_KTIME = (1 << 64) - 1
META = 3   # u64 per record in a span's meta: offset in the blob, ktime, kind | pid << 32
SPAN_MAX = 2 << 20   # bytes copied per drain call at most (the rest: the next call, at once)
MIN_FRAMED = 28      # a tp_header record framed (u32 length + 24 bytes); smaller ones just wait

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
MAP_FAILED = ctypes.c_void_p(-1).value


def native_disabled() -> bool:
    return native_build.disabled()


def _so_name() -> str:
    return f"ringbuf_drain-{hashlib.sha256(SRC.read_bytes()).hexdigest()[:16]}.so"


def build(quiet: bool = True) -> Path | None:
    """Compile the helper into the first writable cache directory (idempotent); None if no
    compiler or nothing writable. A built file someone else could have written is not used."""
    return native_build.build(SRC, _so_name(), "native ring-buffer helper", quiet=quiet)


_native: object | None = None
_native_tried = False


def native() -> object | None:
    """The C helper's tp_rb_drain, or None (switched off or not buildable: pure Python)."""
    global _native, _native_tried
    if native_disabled():
        return None
    if not _native_tried:
        _native_tried = True
        path = build()
        if path is None:
            log.warning("no C compiler for the ring-buffer helper: draining in pure Python")
        else:
            fn = ctypes.CDLL(str(path)).tp_rb_drain
            fn.restype = ctypes.c_int
            fn.argtypes = (ctypes.c_void_p,) * 5 + (ctypes.c_uint64, ctypes.c_void_p,
                                                     ctypes.c_uint64, ctypes.c_void_p)
            _native = fn
    return _native


def _max_entries(fd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("max_entries:"):
            return int(line.split()[1])
    raise OSError(f"fd {fd}: no max_entries in fdinfo (not a BPF map?)")


class Span:
    """Records copied by one drain call, framed: ``blob[meta offset of i0 : of i1]`` are records
    i0..i1-1. Splitting never copies the blob."""

    __slots__ = ("blob", "meta", "i0", "i1")

    def __init__(self, blob: bytes, meta: memoryview, i0: int, i1: int) -> None:
        self.blob, self.meta, self.i0, self.i1 = blob, meta, i0, i1

    def __len__(self) -> int:
        return self.i1 - self.i0

    def off(self, i: int) -> int:
        return self.meta[META * i] if i < (len(self.meta) // META) else len(self.blob)

    def framed(self) -> memoryview:
        return memoryview(self.blob)[self.off(self.i0):self.off(self.i1)]

    def nbytes(self) -> int:
        return self.off(self.i1) - self.off(self.i0)

    def ktime(self, i: int) -> int:
        return self.meta[META * i + 1]

    def kind_pid(self, i: int) -> tuple[int, int]:
        v = self.meta[META * i + 2]
        return v & 0xFFFF, v >> 32

    def record(self, i: int) -> bytes:
        o = self.off(i)
        return self.blob[o + 4:self.off(i + 1)]

    def records(self) -> list[bytes]:
        return [self.record(i) for i in range(self.i0, self.i1)]

    def split(self, i: int) -> tuple[Span, Span]:
        return Span(self.blob, self.meta, self.i0, i), Span(self.blob, self.meta, i, self.i1)

    def index_bytes_within(self, limit: int, per_record: int = 0) -> int:
        """The largest i with records i0..i-1 framed in ``limit`` bytes (+ per_record each)."""
        base = self.off(self.i0)
        return bisect.bisect_right(range(self.i0, self.i1 + 1), limit,
                                   key=lambda j: self.off(j) - base + (j - self.i0) * per_record) - 1 + self.i0

    def max_ktime(self) -> int:
        return max(self.meta[META * self.i0 + 1:META * self.i1:META])

    def first_after(self, wm: int) -> int:
        """Index of the first record whose kernel time is past ``wm`` (i1 if none)."""
        m = self.meta
        for i in range(self.i0, self.i1):
            if m[META * i + 1] > wm:
                return i
        return self.i1


class MappedRingBuffer:
    """One BPF_MAP_TYPE_RINGBUF map, consumed by ``drain()``; ``wait(ms)`` blocks until the kernel
    signals data (records written with BPF_RB_NO_WAKEUP do not wake it: drain anyway)."""

    def __init__(self, map_fd: int, use_native: bool | None = None) -> None:
        self.fd = map_fd
        self.size = _max_entries(map_fd)
        page = mmap.PAGESIZE
        self._cons_len, self._prod_len = page, page + 2 * self.size
        self._cons = _libc.mmap(None, self._cons_len, mmap.PROT_READ | mmap.PROT_WRITE,
                                mmap.MAP_SHARED, map_fd, 0)
        if self._cons in (None, MAP_FAILED):
            raise OSError(ctypes.get_errno(), "mmap of the ring buffer's consumer page failed")
        self._prod = _libc.mmap(None, self._prod_len, mmap.PROT_READ, mmap.MAP_SHARED, map_fd, page)
        if self._prod in (None, MAP_FAILED):
            _libc.munmap(self._cons, self._cons_len)
            raise OSError(ctypes.get_errno(), "mmap of the ring buffer's data pages failed")
        self._data = self._prod + page
        # copy buffers: anonymous maps (resident only where written), at most SPAN_MAX per call
        self.cap = min(self.size, SPAN_MAX)
        self.max_recs = self.cap // MIN_FRAMED + 1
        self._out_mm = mmap.mmap(-1, self.cap)
        self._meta_mm = mmap.mmap(-1, META * 8 * self.max_recs)
        self._out = ctypes.addressof(ctypes.c_char.from_buffer(self._out_mm))
        self._meta = ctypes.addressof(ctypes.c_char.from_buffer(self._meta_mm))
        self._res = (ctypes.c_uint64 * 5)()
        self._fn = native() if use_native is None else (native() if use_native else None)
        self._ep = select.epoll()
        self._ep.register(map_fd, select.EPOLLIN)
        self.discarded = 0
        self.exits = 0      # in the last drain: records of kind exit, of kind exec or fork
        self.starts = 0

    @property
    def native(self) -> bool:
        return self._fn is not None

    def wait(self, timeout_ms: int) -> None:
        self._ep.poll(timeout_ms / 1000)

    def drain(self) -> Span | None:
        """Every committed record, copied and framed; the consumer position advanced once."""
        if self._fn is not None:
            r = self._res
            self._fn(self._cons, self._prod, self._data, self.size - 1, self._out, self.cap,
                     self._meta, self.max_recs, r)
            nbytes, n, disc, self.exits, self.starts = r[0], r[1], r[2], r[3], r[4]
        else:
            nbytes, n, disc = self._drain_py()
        self.discarded += disc
        if not n:
            return None
        blob = ctypes.string_at(self._out, nbytes)
        meta = memoryview(ctypes.string_at(self._meta, n * META * 8)).cast("Q")
        return Span(blob, meta, 0, n)

    def _drain_py(self) -> tuple[int, int, int]:
        cons = ctypes.c_uint64.from_address(self._cons)
        prod = ctypes.c_uint64.from_address(self._prod)
        data = (ctypes.c_uint8 * (2 * self.size)).from_address(self._data)
        mv = memoryview(data).cast("B")
        out = memoryview(self._out_mm)
        meta = memoryview(self._meta_mm).cast("Q")
        c, p, mask = cons.value, prod.value, self.size - 1
        w = n = disc = exits = starts = 0
        u32, head = struct.Struct("<I"), struct.Struct("<H6xI4xQ")   # kind, pid, ktime
        unpack_len, pack_len, unpack_head = u32.unpack_from, u32.pack_into, head.unpack_from
        while c < p and n < self.max_recs:
            at = c & mask
            (ln,) = unpack_len(mv, at)
            if ln & BUSY:
                break
            size = ln & ~(BUSY | DISCARD)
            total = (size + HDR + 7) & ~7
            if ln & DISCARD:
                disc += 1
            else:
                if w + 4 + size > self.cap:
                    break
                src = at + HDR
                pack_len(out, w, size)
                out[w + 4:w + 4 + size] = mv[src:src + size]
                ktime, kp = NO_KTIME, 0xFFFF
                if size >= KTIME_AT + 8:
                    kind, pid, ktime = unpack_head(mv, src)
                    kp = kind | pid << 32
                    if kind <= REC_FORK:
                        exits += kind == REC_EXIT
                        starts += kind != REC_EXIT and kind != 0
                meta[META * n], meta[META * n + 1], meta[META * n + 2] = w, ktime, kp
                n += 1
                w += 4 + size
            c += total
        cons.value = c  # x86: stores are not reordered with older loads (the C helper releases)
        self.exits, self.starts = exits, starts
        return w, n, disc

    def close(self) -> None:
        if self._cons:
            self._ep.close()
            _libc.munmap(self._prod, self._prod_len)
            _libc.munmap(self._cons, self._cons_len)
            self._cons = self._prod = 0


def map_fd(bpf: object, name: str) -> int:
    return int(bpf[name].map_fd)  # type: ignore[index]
