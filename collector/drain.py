"""Ring-buffer drain: a thread polls the BPF ring buffer and hands raw records, unparsed, to a
bounded queue that the asyncio side batches. If Kafka stalls, the thread keeps draining the
kernel; when the queue is full the record is dropped and counted, never blocking the kernel side.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
from collections import deque
from typing import Any

from prometheus_client import Counter, Gauge

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


class RecordQueue:
    """Bounded FIFO shared by the drain thread (producer) and the batcher (consumer)."""

    def __init__(self, maxlen: int, loop: asyncio.AbstractEventLoop) -> None:
        self.maxlen = maxlen
        self._q: deque[bytes] = deque()
        self._loop = loop
        self.ready = asyncio.Event()

    def put(self, rec: bytes) -> bool:
        """Called from any thread, counted at once. False when the record was dropped."""
        if self.offer(rec):
            QUEUE_RECEIVED.inc()
            return True
        QUEUE_LOST.inc()
        return False

    def offer(self, rec: bytes) -> bool:
        """Like put, uncounted: the caller counts (the drain threads, once per poll)."""
        if len(self._q) >= self.maxlen:
            return False
        self._q.append(rec)
        return True

    def wake(self) -> None:
        self._loop.call_soon_threadsafe(self.ready.set)

    def take(self, n: int) -> list[bytes]:
        q = self._q
        out = []
        for _ in range(min(n, len(q))):
            out.append(q.popleft())
        QUEUE_DEPTH.set(len(q))
        if not q:
            self.ready.clear()
        return out

    def __len__(self) -> int:
        return len(self._q)


class RingBufferDrain:
    """Polls ``bpf[map_name]`` in a daemon thread until stop()."""

    def __init__(self, bpf: Any, queue: RecordQueue, map_name: str = "events",
                 drops_map: str = "drops") -> None:
        self.bpf = bpf
        self.queue = queue
        self.drops_map = drops_map
        self._stop = threading.Event()
        self._kernel_lost_seen = 0
        self._accepted = 0
        self._dropped = 0
        bpf[map_name].open_ring_buffer(self._on_record)
        self._thread = threading.Thread(target=self._run, name="ringbuf-drain", daemon=True)

    def _on_record(self, _ctx: Any, data: Any, size: int) -> int:
        # per record only the copy and the append: metrics and the wake-up once per poll (they
        # were half of the drain thread's time at 100k records/s, bench/drain_profile.py)
        if self.queue.offer(ctypes.string_at(data, size)):
            self._accepted += 1
        else:
            self._dropped += 1
        return 0

    def _publish_counts(self) -> None:
        """Counted by this thread alone, published once per poll."""
        accepted, dropped = self._accepted, self._dropped
        if accepted or dropped:
            self._accepted = self._dropped = 0
            RINGBUF_RECEIVED.inc(accepted + dropped)
            QUEUE_RECEIVED.inc(accepted)
            if dropped:
                QUEUE_LOST.inc(dropped)
            if accepted:
                self.queue.wake()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.bpf.ring_buffer_poll(100)
            # sensors write without waking the reader (bpf/sensor_common.c): take what waits
            self.bpf.ring_buffer_consume()
            self._publish_counts()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.bpf.ring_buffer_consume()
        self._publish_counts()

    def kernel_lost_delta(self) -> int:
        """Kernel-side drops since the last call (summed over CPUs); also counted as a metric."""
        total = int(self.bpf[self.drops_map].sum(0).value)
        delta = total - self._kernel_lost_seen
        self._kernel_lost_seen = total
        if delta > 0:
            RINGBUF_LOST.inc(delta)
        return max(delta, 0)
