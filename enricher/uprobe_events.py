"""Uprobe hook records → Tetragon ``process_uprobe`` events.

A uprobe hook record is a REC_HOOK record (the policy engine's struct tp_hook: policy id, hook
id, selector, action, then struct tp_arg arguments); the hook's catalog entry (collector/uprobes.py
``catalog_hook``: ``kind: uprobe``, ``path``, ``symbol``, ``offset``, ``args``) names what fired.
The policy engine's enricher part calls :func:`event_body` for hooks of kind ``uprobe``;
:func:`decode` reads the record body until bpf/records.py carries the engine's decoder.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bpf import records as r

if TYPE_CHECKING:
    from enricher.event_builder import EventBuilder

HOOK_FIXED = struct.Struct("<IHBBBBHq")     # records.h struct tp_hook after the header
ARG_HDR = struct.Struct("<BBHI")            # struct tp_arg
ARG_INT, ARG_UINT, ARG_SIZE, ARG_LONG, ARG_STRING, ARG_BYTES = range(1, 7)
ARGF_TRUNC = 1
ACTIONS = {1: "KPROBE_ACTION_POST", 3: "KPROBE_ACTION_SIGKILL", 9: "KPROBE_ACTION_NOPOST",
           10: "KPROBE_ACTION_SIGNAL"}


@dataclass
class UprobeHit:
    policy_id: int
    hook_id: int
    selector: int
    action: int
    args: list[tuple[int, int, int, bytes]]   # type, flags, orig_size, data


def decode(rec: r.HookRecord) -> UprobeHit:
    b = rec.body
    if len(b) < HOOK_FIXED.size:
        raise r.RecordError(f"hook record body of {len(b)} bytes is shorter than {HOOK_FIXED.size}")
    pid, hook, sel, action, _flags, nargs, dlen, _ret = HOOK_FIXED.unpack_from(b, 0)
    if HOOK_FIXED.size + dlen != len(b):
        raise r.RecordError(f"hook record says {dlen} argument bytes, has {len(b) - HOOK_FIXED.size}")
    args = []
    o = HOOK_FIXED.size
    for i in range(nargs):
        if o + ARG_HDR.size > len(b):
            raise r.RecordError(f"hook record argument {i} runs past the record")
        t, f, n, orig = ARG_HDR.unpack_from(b, o)
        o += ARG_HDR.size
        if o + n > len(b):
            raise r.RecordError(f"hook record argument {i} ({n} bytes) runs past the record")
        args.append((t, f, orig, bytes(b[o:o + n])))
        o += n
    return UprobeHit(pid, hook, sel, action, args)


def typed_arg(t: int, flags: int, orig: int, data: bytes, label: str) -> dict[str, Any]:
    out: dict[str, Any] = {"label": label}
    if t in (ARG_INT, ARG_UINT, ARG_SIZE, ARG_LONG):
        raw = int.from_bytes(data[:8].ljust(8, b"\0"), "little")
        if t == ARG_INT:
            v = raw & 0xFFFFFFFF
            out["int_arg"] = v - (1 << 32) if v >= 1 << 31 else v
        elif t == ARG_UINT:
            out["uint_arg"] = raw & 0x7FFFFFFFFFFFFFFF
        elif t == ARG_SIZE:
            out["size_arg"] = raw if raw < 1 << 63 else raw - (1 << 64)
        else:
            out["long_arg"] = raw - (1 << 64) if raw >= 1 << 63 else raw
    elif t == ARG_BYTES:
        if flags & ARGF_TRUNC:
            out["truncated_bytes_arg"] = {"bytes_arg": data, "orig_size": orig}
        else:
            out["bytes_arg"] = data
    else:
        out["string_arg"] = data.decode("utf-8", "backslashreplace")
    return out


def event_body(hook: dict[str, Any], policy_name: str, hit: UprobeHit,
               process: dict[str, Any], parent: dict[str, Any] | None) -> dict[str, Any]:
    """The ``process_uprobe`` body of one hit of a catalogued uprobe hook."""
    specs = hook.get("args") or []
    body: dict[str, Any] = {
        "process": process,
        "path": hook.get("path", ""),
        "symbol": hook.get("symbol", ""),
        "offset": int(hook.get("offset", 0)),
        "args": [typed_arg(*a, specs[i].get("label", "") if i < len(specs) else "")
                 for i, a in enumerate(hit.args)],
        "action": ACTIONS.get(hit.action, ""),
        "policy_name": policy_name,
        "message": hook.get("message", ""),
        "tags": list(hook.get("tags") or []),
    }
    if parent is not None:
        body["parent"] = parent
    return body


def build(builder: EventBuilder, rec: r.HookRecord, hook: dict[str, Any], policy_name: str,
          node: str, boot_ns: int) -> dict[str, Any]:
    """A full event (envelope with ``process_uprobe``) for a uprobe hook record."""
    hit = decode(rec)
    h = rec.header
    entry = builder.process_for(h.pid)
    parent = None
    if entry is not None:
        process = dict(entry.process)
        pe = builder.cache.get(entry.parent_exec_id)
        parent = dict(pe.process) if pe is not None else None
    else:
        process = {"pid": h.pid, "tid": h.tid, "flags": "miss"}
    process["tid"] = h.tid
    return builder.envelope(node, boot_ns + h.ktime,
                            process_uprobe=event_body(hook, policy_name, hit, process, parent))
