"""Ring-buffer drain: a thread polls the BPF ring buffer and hands raw records, unparsed, to a
bounded queue that the asyncio side batches. If Kafka stalls, the thread keeps draining the
kernel; when the queue is full the record is dropped and counted, never blocking the kernel side.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge

from collector.ringbuf import MappedRingBuffer, Span, map_fd

log = logging.getLogger(__name__)

RINGBUF_RECEIVED = Counter(
    "tetrapipe_observer_ringbuf_events_received", "Records read from the BPF ring buffer"
)
RINGBUF_LOST = Counter(
    "tetrapipe_observer_ringbuf_events_lost",
    "Records the kernel could not put in the ring buffer (it was full)",
)
QUEUE_RECEIVED = Counter(
    "tetrapipe_observer_ringbuf_queue_events_received", "Records queued for batching"
)
QUEUE_LOST = Counter(
    "tetrapipe_observer_ringbuf_queue_events_lost",
    "Records dropped because the queue between drain and Kafka was full",
)
QUEUE_DEPTH = Gauge("tetrapipe_observer_ringbuf_queue_depth", "Records waiting to be batched")


RECORD_FRAMING = 5  # a record's length prefix in a RawBatch, at most (the byte bounds count this)
_LEN = struct.Struct("<I")  # the length prefix as schemas/codec.py frame_records writes it


class RecordQueue:
    """Bounded FIFO shared by the drain threads (producers) and the batcher (consumer). Holds single
    records (bytes) and spans of records copied in bulk from a ring buffer (collector/ringbuf.py),
    already framed; ``len()`` and ``maxlen`` count records."""

    def __init__(self, maxlen: int, loop: asyncio.AbstractEventLoop) -> None:
        self.maxlen = maxlen
        self._q: deque[bytes | Span] = deque()
        self._n = 0               # records in _q
        self._n_lock = threading.Lock()   # drain threads and the batcher change _n
        self._loop = loop
        self.ready = asyncio.Event()
        self._drops = 0            # records refused because the queue was full, ever
        self._drops_reported = 0
        self._drops_lock = threading.Lock()

    def put(self, rec: bytes) -> bool:
        """Called from any thread, counted at once. False when the record was dropped."""
        if self.offer(rec):
            QUEUE_RECEIVED.inc()
            return True
        self.count_drops(1)
        return False

    def count_drops(self, n: int) -> None:
        """Records dropped for a full queue: a metric, and lost_delta() for the next batch."""
        QUEUE_LOST.inc(n)
        with self._drops_lock:
            self._drops += n

    def lost_delta(self) -> int:
        """Records dropped since the last call: the batcher adds them to the next batch's
        ``ringbuf_lost``, so the enricher's audit sees them (tetrapipe_enricher_ringbuf_lost)."""
        with self._drops_lock:
            d = self._drops - self._drops_reported
            self._drops_reported = self._drops
        return d

    def offer(self, rec: bytes) -> bool:
        """Like put, uncounted: the caller counts (the drain threads, once per poll)."""
        with self._n_lock:
            if self._n >= self.maxlen:
                return False
            self._q.append(rec)
            self._n += 1
        return True

    def offer_span(self, span: Span) -> int:
        """As many of the span's records as fit, in order; uncounted. Returns how many."""
        with self._n_lock:
            k = min(len(span), self.maxlen - self._n)
            if k <= 0:
                return 0
            if k < len(span):
                span = span.split(span.i0 + k)[0]
            self._q.append(span)
            self._n += k
        return k

    def wake(self) -> None:
        """Tell the batcher records wait. Once per poll of each drain thread at most, and not
        at all while it was told already (``ready`` is cleared by the batcher's thread only, when
        it took everything): each call_soon_threadsafe wakes the event loop through its pipe."""
        if not self.ready.is_set():
            self._loop.call_soon_threadsafe(self.ready.set)

    def take(self, n: int, max_bytes: int = 0) -> list[bytes]:
        """Up to ``n`` records, at most ``max_bytes`` framed (0 = no bound). A record larger
        than ``max_bytes`` by itself comes alone. One bytes object per record: the batcher
        uses take_framed."""
        q = self._q
        out: list[bytes] = []
        size = 0
        while q and len(out) < n:
            head = q[0]
            rec = head.record(head.i0) if isinstance(head, Span) else head
            rec_size = len(rec) + RECORD_FRAMING
            if max_bytes and out and size + rec_size > max_bytes:
                break
            if isinstance(head, Span) and len(head) > 1:
                q[0] = head.split(head.i0 + 1)[1]
            else:
                q.popleft()
            out.append(rec)
            size += rec_size
        self._taken(len(out))
        return out

    def take_framed(self, n: int, max_bytes: int = 0) -> tuple[list[bytes | memoryview], int]:
        """Like take, but the records come framed for a RawBatch (``b"".join(parts)``), spans
        whole or cut at a record boundary: no per-record work. Returns (parts, record count)."""
        q = self._q
        parts: list[bytes | memoryview] = []
        count = size = 0
        extra = RECORD_FRAMING - 4      # the bound counts RECORD_FRAMING per record, as take
        while q and count < n:
            head = q[0]
            if isinstance(head, Span):
                k = min(len(head), n - count)
                if max_bytes:
                    fit = head.index_bytes_within(max_bytes - size, extra) - head.i0
                    k = min(k, fit if fit or count else 1)
                if k <= 0:
                    break
                if k < len(head):
                    part, q[0] = head.split(head.i0 + k)
                else:
                    part = q.popleft()
                parts.append(part.framed())
                count += k
                size += part.nbytes() + k * extra
            else:
                rec_size = len(head) + RECORD_FRAMING
                if max_bytes and count and size + rec_size > max_bytes:
                    break
                q.popleft()
                parts.append(_LEN.pack(len(head)) + head)
                count += 1
                size += rec_size
        self._taken(count)
        return parts, count

    def _taken(self, k: int) -> None:
        with self._n_lock:
            self._n -= k
        QUEUE_DEPTH.set(self._n)
        if not self._q:
            self.ready.clear()
            if self._q:   # a drain appended meanwhile and may have seen ready still set (wake)
                self.ready.set()

    def __len__(self) -> int:
        return self._n


KTIME_AT = 16             # offset of tp_header.ktime (bpf/records.h)
PID_AT = 8                # offset of tp_header.pid
REC_EXEC, REC_EXIT, REC_FORK = 1, 2, 3   # tp_header.kind (u16 at offset 0)
EXIT_HOLD_MAX_NS = 2_000_000_000   # an exit waits at most this long for the other drains
ORDER_MARGIN_NS = 2_000_000  # a record made just before a consume may be written just after it
POLL_MS = 100             # a drain's poll timeout with nothing to do
ORDER_POLL_MS = 10        # a drain's while others order after it (policies loaded); a holding drain's
COALESCE_MS = 10          # the process drain's least gap between two consumes that found records


class RingBufferDrain:
    """Polls ``bpf[map_name]`` in a daemon thread until stop().

    ``order_after``: another drain (the process program's) whose records must reach the queue
    before this one's of the same time, e.g. the exec before the library loads of the new
    process (the enricher attaches the process from its exec). Records are held until that
    drain has consumed everything up to their kernel time (``watermark_ns``: bpf_ktime_get_ns
    and time.monotonic_ns are the same clock). The drain ordered after polls every ORDER_POLL_MS
    while any drain follows it (``poll_ms`` when none: no policy loaded), and a drain holding
    records every ORDER_POLL_MS, so the hold adds about 10-20 ms (the first hold after a policy
    loads, up to ``poll_ms``). Without it a policy event of a process that has just exec'd could
    be queued before its exec record and be attributed to the image before the exec (measured:
    8 of 300 `exec cat` open events under load).

    The other way round, the drain others order after (the process program's) holds each exit
    record until every one of them (``followers``) has queued everything up to the exit's kernel
    time (``queued_through_ns``), so a process's policy and sensor records reach the queue before
    its exit (at most EXIT_HOLD_MAX_NS; an exec or fork of the same pid releases it at once, so
    a reused pid never overtakes the exit of the process before it)."""

    def __init__(self, bpf: Any, queue: RecordQueue, map_name: str = "events",
                 drops_map: str = "drops", order_after: RingBufferDrain | None = None,
                 poll_ms: int = POLL_MS, transform: Callable[[bytes], bytes] | None = None,
                 coalesce_ms: int = 0) -> None:
        self.bpf = bpf
        # after a consume that found records, the next waits this long: the kernel wakes the
        # reader at the first record written after it caught up, so at an exec loop's ~3k
        # records/s a drain that polls at once takes 1-3 records per wake-up (the thread, the
        # Python around the copy and the batcher's wake-up paid per record, measured ~80 µs CPU
        # per event); waiting takes them ~30 at a time. Records wait at most this much more (a
        # raw batch fills for batch_max_ms anyway); the ring (ringbuf_pages) holds far more.
        self.coalesce_s = coalesce_ms / 1000
        self.transform = transform   # per record, before the queue (collector/stacks.py); None: bulk
        self.poll_ms = poll_ms
        self.queue = queue
        self.drops_map = drops_map
        self._stop = threading.Event()
        self._kernel_lost_seen = 0
        self._accepted = 0
        self._dropped = 0
        self.watermark_ns = 0     # every record this drain's ring buffer had before it is queued
        self.order_after = order_after
        self._held: deque[Span] = deque()
        self.followers: list[RingBufferDrain] = []       # drains ordered after this one
        self.queued_through_ns = time.monotonic_ns()     # followers: every record up to here is queued
        self._exits: deque[tuple[int, int, int, bytes]] = deque()   # (ktime, pid, held since, record)
        if order_after is not None:
            order_after.followers.append(self)
        # mapped and copied in bulk (collector/ringbuf.py), not through bcc's per-record callback
        self.ring: MappedRingBuffer | None = MappedRingBuffer(map_fd(bpf, map_name))
        self._held_n = 0          # records in _held
        self._lock = threading.Lock()   # the drain thread against stop()'s last consume
        self._thread = threading.Thread(target=self._run, name="ringbuf-drain", daemon=True)

    def _consume(self) -> bool:
        """Everything committed in the ring buffer, as one span: held (ordered after another
        drain), or into the queue whole; record by record only where an exit is involved.
        True when there were records."""
        span = self.ring.drain() if self.ring is not None else None
        if span is None:
            return False
        if self.order_after is not None:
            self._held.append(span)
            self._held_n += len(span)
        elif self.followers and (self.ring.exits or (self._exits and self.ring.starts)):
            for i in range(span.i0, span.i1):
                self._on_record(span.record(i))
        else:
            self._offer_span(span)
        return True

    def _offer_span(self, span: Span) -> None:
        if self.transform is not None:
            for i in range(span.i0, span.i1):
                rec = span.record(i)
                try:
                    rec = self.transform(rec)
                except Exception:   # the record goes as the kernel wrote it; the drain goes on
                    log.exception("record transform failed: record queued unchanged")
                self._offer(rec)
            return
        k = self.queue.offer_span(span)
        self._accepted += k
        self._dropped += len(span) - k

    def _release(self, everything: bool = False) -> None:
        """Held records the other drain has caught up with, in their order, into the queue."""
        held = self._held
        wm = (self.order_after.watermark_ns - ORDER_MARGIN_NS) if self.order_after is not None else 0
        excess = self._held_n - self.queue.maxlen   # the other drain stuck: order given up, not memory
        while held:
            span = held[0]
            if everything or excess >= len(span) or span.max_ktime() <= wm:
                cut = span.i1
            else:
                cut = max(span.first_after(wm), span.i0 + max(excess, 0))
            if cut == span.i0:
                break
            if cut < span.i1:
                part, held[0] = span.split(cut)
            else:
                part = held.popleft()
            self._held_n -= len(part)
            excess -= len(part)
            self._offer_span(part)
            if cut < span.i1:
                break

    def _first_held_ktime(self) -> int:
        if not self._held:
            return 1 << 63
        span = self._held[0]
        return min(span.ktime(span.i0), 1 << 63)

    def _on_record(self, rec: bytes) -> None:
        size = len(rec)
        if self.followers and size >= KTIME_AT + 8:
            kind = rec[0] | rec[1] << 8
            if kind == REC_EXIT:     # after the process's records of the other drains
                pid = int.from_bytes(rec[PID_AT:PID_AT + 4], "little")
                self._exits.append((int.from_bytes(rec[KTIME_AT:KTIME_AT + 8], "little"), pid,
                                    time.monotonic_ns(), rec))
                return
            if self._exits and kind in (REC_EXEC, REC_FORK):
                self._release_exits(pid=int.from_bytes(rec[PID_AT:PID_AT + 4], "little"))
        self._offer(rec)

    def _offer(self, rec: bytes) -> None:
        if self.queue.offer(rec):
            self._accepted += 1
        else:
            self._dropped += 1

    def _release_exits(self, pid: int = -1, everything: bool = False) -> None:
        """Held exits the followers have caught up with (or older than EXIT_HOLD_MAX_NS), in
        order; with ``pid``, also that pid's exits (its number is being reused)."""
        exits = self._exits
        if pid >= 0 and any(p == pid for _k, p, _s, _r in exits):
            keep = deque()
            for e in exits:
                (keep.append(e) if e[1] != pid else self._offer(e[3]))
            self._exits = exits = keep
        if not exits:
            return
        followers = tuple(self.followers)
        wm = min((f.queued_through_ns for f in followers), default=1 << 63)
        now = time.monotonic_ns()
        while exits:
            ktime, _pid, since, rec = exits[0]
            if not everything and ktime > wm and now - since < EXIT_HOLD_MAX_NS:
                break
            exits.popleft()
            self._offer(rec)

    def _publish_counts(self) -> None:
        """Counted by this thread alone, published once per poll."""
        accepted, dropped = self._accepted, self._dropped
        if accepted or dropped:
            self._accepted = self._dropped = 0
            RINGBUF_RECEIVED.inc(accepted + dropped)
            QUEUE_RECEIVED.inc(accepted)
            if dropped:
                self.queue.count_drops(dropped)
            if accepted:
                self.queue.wake()

    def _run(self) -> None:
        found = False
        while not self._stop.is_set():
            if found and self.coalesce_s:
                self._stop.wait(self.coalesce_s)   # let records gather (see coalesce_s)
            # ordered drains (held records, or followers waiting for this one's watermark and
            # exits held for them) look every ORDER_POLL_MS; alone, every poll_ms
            self.ring.wait(ORDER_POLL_MS if self._held or self.followers else self.poll_ms)
            # sensors write without waking the reader (bpf/sensor_common.c): take what waits
            t = time.monotonic_ns()
            with self._lock:
                if self._stop.is_set():
                    break
                found = self._consume()
                self.watermark_ns = t
                if self._held:
                    self._release()
                if self.order_after is not None:
                    self.queued_through_ns = min(t - ORDER_MARGIN_NS, self._first_held_ktime() - 1)
                if self._exits:
                    self._release_exits()
                self._publish_counts()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        with self._lock:
            if self.ring is None:
                return
            self._consume()
            self._release(everything=True)
            self.queued_through_ns = 1 << 63
            if self.order_after is not None and self in self.order_after.followers:
                self.order_after.followers.remove(self)
            self._release_exits(everything=True)
            self._publish_counts()
            if not self._thread.is_alive():
                self.ring.close()
                self.ring = None

    def kernel_lost_delta(self) -> int:
        """Kernel-side drops since the last call (summed over CPUs); also counted as a metric."""
        total = int(self.bpf[self.drops_map].sum(0).value)
        delta = total - self._kernel_lost_seen
        self._kernel_lost_seen = total
        if delta > 0:
            RINGBUF_LOST.inc(delta)
        return max(delta, 0)
