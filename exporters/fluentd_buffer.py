"""The fluentd exporter's disk buffer: chunks waiting for fluentd's ack, one file each.

A chunk file holds one batch of events already packed for the forward protocol (a list of
``(tag, PackedForward entries)``), the number of events, and the Kafka position after its last
message per partition. Files are written whole (temp file + rename), named by a sequence number
so they are sent in order, and removed once fluentd acknowledged every message of the chunk.

The buffer is bounded by ``max_bytes``: a chunk that does not fit is refused (``BufferFull``)
and the exporter stops reading Kafka until fluentd has drained the buffer, so a full buffer costs
no events (Kafka keeps them, and offsets are never committed past what fluentd acknowledged).
A chunk file that cannot be read back (cut short by a crash or a full disk) is dropped and
counted (``dropped_chunks``); its events are read from Kafka again when the exporter restarts,
because its offsets were never committed: the sink stops committing once a chunk was dropped
(exporters/fluentd.py), so no later ack moves the group past it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import msgpack
from prometheus_client import Counter, Gauge

log = logging.getLogger("tetrapipe.export.fluentd")

BUFFER_BYTES = Gauge("tetrapipe_fluentd_buffer_bytes", "Bytes of events buffered on disk waiting for fluentd")
BUFFER_CHUNKS = Gauge("tetrapipe_fluentd_buffer_chunks", "Chunks buffered on disk waiting for fluentd")
BUFFER_EVENTS = Gauge("tetrapipe_fluentd_buffer_events", "Events buffered on disk waiting for fluentd")
BUFFER_CAPACITY = Gauge("tetrapipe_fluentd_buffer_capacity_bytes", "Largest size of the fluentd disk buffer")
BUFFER_FULL = Counter("tetrapipe_fluentd_buffer_full",
                      "Times a batch did not fit the disk buffer (Kafka reading paused, nothing lost)")
BUFFER_DROPPED_CHUNKS = Counter("tetrapipe_fluentd_buffer_dropped_chunks",
                                "Chunk files dropped from the disk buffer", ["reason"])
BUFFER_DROPPED_EVENTS = Counter("tetrapipe_fluentd_buffer_dropped_events",
                                "Events in chunk files dropped from the disk buffer", ["reason"])

BUFFER_DROPPED_CHUNKS.labels(reason="unreadable")
BUFFER_DROPPED_EVENTS.labels(reason="unreadable")

_SUFFIX = ".chunk"


class BufferFull(Exception):
    """The chunk does not fit the disk buffer now; retry once fluentd has drained it."""


@dataclass
class Chunk:
    seq: int
    path: Path
    size: int
    events: int
    messages: list[tuple[str, bytes, int]]  # (tag, PackedForward entries, number of entries)
    offsets: dict[str, int]  # "topic/partition" -> next offset after the chunk


class DiskBuffer:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.dir.mkdir(parents=True, exist_ok=True)
        self._sizes: dict[int, tuple[int, int]] = {}  # seq -> (bytes, events)
        for tmp in self.dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        for p in sorted(self.dir.glob("*" + _SUFFIX)):
            try:
                seq = int(p.stem)
            except ValueError:
                continue
            self._sizes[seq] = (p.stat().st_size, self._peek_events(p))
        self._next = max(self._sizes, default=0) + 1
        # unreadable chunks this process wrote and then lost (chunks of an earlier run are
        # behind the committed offsets, so Kafka has their events again anyway)
        self.dropped_chunks = 0
        self._first_seq = self._next
        BUFFER_CAPACITY.set(max_bytes)
        self._report()
        if self._sizes:
            log.info("disk buffer %s holds %d chunks from an earlier run", self.dir, len(self._sizes))

    # ---- accounting -------------------------------------------------------------------
    @property
    def bytes(self) -> int:
        return sum(b for b, _ in self._sizes.values())

    @property
    def events(self) -> int:
        return sum(e for _, e in self._sizes.values())

    def __len__(self) -> int:
        return len(self._sizes)

    def _report(self) -> None:
        BUFFER_BYTES.set(self.bytes)
        BUFFER_CHUNKS.set(len(self._sizes))
        BUFFER_EVENTS.set(self.events)

    def _path(self, seq: int) -> Path:
        return self.dir / f"{seq:016d}{_SUFFIX}"

    # ---- write / read / remove --------------------------------------------------------
    def append(self, messages: list[tuple[str, bytes, int]], events: int, offsets: dict[str, int]) -> int:
        data = msgpack.packb({"v": 1, "events": events, "offsets": offsets,
                              "messages": [list(m) for m in messages]}, use_bin_type=True)
        # one chunk always fits an empty buffer, so a batch larger than the bound never blocks forever
        if self._sizes and self.bytes + len(data) > self.max_bytes:
            BUFFER_FULL.inc()
            raise BufferFull(f"disk buffer full ({self.bytes} of {self.max_bytes} bytes)")
        seq = self._next
        self._next += 1
        path = self._path(seq)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        self._sizes[seq] = (len(data), events)
        self._report()
        return seq

    def oldest(self) -> Chunk | None:
        """The oldest readable chunk; unreadable ones are dropped and counted on the way."""
        while self._sizes:
            seq = min(self._sizes)
            path = self._path(seq)
            try:
                raw = path.read_bytes()
                doc = msgpack.unpackb(raw, raw=False)
                messages = [(str(t), bytes(e), int(n)) for t, e, n in doc["messages"]]
                return Chunk(seq, path, len(raw), int(doc["events"]), messages,
                             {str(k): int(v) for k, v in doc["offsets"].items()})
            except (OSError, ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
                events = self._sizes[seq][1]
                log.error("dropping unreadable buffer chunk %s (%s); its events come again from "
                          "Kafka after a restart", path, exc)
                BUFFER_DROPPED_CHUNKS.labels(reason="unreadable").inc()
                BUFFER_DROPPED_EVENTS.labels(reason="unreadable").inc(events)
                if seq >= self._first_seq:
                    self.dropped_chunks += 1
                self.remove(seq)
        return None

    def remove(self, seq: int) -> None:
        self._path(seq).unlink(missing_ok=True)
        self._sizes.pop(seq, None)
        self._report()

    @staticmethod
    def _peek_events(path: Path) -> int:
        try:
            return int(msgpack.unpackb(path.read_bytes(), raw=False)["events"])
        except Exception:
            return 0
