"""Fields that differ between kernel versions, resolved at load for the running kernel.

Kernel C reads such a field through a macro chosen here, from the running kernel's BTF (the
generated ``vmlinux.h``) and its tracepoint formats, so one source compiles on 6.1, 6.12 and
6.18. Every program the collector loads gets these defines (``loader.load_program``).

| define | newer kernels (6.18 here) | older kernels (Debian 6.1, 6.12) |
| --- | --- | --- |
| ``TP_KERNFS_PARENT`` | ``kernfs_node.__parent`` | ``kernfs_node.parent`` |
| ``TP_HAVE_EXIT_GROUP_DEAD`` | 1: ``sched_process_exit`` has ``group_dead`` | 0: read ``signal->live`` |
"""

from __future__ import annotations

import re
from pathlib import Path

TRACEFS = Path("/sys/kernel/tracing")


def struct_members(vmlinux_h: str, struct: str) -> set[str]:
    """Member names of ``struct <struct>`` in a bpftool ``format c`` dump (top level only)."""
    m = re.search(rf"^struct {re.escape(struct)} \{{\n(.*?)^\}};", vmlinux_h, re.M | re.S)
    if not m:
        return set()
    names = set()
    for line in m.group(1).splitlines():
        if line.startswith("\t") and not line.startswith("\t\t") and line.rstrip().endswith(";"):
            name = re.search(r"(\w+)(?:\[[^\]]*\])*(?::\s*\d+)?;\s*$", line)
            if name:
                names.add(name.group(1))
    return names


def tracepoint_fields(category: str, event: str, tracefs: Path = TRACEFS) -> set[str]:
    """Field names of a tracepoint's format (empty when it is unknown)."""
    try:
        text = (tracefs / "events" / category / event / "format").read_text()
    except OSError:
        return set()
    return set(re.findall(r"field:[^;]*?(\w+)(?:\[[^\]]*\])?;", text))


def defines(tree: Path, tracefs: Path = TRACEFS) -> dict[str, str]:
    """The ``-D`` values for the running kernel, given its include tree."""
    vmlinux_h = (tree / "include" / "vmlinux.h").read_text()
    kernfs = struct_members(vmlinux_h, "kernfs_node")
    exit_fields = tracepoint_fields("sched", "sched_process_exit", tracefs)
    return {
        "TP_KERNFS_PARENT": "__parent" if "__parent" in kernfs else "parent",
        "TP_HAVE_EXIT_GROUP_DEAD": "1" if "group_dead" in exit_fields else "0",
    }
