"""Per-process state of processes older than a policy (#12), seeded from /proc at load.

- ``exec_state`` (matchNamespaceChanges/matchCapabilityChanges) holds a process's namespaces and
  capability sets as of its exec (bpf/policy_prog.c, inherited at fork, dropped at exit). A process
  that exec'd before the policy loaded has none; here it gets its state from /proc (namespaces from
  /proc/<pid>/ns/*, CapEff/CapInh/CapPrm from /proc/<pid>/status), so a change it makes once the
  policy acts is seen.
- ``pf_marks`` (matchPIDs followForks) marks each followed process; the kernel marks a child of a
  followed process at fork. Processes older than the policy are marked here from the process tree
  of /proc (any depth).

The program is attached (its fork/exec/exit probes run) but not enabled while this runs. Entries
are written with BPF_NOEXIST: a process that exec'd or forked since the load has the kernel's own,
newer entry. Each pass reads /proc again until no process is left without its entry (a process
forked by a parent not yet seeded got no entry from the kernel); what could not be seeded is
counted in ``tetrapipe_tracingpolicy_state_seed_failures_total{policy,state,reason}``:

- ``exited``: gone between the listing and the write (nothing left to judge; counted all the same);
- ``unreadable``: /proc refused its state (hidepid, a namespace file missing);
- ``map_full``: the map refused the entry (the kernel counts its own refusals: state_lost);
- ``changed``: its state read again after the write differs: it changed between the read and the
  write. The entry holds the older state, so that change is judged a change once the policy acts.

Residual (README "Not caught, and why"): a change made between the program's attach and the read
of that process (milliseconds; the policy is not enabled yet) is taken as the baseline, as a change
made before the load is.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from collections.abc import Callable
from typing import Any

from bpf import records as r
from collector import procfs
from collector.policy.metrics import STATE_SEED_FAILURES

log = logging.getLogger("tetrapipe.policy")

# tp_exec_state.caps order: CAP_TYPE_INDEX of collector/policy/selectors.py
_CAP_FIELDS = ("CapEff", "CapInh", "CapPrm")
BPF_ANY, BPF_NOEXIST = 0, 1
PASSES = 6          # /proc listings per seeding: until no process is left without its entry


def _lib() -> Any:
    from bcc.libbcc import lib  # bcc's own handle (use_errno=True)
    return lib


def _update(table: Any, key: Any, leaf: Any, flags: int) -> int:
    """0, or the errno of the map update."""
    res = _lib().bpf_update_elem(table.map_fd, ctypes.byref(key), ctypes.byref(leaf), flags)
    return 0 if res >= 0 else (ctypes.get_errno() or errno.EIO)


def _pids() -> list[int]:
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def _start(pid: int) -> int | None:
    """The process's start time (clock ticks since boot, /proc/<pid>/stat field 22); None: gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rfind(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


_NS_HERE = tuple(os.path.exists(f"/proc/self/ns/{n}") for n in r.NS_NAMES)


def read_state(pid: int) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(namespace inodes in exec_state order, (CapEff, CapInh, CapPrm)); None: unreadable."""
    status = procfs._status(pid)
    try:
        caps = tuple(ctypes.c_uint64(int(status[f], 16)).value for f in _CAP_FIELDS)
    except (KeyError, ValueError):
        return None
    ns = procfs._ns_inums(pid)
    if any(here and not inum for here, inum in zip(_NS_HERE, ns, strict=True)):
        return None   # a namespace this kernel has, not readable for this process
    return tuple(i & 0xFFFFFFFF for i in ns), caps


class _Seeder:
    """One seeding of one map: passes over /proc, failures counted by reason."""

    def __init__(self, policy: str, state: str) -> None:
        self.policy, self.state = policy, state
        self.failed: dict[str, int] = {}
        self.done: set[tuple[int, int]] = set()   # (pid, start time) handled

    def fail(self, reason: str) -> None:
        self.failed[reason] = self.failed.get(reason, 0) + 1
        STATE_SEED_FAILURES.labels(policy=self.policy, state=self.state, reason=reason).inc()

    def passes(self, one: Callable[[int, int], bool | None]) -> int:
        """``one(pid, start)``: True seeded, False skipped, None failed (counted by ``one``)."""
        n = 0
        for _ in range(PASSES):
            new = 0
            for pid in _pids():
                start = _start(pid)
                if start is None or (pid, start) in self.done:
                    continue
                self.done.add((pid, start))
                new += 1
                if one(pid, start):
                    n += 1
            if not new:
                return n
        return n

    def settle(self, table: Any, key: Any, pid: int, start: int) -> bool:
        """After the write: the process is still the one read, else its entry goes again (the
        next pass reads the pid anew)."""
        now = _start(pid)
        if now == start:
            return True
        try:
            del table[key]
        except KeyError:
            pass
        self.done.discard((pid, start))
        self.fail("exited")
        return False


def seed_exec_state(table: Any, policy: str = "") -> int:
    """Put every running process without an entry in ``table`` (exec_state); how many were put."""
    sd = _Seeder(policy, "exec_state")

    def one(pid: int, start: int) -> bool | None:
        key = table.Key(pid)
        st = read_state(pid)
        if st is None:
            sd.fail("exited" if _start(pid) != start else "unreadable")
            return None
        leaf = table.Leaf()
        for i, inum in enumerate(st[0]):
            leaf.ns[i] = inum
        for i, c in enumerate(st[1]):
            leaf.caps[i] = c
        err = _update(table, key, leaf, BPF_NOEXIST)
        if err == errno.EEXIST:
            return False   # exec'd or forked since the load: the kernel's entry is newer
        if err:
            sd.fail("map_full" if err in (errno.E2BIG, errno.ENOMEM, errno.ENOSPC) else "unreadable")
            return None
        if not sd.settle(table, key, pid, start):
            return None
        if read_state(pid) != st:
            sd.fail("changed")   # the entry holds the state before: the change is judged a change
        return True

    n = sd.passes(one)
    if sd.failed:
        log.warning("policy %s: namespace/capability state not seeded for %s (counted in "
                    "tetrapipe_tracingpolicy_state_seed_failures_total)", policy,
                    ", ".join(f"{v} {k}" for k, v in sorted(sd.failed.items())))
    return n


def _tree() -> dict[int, tuple[int, int]]:
    """pid → (parent pid, pid in its own namespace) of every process /proc lists now."""
    out = {}
    for pid in _pids():
        status = procfs._status(pid)
        try:
            ppid = int(status["PPid"])
            nspid = int(status.get("NSpid", str(pid)).split()[-1])
        except (KeyError, ValueError, IndexError):
            continue
        out[pid] = (ppid, nspid)
    return out


def followed(tree: dict[int, tuple[int, int]], values: set[int], ns_pid: bool,
             births: dict[int, int] | None = None) -> set[int]:
    """The processes of ``tree`` that are, or descend from, one whose pid is in ``values`` (its pid
    in its own namespace with ``ns_pid``), whatever the depth. ``births``: child → parent of the
    forks the kernel saw while the policy loaded (a child whose parent exited since is reparented
    in ``tree``, but still descends from it)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _ns) in tree.items():
        if ppid != pid:
            children.setdefault(ppid, []).append(pid)
    for child, parent in (births or {}).items():
        if child != parent:
            children.setdefault(parent, []).append(child)
    todo = [pid for pid, (_pp, nspid) in tree.items() if (nspid if ns_pid else pid) in values]
    out: set[int] = set()
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo.extend(children.get(p, ()))
    return out & tree.keys()


def _births(table: Any) -> dict[int, int]:
    try:
        return {k.value: v.value for k, v in table.items()}
    except Exception:  # noqa: BLE001 - no births map: a policy without followForks
        return {}


def seed_follow_forks(table: Any, births_table: Any, specs: list[tuple[int, list[int], bool]],
                      policy: str = "") -> int:
    """Mark in ``table`` (pf_marks) every running process followed by a matchPIDs followForks
    filter ``specs`` (filter id, pid values, isNamespacePID); how many marks were put. The process
    tree is every /proc listing of the passes together (a parent that exited since still links
    its children) with the forks the kernel recorded meanwhile (``births_table``, pf_births)."""
    n = 0
    for fid, values, ns_pid in specs:
        sd = _Seeder(policy, "follow_forks")
        marked: set[int] = set()
        seen: dict[int, tuple[int, int]] = {}
        for _ in range(PASSES):
            now = _tree()
            seen.update(now)
            todo = {p for p in followed(seen, set(values), ns_pid, _births(births_table)) if p in now} - marked
            if not todo:
                break
            for pid in sorted(todo):
                start = _start(pid)
                if start is None:
                    sd.fail("exited")
                    continue
                key = table.Key()
                key.filter, key.tgid = fid, pid
                err = _update(table, key, ctypes.c_uint8(1), BPF_ANY)
                if err:
                    sd.fail("map_full" if err in (errno.E2BIG, errno.ENOMEM, errno.ENOSPC) else "unreadable")
                    marked.add(pid)
                    continue
                if sd.settle(table, key, pid, start):
                    marked.add(pid)
                    n += 1
        if sd.failed:
            log.warning("policy %s: followForks marks not seeded for %s (counted in "
                        "tetrapipe_tracingpolicy_state_seed_failures_total)", policy,
                        ", ".join(f"{v} {k}" for k, v in sorted(sd.failed.items())))
    return n
