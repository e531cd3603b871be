"""The process cache: one entry per exec (or clone), found by exec_id or by the pid's latest
incarnation. Reference counts follow Tetragon: a process holds one reference on itself and one on
its parent while alive; an entry leaves the cache when its count reaches zero. The cache is
bounded: past ``capacity`` the oldest exited (then oldest) entries are evicted and counted."""

from __future__ import annotations

import base64
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge

CACHE_SIZE = Gauge("tetrapipe_process_cache_size", "Entries in the enricher's process cache")
CACHE_CAPACITY = Gauge("tetrapipe_process_cache_capacity", "Capacity of the process cache")
CACHE_EVICTIONS = Counter("tetrapipe_process_cache_evictions", "Entries evicted for capacity")
CACHE_MISSES = Counter("tetrapipe_process_cache_misses", "Lookups that found no entry", ["operation"])


def exec_id(node: str, ktime: int, pid: int) -> str:
    """Tetragon's exec id: base64("<node>:<ktime>:<pid>")."""
    return base64.b64encode(f"{node}:{ktime}:{pid}".encode()).decode()


@dataclass(slots=True)
class Entry:
    exec_id: str
    pid: int
    ktime: int
    start_time: int                  # kernel task start (fork) time, ns since boot
    process: dict[str, Any]          # the Avro Process record
    parent_exec_id: str
    cgroup_id: int = 0
    cgroup_name: str = ""
    nspid: int = 0
    ns: tuple[int, ...] = ()
    caps: tuple[int, int, int] = (0, 0, 0)
    refcnt: int = 1
    exited: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    cgroup_ancestors: str = ""       # parent, grandparent, ... cgroup names, NUL separated


class CacheListener:
    """Told about every entry that was added, changed or removed (enricher/state.py)."""

    def changed(self, entry: Entry) -> None: ...

    def removed(self, entry: Entry) -> None: ...


class ProcessCache:
    def __init__(self, capacity: int = 65536) -> None:
        self.capacity = capacity
        self.by_exec_id: OrderedDict[str, Entry] = OrderedDict()
        self.by_pid: dict[int, Entry] = {}
        self.listener: CacheListener = CacheListener()
        self.misses: dict[str, int] = {}  # lookups missed since count_misses(), by operation
        CACHE_CAPACITY.set(capacity)
        CACHE_SIZE.set_function(self.__len__)  # read at scrape time, not set per event

    def __len__(self) -> int:
        return len(self.by_exec_id)

    def get(self, eid: str) -> Entry | None:
        return self.by_exec_id.get(eid)

    def current(self, pid: int, operation: str = "pid") -> Entry | None:
        e = self.by_pid.get(pid)
        if e is None:
            self.misses[operation] = self.misses.get(operation, 0) + 1
        return e

    def count_misses(self) -> None:
        """Add the misses seen since the last call to the counter (once per batch: a
        prometheus inc() per lookup cost more than the lookup)."""
        for operation, n in self.misses.items():
            CACHE_MISSES.labels(operation=operation).inc(n)
        self.misses.clear()

    def add(self, entry: Entry) -> None:
        """A new incarnation of entry.pid (exec or clone). The previous incarnation of the pid
        stays until its references are gone: the exec of a clone drops the clone's self ref.
        Adding an exec_id the cache holds already (a record seen again after a restart) is a
        no-op, so replays do not count references twice."""
        if entry.exec_id in self.by_exec_id:
            return
        prev = self.by_pid.get(entry.pid)
        parent = self.by_exec_id.get(entry.parent_exec_id)
        if parent is not None:
            parent.refcnt += 1
            parent.process["refcnt"] = parent.refcnt
        self.by_exec_id[entry.exec_id] = entry
        self.by_pid[entry.pid] = entry
        if prev is not None and prev.exec_id != entry.exec_id and not prev.exited:
            prev.exited = True
            self.listener.changed(prev)
            self._unref(prev)
        entry.process["refcnt"] = entry.refcnt
        self.listener.changed(entry)
        self._bound()

    def exit(self, entry: Entry) -> None:
        """The process exited: drop its self reference and its reference on the parent."""
        if entry.exited:
            return
        entry.exited = True
        if entry.exec_id in self.by_exec_id:
            self.listener.changed(entry)
        self._unref(entry)

    def _unref(self, entry: Entry) -> None:
        entry.refcnt -= 1
        entry.process["refcnt"] = max(entry.refcnt, 0)
        if entry.refcnt <= 0:
            self._remove(entry)
            parent = self.by_exec_id.get(entry.parent_exec_id)
            if parent is not None:
                self._unref(parent)

    def _remove(self, entry: Entry) -> None:
        if self.by_exec_id.pop(entry.exec_id, None) is not None:
            self.listener.removed(entry)
        if self.by_pid.get(entry.pid) is entry:
            del self.by_pid[entry.pid]

    def restore(self, entries: list[Entry]) -> None:
        """Put back entries saved before a restart. Reference counts are recomputed from the
        tree: one for a process still alive, one per child entry present."""
        for e in sorted(entries, key=lambda e: e.ktime):
            if e.exec_id in self.by_exec_id:
                continue
            self.by_exec_id[e.exec_id] = e
            cur = self.by_pid.get(e.pid)
            if cur is None or cur.exited or not e.exited:
                self.by_pid[e.pid] = e
        for e in self.by_exec_id.values():
            e.refcnt = 0 if e.exited else 1
        for e in self.by_exec_id.values():
            parent = self.by_exec_id.get(e.parent_exec_id)
            if parent is not None:
                parent.refcnt += 1
        for e in self.by_exec_id.values():
            e.process["refcnt"] = e.refcnt
        self._bound()

    def _bound(self) -> None:
        while len(self.by_exec_id) > self.capacity:
            victim = next((e for e in self.by_exec_id.values() if e.exited), None)
            if victim is None:
                victim = next(iter(self.by_exec_id.values()))
            self._remove(victim)
            CACHE_EVICTIONS.inc()
