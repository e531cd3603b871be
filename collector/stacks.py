"""Stack traces of Post's ``kernelStackTrace``/``userStackTrace``: the policy program captures a
stack with bpf_get_stackid into its ``stack_traces`` map and writes the id into the hook record
(bpf/records.h TP_ARG_KSTACK/USTACK); the policy's drain calls :meth:`StackSymbolizer.rewrite`
on each record, which replaces each id by the symbolised frames (TP_ARGF_SYMBOLS) before the record
leaves the node: kernel addresses by /proc/kallsyms (read once per policy load, symbol + offset +
module as Tetragon's ``kernel_stack_trace``), user addresses by bcc's symbolizer against the
process's /proc/<pid>/maps and ELF symbols, right when the record is drained (the process may have
exited by then: its frames keep their addresses, with no symbol, counted in
``tetrapipe_stack_frames_unresolved_total``).

Entries stay in the stack map (never deleted): equal stacks share an id, and an id read for one
record is never overwritten for another (no BPF_F_REUSE_STACKID). A new stack whose bucket is taken
by another gets -EEXIST: the record then says so (no frames) and it is counted."""

from __future__ import annotations

import bisect
import ctypes as ct
import logging
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from bpf import records as r

log = logging.getLogger(__name__)

STACKS = Counter("tetrapipe_stack_traces_total", "Stacks of Post actions symbolised, by kind (kernel, user)",
                 ["kind"])
STACKS_LOST = Counter("tetrapipe_stack_traces_lost_total",
                      "Stacks a Post action asked for and the kernel did not capture (bpf_get_stackid's error: "
                      "the map's bucket was taken, or no user stack), or that left the map, by kind", ["kind"])
UNRESOLVED = Counter("tetrapipe_stack_frames_unresolved_total",
                     "Stack frames sent with their address and no symbol, by kind", ["kind"])
MAX_FRAMES = 127              # the kernel's default perf_event_max_stack
MAX_NAME = 256                # symbol and module names are cut to this many bytes
DATA_MAX = 0xffff - 64        # a hook record's argument bytes are counted in a u16 (records.h data_len)
_SIZE_AT = 4                  # tp_header.size (u32)
_DLEN_AT = r.HEADER.size + 10   # tp_hook.data_len (u16)


class KernelSymbols:
    """/proc/kallsyms as a sorted table: address → (symbol, offset, module; "" = the kernel image)."""

    def __init__(self, path: Path = Path("/proc/kallsyms")) -> None:
        rows: list[tuple[int, str, str]] = []
        with open(path, "rb") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3 or parts[1] not in b"tTwW":
                    continue
                addr = int(parts[0], 16)
                if addr:
                    mod = parts[3].strip(b"[]").decode() if len(parts) > 3 else ""
                    rows.append((addr, parts[2].decode(errors="replace"), mod))
        rows.sort()
        self.addrs = [a for a, _s, _m in rows]
        self.rows = rows

    def __bool__(self) -> bool:
        return bool(self.addrs)   # all zero: kallsyms hidden from us (kptr_restrict), no symbols

    def resolve(self, addr: int) -> r.StackFrame:
        i = bisect.bisect_right(self.addrs, addr) - 1
        if i < 0:
            return r.StackFrame(addr, 0, "", "")
        base, sym, mod = self.rows[i]
        return r.StackFrame(addr, addr - base, sym, mod)


def user_frames(pid: int, addrs: list[int]) -> list[r.StackFrame]:
    """``addrs`` of process ``pid`` symbolised from its maps and ELF files (bcc's symbolizer);
    a frame with no symbol keeps its address and, where known, its module and module offset."""
    from bcc import libbcc  # the collector has bcc; imported here so records-only users need not

    cache = libbcc.lib.bcc_symcache_new(pid, ct.cast(None, ct.POINTER(libbcc.bcc_symbol_option)))
    out = []
    try:
        for addr in addrs:
            sym = libbcc.bcc_symbol()
            res = libbcc.lib.bcc_symcache_resolve(cache, addr, ct.byref(sym)) if cache else -1
            module = (ct.cast(sym.module, ct.c_char_p).value or b"").decode(errors="replace") if cache else ""
            if res < 0:
                out.append(r.StackFrame(addr, sym.offset if module else 0, "", module))
                continue
            name = (sym.demangle_name or sym.name or b"").decode(errors="replace")
            libbcc.lib.bcc_symbol_free_demangle_name(ct.byref(sym))
            out.append(r.StackFrame(addr, sym.offset, name, module))
    finally:
        if cache:
            libbcc.lib.bcc_free_symcache(cache, pid)
    return out


class StackSymbolizer:
    """Per policy: reads its ``stack_traces`` map; ``rewrite`` is the drain's record transform."""

    def __init__(self, bpf: Any, map_name: str = "stack_traces",
                 kernel: KernelSymbols | None = None,
                 user: Callable[[int, list[int]], list[r.StackFrame]] = user_frames) -> None:
        self.bpf = bpf
        self.map_name = map_name
        self.kernel = kernel if kernel is not None else KernelSymbols()
        self.user = user
        if not self.kernel:
            log.warning("stack traces: /proc/kallsyms shows no addresses (kptr_restrict?): kernel frames "
                        "go without symbols")

    def addresses(self, stack_id: int) -> list[int] | None:
        try:
            return list(self.bpf[self.map_name].walk(stack_id))[:MAX_FRAMES]
        except KeyError:
            return None

    def frames(self, kind: int, stack_id: int, pid: int) -> list[r.StackFrame] | None:
        label = "kernel" if kind == r.ARG_KSTACK else "user"
        addrs = self.addresses(stack_id) if stack_id >= 0 else None
        if addrs is None:
            STACKS_LOST.labels(label).inc()
            return None
        if kind == r.ARG_KSTACK:
            out = [self.kernel.resolve(a) if self.kernel else r.StackFrame(a, 0, "", "") for a in addrs]
        else:
            out = self.user(pid, addrs)
        missing = sum(1 for f in out if not f.symbol)
        if missing:
            UNRESOLVED.labels(label).inc(missing)
        STACKS.labels(label).inc()
        return [r.StackFrame(f.address, f.offset, f.symbol[:MAX_NAME], f.module[:MAX_NAME]) for f in out]

    def rewrite(self, rec: bytes) -> bytes:
        """``rec`` with its stack ids replaced by frames (a stack not captured: no frames and
        TP_ARGF_SYMBOLS|TP_ARGF_ERROR); any other record unchanged."""
        rec = bytes(rec)
        if len(rec) < r.HEADER.size + r.HOOK_FIXED.size or int.from_bytes(rec[0:2], "little") != r.REC_HOOK:
            return rec
        pid = int.from_bytes(rec[8:12], "little")
        nargs = rec[r.HEADER.size + 9]
        o = r.HEADER.size + r.HOOK_FIXED.size
        parts = [rec[:o]]
        changed = False
        for _ in range(nargs):
            if o + r.ARG_HDR.size > len(rec):
                return rec          # malformed: left for the enricher to refuse with the reason
            t, f, n, _orig = r.ARG_HDR.unpack_from(rec, o)
            end = o + r.ARG_HDR.size + n
            if t in (r.ARG_KSTACK, r.ARG_USTACK) and not f & r.ARGF_SYMBOLS and n == 8:
                sid = int.from_bytes(rec[end - 8:end], "little", signed=True)
                fr = self.frames(t, sid, pid)
                data = r.encode_frames(fr or [])
                parts.append(r.ARG_HDR.pack(t, r.ARGF_SYMBOLS | (0 if fr is not None else r.ARGF_ERROR),
                                            len(data), len(data)) + data)
                changed = True
            else:
                parts.append(rec[o:end])
            o = end
        if not changed:
            return rec
        parts.append(rec[o:])
        out = bytearray(b"".join(parts))
        dlen = len(out) - r.HEADER.size - r.HOOK_FIXED.size
        if dlen > DATA_MAX:   # a frame list that does not fit the u16 length: the stacks go, counted
            log.warning("stack traces of %d bytes do not fit one record: dropped", dlen)
            STACKS_LOST.labels("too_big").inc()
            return rec
        struct.pack_into("<I", out, _SIZE_AT, len(out))
        struct.pack_into("<H", out, _DLEN_AT, dlen)
        return bytes(out)
