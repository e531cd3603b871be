#!/usr/bin/env python3
"""Writes exporters/syscalls.json: the syscall names by number (x86-64 and i386, as
collector/policy/compat_x86.py has them from the Linux uapi headers, plus the numbers 451-462 that
Linux 6.6-6.10 added) and each syscall's arguments (type, name) from the running kernel's
``syscalls:sys_enter_<name>`` tracepoint formats (the kernel's SYSCALL_DEFINE types, ``__user``
left out; those of module and kexec syscalls written here, for kernels built without them). The
compact view (exporters/compact.py) prints ``raw_syscalls/sys_enter`` events with
them as tetra does. The file is committed; run this again after changing the tables:

    .venv/bin/python scripts/gen-syscall-table.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from collector.policy import compat_x86  # noqa: E402

TRACEFS = Path("/sys/kernel/tracing/events/syscalls")
# the same numbers on x86-64 and i386 (the unified numbering from 424 on)
NEWER = {"cachestat": 451, "fchmodat2": 452, "map_shadow_stack": 453, "futex_wake": 454, "futex_wait": 455,
         "futex_requeue": 456, "statmount": 457, "listmount": 458, "lsm_get_self_attr": 459,
         "lsm_set_self_attr": 460, "lsm_list_modules": 461, "mseal": 462}
# the SYSCALL_DEFINE arguments of security-relevant syscalls that a kernel built without their
# feature (modules, kexec) has no tracepoint for
NO_TRACEPOINT_HERE = {
    "init_module": [["void *", "umod"], ["unsigned long", "len"], ["const char *", "uargs"]],
    "finit_module": [["int", "fd"], ["const char *", "uargs"], ["int", "flags"]],
    "delete_module": [["const char *", "name_user"], ["unsigned int", "flags"]],
    "kexec_load": [["unsigned long", "entry"], ["unsigned long", "nr_segments"],
                   ["struct kexec_segment *", "segments"], ["unsigned long", "flags"]],
    "kexec_file_load": [["int", "kernel_fd"], ["int", "initrd_fd"], ["unsigned long", "cmdline_len"],
                        ["const char *", "cmdline_ptr"], ["unsigned long", "flags"]],
}


def args_of(name: str) -> list[list[str]] | None:
    fmt = TRACEFS / f"sys_enter_{name}" / "format"
    if not fmt.exists():
        return NO_TRACEPOINT_HERE.get(name)
    out = []
    for line in fmt.read_text().splitlines():
        line = line.strip()
        if not line.startswith("field:") or "common_" in line or "__syscall_nr" in line:
            continue
        decl = line[len("field:"):].split(";", 1)[0]
        typ, _, arg = decl.rpartition(" ")
        out.append([typ.rstrip(), arg])
    return out


def main() -> None:
    if not TRACEFS.is_dir():
        sys.exit(f"gen-syscall-table: no {TRACEFS} (mount tracefs; run as root)")
    x64 = {**compat_x86.X86_64, **NEWER}
    i386 = {**compat_x86.I386, **NEWER}  # tetra's i386 table names 453 too
    names = sorted(set(x64))
    table = {
        "x64": {str(n): s for s, n in sorted(x64.items(), key=lambda kv: kv[1])},
        "i386": {str(n): s for s, n in sorted(i386.items(), key=lambda kv: kv[1])},
        "args": {s: a for s in names if (a := args_of(s)) is not None},
    }
    dest = REPO / "exporters" / "syscalls.json"
    lines = ["{"]
    for i, key in enumerate(("x64", "i386", "args")):
        lines.append(f'  "{key}": {{')
        items = list(table[key].items())
        lines += [f"    {json.dumps(k)}: {json.dumps(v)}" + ("," if j < len(items) - 1 else "")
                  for j, (k, v) in enumerate(items)]
        lines.append("  }" + ("," if i < 2 else ""))
    lines.append("}")
    dest.write_text("\n".join(lines) + "\n")
    print(f"gen-syscall-table: {dest.relative_to(REPO)}: {len(table['x64'])} x86-64, {len(table['i386'])} i386 "
          f"names, {len(table['args'])} argument lists")


if __name__ == "__main__":
    main()
