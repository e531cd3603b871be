"""Late pod metadata, like Tetragon's event cache: an event whose process is in a pod that the
pod index does not know yet (or whose container it does not list yet) is held, retried whenever
the index changes, and sent once its pod is found or after ``hold_s`` with what is known.

Order per process is kept: while one event of an exec_id is held, later events of the same
exec_id queue behind it (the events topic is keyed by exec_id, so its consumers see them in
order). The queue is bounded: past ``capacity`` the oldest event is sent as it is. Every path is
counted: inserts, retries, found (``resolved``), sent without pod (``fetch_failures``), evicted.
The raw offset each held event came from is kept, so the service never commits past an event it
has not published (a crash re-reads it instead of losing it).
"""

from __future__ import annotations

import time
from collections import Counter as Multiset
from collections import deque
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge

from enricher.process_cache import Entry

CACHE_ENTRIES = Gauge("tetrapipe_event_cache_entries", "Events held waiting for pod metadata")
CACHE_INSERTS = Counter("tetrapipe_event_cache_inserts", "Events held for pod metadata")
FETCH_RETRIES = Counter("tetrapipe_event_cache_fetch_retries",
                        "Lookups retried for held events", ["entry_type", "event_type"])
FETCH_FAILURES = Counter("tetrapipe_event_cache_fetch_failures",
                         "Held events sent without the metadata after the hold time",
                         ["entry_type", "event_type"])
FETCH_RESOLVED = Counter("tetrapipe_event_cache_resolved",
                         "Held events sent after their metadata arrived", ["entry_type", "event_type"])
CACHE_EVICTIONS = Counter("tetrapipe_event_cache_evictions",
                          "Held events sent early (without metadata) because the queue was full")

Source = tuple[str, int, int]  # raw topic, partition, offset


@dataclass(slots=True)
class Held:
    event: dict[str, Any]
    event_type: str
    exec_id: str
    entry: Entry | None
    parent: Entry | None
    deadline: float
    source: Source | None


class PendingEvents:
    """``metadata`` is the ProcessMetadata resolver; ``builder`` the EventBuilder (its
    ``refresh_pod`` updates an entry; its ``cache`` finds entries)."""

    def __init__(self, builder: Any, metadata: Any, hold_s: float, capacity: int) -> None:
        self.builder = builder
        self.metadata = metadata
        self.hold_s = hold_s
        self.capacity = capacity
        self.queue: deque[Held] = deque()
        self.held_ids: Multiset[str] = Multiset()
        self.entries: dict[str, Entry] = {}   # exec_id → entry of held events (exits remove them)
        self.seen_version = -1
        self.recheck = False

    def __len__(self) -> int:
        return len(self.queue)

    @property
    def enabled(self) -> bool:
        return self.metadata is not None and getattr(self.metadata, "index", None) is not None \
            and self.hold_s > 0

    def offer(self, event: dict[str, Any], event_type: str, source: Source | None,
              now: float | None = None) -> list[dict[str, Any]]:
        """Events to publish now, in order: the event itself, or nothing when it is held
        (plus any event the bound pushed out)."""
        if not self.enabled:
            return [event]
        body = event.get(event_type) or {}
        proc = body.get("process") or {}
        eid = proc.get("exec_id", "")
        if not eid:
            return [event]
        entry = self.builder.cache.get(eid) or self.entries.get(eid)
        if eid not in self.held_ids and (entry is None or not self.metadata.pending(entry)):
            if entry is not None and "pod" not in proc and "docker" in entry.process \
                    and self.builder.refresh_pod(entry):
                proc["pod"] = entry.process["pod"]  # e.g. a clone forked before its pod was known
            return [event]
        now = time.monotonic() if now is None else now
        parent_id = proc.get("parent_exec_id", "")
        parent = self.builder.cache.get(parent_id) if parent_id else None
        self.queue.append(Held(event, event_type, eid, entry, parent, now + self.hold_s, source))
        self.held_ids[eid] += 1
        if entry is not None:
            self.entries[eid] = entry
        CACHE_INSERTS.inc()
        out: list[dict[str, Any]] = []
        while len(self.queue) > self.capacity:
            CACHE_EVICTIONS.inc()
            out.append(self._release(self.queue.popleft(), found=False, count=False))
        CACHE_ENTRIES.set(len(self.queue))
        return out

    def poll(self, now: float | None = None) -> list[dict[str, Any]]:
        """Retry held events (when the pod index changed) and release the found and the expired,
        keeping each exec_id's order."""
        if not self.queue:
            return []
        now = time.monotonic() if now is None else now
        index = self.metadata.index
        check = index.version != self.seen_version or self.recheck
        self.seen_version = index.version
        if not check and not any(h.deadline <= now for h in self.queue):
            return []
        out: list[dict[str, Any]] = []
        keep: deque[Held] = deque()
        blocked: set[str] = set()
        for h in self.queue:
            if h.exec_id in blocked:
                keep.append(h)
                continue
            found = False
            if h.entry is not None and check:
                FETCH_RETRIES.labels(entry_type="pod_info", event_type=h.event_type).inc()
                found = not self.metadata.pending(h.entry)
            if found or h.deadline <= now:
                out.append(self._release(h, found=found))
            else:
                keep.append(h)
                blocked.add(h.exec_id)
        self.queue = keep
        self.recheck = bool(out) and bool(keep)  # events behind a released one: look again
        CACHE_ENTRIES.set(len(self.queue))
        return out

    def _release(self, h: Held, found: bool, count: bool = True) -> dict[str, Any]:
        self.held_ids[h.exec_id] -= 1
        if self.held_ids[h.exec_id] <= 0:
            del self.held_ids[h.exec_id]
            self.entries.pop(h.exec_id, None)
        body = h.event.get(h.event_type) or {}
        for key, entry in (("process", h.entry), ("parent", h.parent)):
            if entry is None or key not in body:
                continue
            if "pod" not in entry.process or entry is h.entry:
                self.builder.refresh_pod(entry)
            if "pod" in entry.process:
                body[key]["pod"] = entry.process["pod"]
        if count:
            has_pod = "pod" in (body.get("process") or {})
            metric = FETCH_RESOLVED if found else FETCH_FAILURES
            if not found and has_pod:
                metric = FETCH_FAILURES  # the pod without its container: still incomplete
            metric.labels(entry_type="pod_info", event_type=h.event_type).inc()
        return h.event

    def floor(self) -> dict[tuple[str, int], int]:
        """Per raw partition, the lowest offset that still has an event held (not committable)."""
        out: dict[tuple[str, int], int] = {}
        for h in self.queue:
            if h.source is not None:
                tp = (h.source[0], h.source[1])
                if tp not in out or h.source[2] < out[tp]:
                    out[tp] = h.source[2]
        return out

    def drain(self) -> list[dict[str, Any]]:
        """Everything held, in order (at shutdown)."""
        out = [self._release(h, found=False) for h in self.queue]
        self.queue.clear()
        CACHE_ENTRIES.set(0)
        return out
