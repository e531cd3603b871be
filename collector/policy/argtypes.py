"""Argument types of policy hooks: where a hook's arguments come from and how each type is read.

Tracepoint formats (the fields of ``syscalls:sys_enter_*`` and the like), syscall names, and the
record kinds integer arguments are written as (``TP_ARG_*`` in bpf/records.h).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

TRACEFS = Path("/sys/kernel/tracing")
SYSCALL_PREFIXES = ("__x64_sys_", "__ia32_sys_", "__arm64_sys_", "__se_sys_", "__do_sys_", "sys_")
OPEN_SYSCALLS = ("open", "openat", "openat2", "creat")
STR_MAX = 256

INT_ARG_KIND = {
    "int": "TP_ARG_INT", "sint8": "TP_ARG_INT", "int8": "TP_ARG_INT", "sint16": "TP_ARG_INT",
    "int16": "TP_ARG_INT", "int32": "TP_ARG_INT", "sint32": "TP_ARG_INT",
    "uint8": "TP_ARG_UINT", "uint16": "TP_ARG_UINT", "uint32": "TP_ARG_UINT",
    "ulong": "TP_ARG_UINT", "uint64": "TP_ARG_UINT",
    "int64": "TP_ARG_LONG", "sint64": "TP_ARG_LONG", "long": "TP_ARG_LONG", "auto": "TP_ARG_LONG",
    "size_t": "TP_ARG_SIZE",
    # the syscall number (raw_syscalls): a 32-bit call's as x86-64's where one exists (hookfn
    # compat_nr_c), else 2^32 + its i386 number; rendered as uint_arg (Tetragon's syscall_id is
    # not in the event schema)
    "syscall64": "TP_ARG_UINT",
}


@dataclass
class Field:
    name: str
    ctype: str

    @property
    def is_pointer(self) -> bool:
        return "*" in self.ctype

    @property
    def is_data_loc(self) -> bool:
        return self.ctype.startswith("__data_loc")


def tracepoint_fields(subsys: str, event: str, tracefs: Path = TRACEFS) -> list[Field] | None:
    """Non-common fields of a tracepoint's format, in order; None when it does not exist."""
    try:
        text = (tracefs / "events" / subsys / event / "format").read_text()
    except OSError:
        return None
    out = []
    for line in text.splitlines():
        m = re.match(r"\s*field:(.+?);\s*offset:", line)
        if not m:
            continue
        decl = m.group(1).strip()
        fm = re.match(r"(.*?)([A-Za-z_]\w*)(\[\w*\])?$", decl)
        if not fm:
            continue
        ctype, name = (fm.group(1) + (fm.group(3) or "")).strip(), fm.group(2)
        if name.startswith("common_"):
            continue
        out.append(Field(name, ctype))
    return out


def syscall_name(call: str) -> str:
    for prefix in SYSCALL_PREFIXES:
        if call.startswith(prefix):
            return call[len(prefix):]
    return call
