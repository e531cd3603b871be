"""``spec.uprobes``: application function calls as ``process_uprobe`` events (uprobes work on this
kernel; kprobes do not).

A Tetragon uprobe entry names an ELF file (``path``), the functions to hook (``symbols``, or
``offsets`` into the file) and the arguments to capture (``args``: index = parameter position,
type). Each (entry, symbol or offset) pair becomes one hook with its own id, so the event names
the symbol that fired.

Pieces, for the policy engine (collector/policy/) to call, and usable alone:
- :func:`parse` checks an entry and says where and why it is wrong (YAML path);
- :func:`resolve` finds each symbol's file offset with bcc's ELF resolver (a symbol that is not
  there is refused at load, not silently skipped);
- :func:`entry_probe_c` is the uprobe entry in the engine's convention (``u64 a[6]`` from the
  registers, then ``tp_hook_<id>(ctx, a, 0, 0)``, which applies selectors and writes the record);
- :func:`capture_program` is a complete program for hooks without selectors: it captures the
  arguments itself and writes REC_HOOK records (bpf/records.h struct tp_hook with struct tp_arg
  arguments), so a policy of uprobes with Post only needs nothing else;
- :class:`UprobeProgram` loads, attaches, drains; :func:`catalog_hook` is the hook's entry for
  the policy catalog (``kind: uprobe``, ``path``, ``symbol``, ``offset``) the enricher reads.

Argument types: the integer types (from the argument registers), ``string`` (a user-space NUL
terminated string, up to STRING_MAX bytes), ``char_buf`` with ``sizeArgIndex`` (user bytes, up to
BUF_MAX). Arguments 0-5 (the System V x86-64 / arm64 register arguments). A uprobe cannot fault
pages in: user memory the process never touched yet (a string constant on its first use) comes
as an argument with the error flag and no bytes, as in Tetragon.
"""

from __future__ import annotations

import ctypes as ct
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from collector import loader, uprobe_pmu

STRING_MAX = 256
BUF_MAX = 256
MAX_ARGS = 6
INT_TYPES = {
    "int": 1, "sint8": 1, "int8": 1, "sint16": 1, "int16": 1, "int32": 1, "sint32": 1,
    "uint8": 2, "uint16": 2, "uint32": 2, "ulong": 2, "uint64": 2,
    "size_t": 3,
    "int64": 4, "sint64": 4, "long": 4, "auto": 4,
}
ARG_STRING = 5
ARG_BYTES = 6
ARG_TYPES = frozenset(INT_TYPES) | {"string", "char_buf"}
ACTION_POST = 1
HOOK_NO_SELECTOR = 255


class UprobeError(ValueError):
    """An uprobe entry that cannot be loaded: where (YAML path) and why."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path else reason)


@dataclass
class UprobeArg:
    index: int
    type: str
    label: str = ""
    size_arg_index: int = 0      # counts from 1, as Tetragon's sizeArgIndex


@dataclass
class UprobeSpec:
    path: str
    symbols: list[str] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    args: list[UprobeArg] = field(default_factory=list)
    message: str = ""
    tags: list[str] = field(default_factory=list)
    where: str = ""              # YAML path of the entry, for errors


@dataclass
class Target:
    """One attach point: a symbol (or a bare offset) in a file, and its file offset."""

    path: str
    symbol: str
    offset: int
    in_container: bool = False   # path inside each selected container's root (policy/uprobe_paths.py)
    usdt: str = ""               # a USDT probe "provider:name" (policy/usdt.py): attached by offset
    more_offsets: tuple[int, ...] = ()   # a USDT probe's other locations
    ref_ctr_offset: int = 0      # a USDT probe's semaphore (file offset): counted by the kernel


def _int(v: Any, where: str) -> int:
    if isinstance(v, bool):
        raise UprobeError(where, f"expected an integer, got {v!r}")
    try:
        return int(v, 0) if isinstance(v, str) else int(v)
    except (TypeError, ValueError) as exc:
        raise UprobeError(where, f"expected an integer, got {v!r}") from exc


def parse(entry: dict[str, Any], where: str = "spec.uprobes[0]") -> UprobeSpec:
    """One ``spec.uprobes`` entry → a checked spec (UprobeError with the YAML path otherwise)."""
    if not isinstance(entry, dict):
        raise UprobeError(where, "an uprobe entry must be a mapping")
    known = {"path", "symbols", "offsets", "refCtrOffsets", "args", "selectors", "message", "tags",
             "data", "btfPath", "returnArg", "return"}
    for k in entry:
        if k not in known:
            raise UprobeError(f"{where}.{k}", "unknown field")
    path = entry.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise UprobeError(f"{where}.path", "an absolute path to an ELF file is required")
    if not os.path.isfile(path):
        raise UprobeError(f"{where}.path", f"{path} does not exist or is not a file")
    symbols = entry.get("symbols") or []
    offsets = entry.get("offsets") or []
    if not isinstance(symbols, list) or not all(isinstance(s, str) and s for s in symbols):
        raise UprobeError(f"{where}.symbols", "a list of symbol names is expected")
    if not isinstance(offsets, list):
        raise UprobeError(f"{where}.offsets", "a list of file offsets is expected")
    if not symbols and not offsets:
        raise UprobeError(where, "symbols or offsets are required")
    if entry.get("refCtrOffsets"):
        raise UprobeError(f"{where}.refCtrOffsets", "USDT reference counters are not supported")
    if entry.get("return"):
        raise UprobeError(f"{where}.return", "uretprobes are not supported yet")
    spec = UprobeSpec(path, list(symbols),
                      [_int(o, f"{where}.offsets[{i}]") for i, o in enumerate(offsets)],
                      message=str(entry.get("message") or ""),
                      tags=[str(t) for t in entry.get("tags") or []], where=where)
    for i, a in enumerate(entry.get("args") or []):
        ap = f"{where}.args[{i}]"
        if not isinstance(a, dict):
            raise UprobeError(ap, "an argument must be a mapping")
        idx = _int(a.get("index"), f"{ap}.index")
        if not 0 <= idx < MAX_ARGS:
            raise UprobeError(f"{ap}.index", f"index {idx}: only register arguments 0-5 can be read")
        t = str(a.get("type", ""))
        if t not in ARG_TYPES:
            raise UprobeError(f"{ap}.type", f"type {t!r} is not supported for uprobes (one of "
                                            f"{', '.join(sorted(ARG_TYPES))})")
        size_idx = _int(a.get("sizeArgIndex", 0), f"{ap}.sizeArgIndex")
        if t == "char_buf" and not 1 <= size_idx <= MAX_ARGS:
            raise UprobeError(f"{ap}.sizeArgIndex", "a char_buf argument needs sizeArgIndex 1-6")
        spec.args.append(UprobeArg(idx, t, str(a.get("label") or ""), size_idx))
    for i, o in enumerate(spec.offsets):
        if o < 0 or o >= os.path.getsize(path):
            raise UprobeError(f"{where}.offsets[{i}]", f"offset {o:#x} is outside {path}")
    return spec


def resolve(spec: UprobeSpec) -> list[Target]:
    """Attach points of a spec; UprobeError naming the symbol that is not in the file."""
    from bcc import BPF

    out = []
    for i, sym in enumerate(spec.symbols):
        try:
            _, off = BPF._check_path_symbol(spec.path, sym, None, -1)
        except Exception as exc:  # noqa: BLE001 - bcc raises a bare Exception
            raise UprobeError(f"{spec.where}.symbols[{i}]",
                              f"symbol {sym!r} not found in {spec.path}: {exc}") from exc
        out.append(Target(spec.path, sym, int(off)))
    out += [Target(spec.path, "", o) for o in spec.offsets]
    return out


def entry_probe_c(hook_id: int, fn_name: str) -> str:
    """The uprobe entry in the policy engine's convention: register arguments into ``a``, then
    the hook function the engine generated (selectors, actions, record)."""
    regs = "\n".join(f"    a[{i}] = (u64)PT_REGS_PARM{i + 1}(ctx);" for i in range(MAX_ARGS))
    return (f"int {fn_name}(struct pt_regs *ctx)\n{{\n    u64 a[6] = {{}};\n{regs}\n"
            f"    tp_hook_{hook_id}(ctx, a, 0, 0);\n    return 0;\n}}\n")


def attach(bpf: Any, target: Target, fn_name: str) -> None:
    """Attach ``fn_name`` of a loaded program at a target (by symbol when there is one), through
    collector/uprobe_pmu.py (bcc's ``attach_uprobe`` passes the kernel a stray reference counter)."""
    if target.symbol and not target.usdt:
        uprobe_pmu.attach(bpf, target.path, fn_name, sym=target.symbol)
    else:   # a USDT probe's semaphore is its reference counter (collector/usdt_semaphore.py)
        for off in (target.offset, *target.more_offsets):
            uprobe_pmu.attach(bpf, target.path, fn_name, addr=off, ref_ctr_offset=target.ref_ctr_offset)


def catalog_hook(hook_id: int, spec: UprobeSpec, target: Target) -> dict[str, Any]:
    """The hook's entry in the policy catalog (REC_POLICY's "hooks" list)."""
    return {
        "id": hook_id, "kind": "uprobe", "function_name": target.symbol, "path": target.path,
        "symbol": target.symbol, "offset": target.offset,
        "args": [{"index": a.index, "type": a.type, "label": a.label} for a in spec.args],
        "message": spec.message, "tags": list(spec.tags),
    }


# ---- standalone capture (hooks without selectors) ----------------------------------------------

_PROLOGUE = """
#include <uapi/linux/ptrace.h>
#include "records.h"

#define UP_DATA 2048
#define UP_SLACK 512

struct up_buf {
    struct tp_hook e;
    char data[UP_DATA + UP_SLACK];
};

BPF_RINGBUF_OUTPUT(events, UP_RINGBUF_PAGES);
BPF_PERCPU_ARRAY(up_scratch, struct up_buf, 1);
BPF_PERCPU_ARRAY(drops, u64, 1);

static __always_inline u32 up_put_u64(struct up_buf *b, u32 off, u8 type, u64 v)
{
    off &= (UP_DATA - 1);
    struct tp_arg *ah = (struct tp_arg *)&b->data[off];
    ah->type = type;
    ah->flags = 0;
    ah->len = 8;
    ah->orig_size = 8;
    __builtin_memcpy(&b->data[off + sizeof(struct tp_arg)], &v, 8);
    b->e.nargs++;
    return off + sizeof(struct tp_arg) + 8;
}

static __always_inline u32 up_put_str(struct up_buf *b, u32 off, u64 ptr)
{
    off &= (UP_DATA - 1);
    struct tp_arg *ah = (struct tp_arg *)&b->data[off];
    long n = bpf_probe_read_user_str(&b->data[off + sizeof(struct tp_arg)], UP_STRING_MAX,
                                     (void *)ptr);
    ah->type = TP_ARG_STRING;
    ah->flags = 0;
    if (n <= 0) {
        n = 0;
        ah->flags = TP_ARGF_ERROR;
    } else {
        n -= 1;                    /* without the NUL */
    }
    n &= (UP_STRING_MAX - 1);
    ah->len = n;
    ah->orig_size = n;
    b->e.nargs++;
    return off + sizeof(struct tp_arg) + n;
}

static __always_inline u32 up_put_buf(struct up_buf *b, u32 off, u64 ptr, s64 size)
{
    off &= (UP_DATA - 1);
    struct tp_arg *ah = (struct tp_arg *)&b->data[off];
    u32 n = size < 0 ? 0 : (size > UP_BUF_MAX ? UP_BUF_MAX : (u32)size);
    ah->type = TP_ARG_BYTES;
    ah->flags = size > UP_BUF_MAX ? TP_ARGF_TRUNC : 0;
    ah->orig_size = size < 0 ? 0 : (u32)size;
    n &= (UP_BUF_MAX * 2 - 1);
    if (n > UP_BUF_MAX)
        n = UP_BUF_MAX;
    if (n && bpf_probe_read_user(&b->data[off + sizeof(struct tp_arg)], n, (void *)ptr) < 0) {
        n = 0;
        ah->flags = TP_ARGF_ERROR;
    }
    ah->len = n;
    b->e.nargs++;
    return off + sizeof(struct tp_arg) + n;
}

static __always_inline int up_emit(struct up_buf *b, u32 policy_id, u16 hook_id, u32 off)
{
    u64 id = bpf_get_current_pid_tgid();
    off &= (UP_DATA - 1);
    b->e.h.kind = TP_REC_HOOK;
    b->e.h.version = 1;
    b->e.h.pid = id >> 32;
    b->e.h.tid = (u32)id;
    b->e.h.ktime = bpf_ktime_get_ns();
    b->e.policy_id = policy_id;
    b->e.hook_id = hook_id;
    b->e.selector = TP_HOOK_NO_SELECTOR;
    b->e.action = 1;               /* Post */
    b->e.flags = 0;
    b->e.ret = 0;
    b->e.data_len = off;
    u32 size = sizeof(struct tp_hook) + off;
    b->e.h.size = size;
    if (size > sizeof(struct up_buf))
        return 0;
    if (events.ringbuf_output(b, size, 0) < 0) {
        int zero = 0;
        u64 *d = drops.lookup(&zero);
        if (d)
            (*d)++;
    }
    return 0;
}
"""


def _capture_function(fn_name: str, policy_id: int, hook_id: int, spec: UprobeSpec) -> str:
    lines = [f"int {fn_name}(struct pt_regs *ctx)", "{", "    int zero = 0;",
             "    struct up_buf *b = up_scratch.lookup(&zero);", "    if (!b)", "        return 0;",
             "    b->e.nargs = 0;", "    u32 off = 0;"]
    for a in spec.args:
        reg = f"(u64)PT_REGS_PARM{a.index + 1}(ctx)"
        if a.type in INT_TYPES:
            lines.append(f"    off = up_put_u64(b, off, {INT_TYPES[a.type]}, {reg});")
        elif a.type == "string":
            lines.append(f"    off = up_put_str(b, off, {reg});")
        else:
            lines.append(f"    off = up_put_buf(b, off, {reg}, "
                         f"(s64)PT_REGS_PARM{a.size_arg_index}(ctx));")
    lines += [f"    return up_emit(b, {policy_id}U, {hook_id}, off);", "}", ""]
    return "\n".join(lines)


@dataclass
class Hook:
    hook_id: int
    spec: UprobeSpec
    target: Target
    fn_name: str


def capture_program(policy_id: int, specs: list[UprobeSpec]) -> tuple[str, list[Hook]]:
    """A program capturing the arguments of every (spec, symbol/offset), Post, no selectors."""
    hooks: list[Hook] = []
    parts = [_PROLOGUE]
    for spec in specs:
        for t in resolve(spec):
            hid = len(hooks)
            fn = f"tp_up_{hid}"
            hooks.append(Hook(hid, spec, t, fn))
            parts.append(_capture_function(fn, policy_id, hid, spec))
    return "\n".join(parts), hooks


class UprobeProgram:
    """Loaded capture program: attached on construction, records handed to ``on_record``."""

    def __init__(self, policy_id: int, specs: list[UprobeSpec],
                 on_record: Callable[[bytes], None], ringbuf_pages: int = 64) -> None:
        loader.prepare()
        text, self.hooks = capture_program(policy_id, specs)
        self.policy_id = policy_id
        self.bpf = loader.load_program("uprobes", {"UP_RINGBUF_PAGES": ringbuf_pages,
                                                   "UP_STRING_MAX": STRING_MAX,
                                                   "UP_BUF_MAX": BUF_MAX}, text=text)
        try:
            for h in self.hooks:
                attach(self.bpf, h.target, h.fn_name)
        except Exception:
            self.bpf.cleanup()
            raise

        def cb(_ctx: Any, data: Any, size: int) -> int:
            on_record(ct.string_at(data, size))
            return 0

        self.bpf["events"].open_ring_buffer(cb)

    def catalog(self) -> list[dict[str, Any]]:
        return [catalog_hook(h.hook_id, h.spec, h.target) for h in self.hooks]

    def poll(self, timeout_ms: int = 100) -> None:
        self.bpf.ring_buffer_poll(timeout_ms)
        self.bpf.ring_buffer_consume()

    def drops(self) -> int:
        return int(sum(self.bpf["drops"][ct.c_int(0)]))

    def close(self) -> None:
        self.bpf.cleanup()
