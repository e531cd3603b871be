"""Per-process state of processes older than a policy (#12): matchNamespaceChanges and
matchCapabilityChanges compare a process's namespaces/capabilities with those saved at its exec
(``exec_state``, bpf/policy_prog.c). A process that exec'd before the policy loaded has no saved
state and would never show a change; at load its state is seeded from /proc (namespaces from
/proc/<pid>/ns/*, capability sets from /proc/<pid>/status): a change it makes after the load is
seen. A change it made between its exec and the load is not (that state is the baseline)."""

from __future__ import annotations

import ctypes
import os
from typing import Any

from collector import procfs

# tp_exec_state.caps order: CAP_TYPE_INDEX of collector/policy/selectors.py
_CAP_FIELDS = ("CapEff", "CapInh", "CapPrm")


def seed_exec_state(table: Any) -> int:
    """Put every running process without an entry in ``table``; how many were put."""
    n = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        status = procfs._status(pid)
        if not status.get("CapEff"):
            continue   # gone, or a kernel thread's status without capability lines
        key = table.Key(pid)
        try:
            table[key]
            continue   # exec'd (or forked) since the program loaded: its own state is better
        except KeyError:
            pass
        leaf = table.Leaf()
        for i, inum in enumerate(procfs._ns_inums(pid)):
            leaf.ns[i] = inum & 0xFFFFFFFF
        try:
            for i, f in enumerate(_CAP_FIELDS):
                leaf.caps[i] = ctypes.c_uint64(int(status[f], 16)).value
        except (KeyError, ValueError):
            continue
        try:
            table[key] = leaf
            n += 1
        except Exception:  # noqa: BLE001 - the map is full: the rest keep no state (said at load)
            break
    return n
