"""The collector's outbox: framed raw batches wait here, in order, until the broker acknowledged
them. A small memory head serves the normal case; as soon as the broker does not answer (or the
head grows), batches go to a bounded on-disk spool under ``<state_dir>/spool`` and are replayed
in order when Kafka returns, also by the next collector process after a crash or a restart.

One file per batch, named by a 16-hex-digit outbox number (order), written to a temporary name
and renamed, so a kill -9 never leaves a torn batch. The spool refuses new batches only when it
holds ``max_bytes``; those batches are dropped and counted (their sequence numbers then show as
gaps in the consumers' sequence audit).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter, Gauge

log = logging.getLogger("tetrapipe.collector.spool")

SPOOL_BATCHES = Gauge("tetrapipe_spool_batches", "Raw batches waiting in the on-disk spool")
SPOOL_BYTES = Gauge("tetrapipe_spool_bytes", "Bytes of raw batches in the on-disk spool")
SPOOL_WRITTEN = Counter("tetrapipe_spool_batches_written", "Raw batches written to the spool")
SPOOL_REPLAYED = Counter("tetrapipe_spool_batches_replayed",
                         "Spooled raw batches the broker acknowledged")
SPOOL_DROPPED = Counter("tetrapipe_spool_batches_dropped",
                        "Raw batches dropped because the spool was full")
SPOOL_DROPPED_RECORDS = Counter("tetrapipe_spool_records_dropped",
                                "Raw records in batches dropped because the spool was full")
SPOOL_UNREADABLE = Counter("tetrapipe_spool_files_unreadable",
                           "Spool files that could not be read back (kept aside as *.bad)")
OUTBOX_MEMORY = Gauge("tetrapipe_outbox_memory_batches", "Raw batches waiting in memory")
SPOOL_WRITE_ERRORS = Counter("tetrapipe_spool_write_errors",
                             "Spool writes that failed (disk full, read-only, I/O error): the batch "
                             "stayed in memory")
SPOOL_RETRY_S = 5.0  # after a failed write, the spool is tried again this much later

SUFFIX = ".batch"


class Spool:
    """Bounded on-disk FIFO of byte strings, ordered by an integer id chosen by the caller."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._items: deque[tuple[int, int]] = deque()  # (id, size), oldest first
        self.bytes = 0
        for p in self.dir.iterdir():
            if p.name.endswith(".tmp"):
                p.unlink(missing_ok=True)  # a write cut by a crash: never renamed, never acked
        found = []
        for p in self.dir.glob("*" + SUFFIX):
            try:
                found.append((int(p.name[: -len(SUFFIX)], 16), p.stat().st_size))
            except (ValueError, OSError):
                continue
        for oid, size in sorted(found):
            self._items.append((oid, size))
            self.bytes += size
        self._gauges()
        if found:
            log.info("spool %s holds %d batches (%d bytes) from before: replaying them first",
                     self.dir, len(found), self.bytes)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def next_id(self) -> int:
        """An id greater than every id in the spool."""
        return self._items[-1][0] + 1 if self._items else 0

    def _path(self, oid: int) -> Path:
        return self.dir / f"{oid:016x}{SUFFIX}"

    def _gauges(self) -> None:
        SPOOL_BATCHES.set(len(self._items))
        SPOOL_BYTES.set(self.bytes)

    def has_room(self, size: int) -> bool:
        return self.bytes + size <= self.max_bytes

    def write(self, oid: int, data: bytes) -> None:
        """Append ``data`` under ``oid`` (greater than every id held). No bound check: see
        :meth:`has_room`."""
        if self._items and oid <= self._items[-1][0]:
            raise ValueError(f"spool id {oid} is not after {self._items[-1][0]}")
        path = self._path(oid)
        tmp = path.with_name(path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.rename(tmp, path)
        except OSError:
            SPOOL_WRITE_ERRORS.inc()
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            raise
        self._items.append((oid, len(data)))
        self.bytes += len(data)
        SPOOL_WRITTEN.inc()
        self._gauges()

    def head_id(self) -> int | None:
        return self._items[0][0] if self._items else None

    def read_head(self) -> tuple[int, bytes] | None:
        """The oldest batch, or None. A file that cannot be read is set aside and counted."""
        while self._items:
            oid, size = self._items[0]
            try:
                return oid, self._path(oid).read_bytes()
            except OSError as exc:
                log.error("spool file %s unreadable (%s): set aside", self._path(oid), exc)
                SPOOL_UNREADABLE.inc()
                self._drop_head(rename_bad=True)
        return None

    def pop(self, oid: int) -> None:
        if self._items and self._items[0][0] == oid:
            self._drop_head()

    def _drop_head(self, rename_bad: bool = False) -> None:
        oid, size = self._items.popleft()
        path = self._path(oid)
        try:
            if rename_bad:
                path.rename(path.with_suffix(".bad"))
            else:
                path.unlink()
        except OSError:
            pass
        self.bytes -= size
        self._gauges()


@dataclass(slots=True)
class Item:
    oid: int
    data: bytes
    records: int
    spooled: bool


class Outbox:
    """Ordered queue of framed batches for one sender: spool (older) then memory (newer).

    ``put`` never blocks: the ring-buffer drain must keep going whatever Kafka does. The sender
    reads :meth:`head`, sends it, and calls :meth:`done` once the broker acknowledged it; on a
    failure it calls :meth:`spill` so that everything waiting is on disk while the broker is away.
    """

    def __init__(self, spool: Spool, memory_max: int) -> None:
        self.spool = spool
        self.memory_max = max(1, memory_max)
        self.memory: deque[Item] = deque()
        self.memory_bytes = 0
        # while the spool cannot be written, batches wait in memory up to the spool's own bound
        self.fallback_max_bytes = min(spool.max_bytes, 256 * 1024 * 1024)
        self.spool_broken_until = 0.0
        self.spool_error = ""
        self._next = spool.next_id
        self.changed = asyncio.Event()
        self.degraded = False  # set by the sender while the broker does not answer
        if len(spool):
            self.changed.set()

    def __len__(self) -> int:
        return len(self.spool) + len(self.memory)

    def put(self, data: bytes, records: int) -> bool:
        """Queue one batch; False when it was dropped because the spool (or, while the spool
        cannot be written, memory) is full."""
        oid = self._next
        self._next += 1
        self.changed.set()
        if not self.degraded and not len(self.spool) and len(self.memory) < self.memory_max:
            self._remember(Item(oid, data, records, False))
            return True
        self.spill()
        if self.memory:  # the spool failed: newer batches queue behind in memory, order kept
            if self.memory_bytes + len(data) > self.fallback_max_bytes:
                return self._drop(records, f"spool unwritable ({self.spool_error}) and "
                                           f"{self.memory_bytes} bytes waiting in memory")
            self._remember(Item(oid, data, records, False))
            return True
        if not self.spool.has_room(len(data)):
            return self._drop(records, f"spool full ({self.spool.bytes} bytes)")
        try:
            self.spool.write(oid, data)
        except OSError as exc:
            self._spool_failed(exc)
            self._remember(Item(oid, data, records, False))
        return True

    def _remember(self, it: Item) -> None:
        self.memory.append(it)
        self.memory_bytes += len(it.data)
        OUTBOX_MEMORY.set(len(self.memory))

    def _drop(self, records: int, why: str) -> bool:
        SPOOL_DROPPED.inc()
        SPOOL_DROPPED_RECORDS.inc(records)
        log.error("%s: dropped a raw batch of %d records", why, records)
        return False

    def _spool_failed(self, exc: OSError) -> None:
        if not self.spool_error:
            log.error("spool %s cannot be written (%s): batches wait in memory (up to %d bytes), "
                      "the spool is tried again every %.0fs", self.spool.dir, exc,
                      self.fallback_max_bytes, SPOOL_RETRY_S)
        self.spool_error = str(exc)
        self.spool_broken_until = time.monotonic() + SPOOL_RETRY_S

    def spill(self) -> None:
        """Move the memory head to disk, order kept (memory items are newer than the spool's).
        A spool that cannot be written leaves them in memory, tried again later."""
        if self.memory and time.monotonic() < self.spool_broken_until:
            return
        while self.memory:
            it = self.memory[0]
            try:
                self.spool.write(it.oid, it.data)
            except OSError as exc:
                self._spool_failed(exc)
                break
            self.memory.popleft()
            self.memory_bytes -= len(it.data)
        else:
            if self.spool_error:
                log.info("spool %s writable again", self.spool.dir)
                self.spool_error = ""
        OUTBOX_MEMORY.set(len(self.memory))

    def head(self) -> Item | None:
        if len(self.spool):
            got = self.spool.read_head()
            if got is not None:
                return Item(got[0], got[1], 0, True)
        if self.memory:
            return self.memory[0]
        return None

    def done(self, item: Item) -> None:
        """The broker acknowledged ``item``: forget it (wherever it is now)."""
        if self.memory and self.memory[0].oid == item.oid:
            self.memory_bytes -= len(self.memory.popleft().data)
            OUTBOX_MEMORY.set(len(self.memory))
        else:
            if self.spool.head_id() == item.oid and item.spooled:
                SPOOL_REPLAYED.inc()
            self.spool.pop(item.oid)
        if not len(self):
            self.changed.clear()
