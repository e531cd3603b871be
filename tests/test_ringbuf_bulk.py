"""The bulk ring-buffer drain (collector/ringbuf.py, collector/native/ringbuf_drain.c) on a real
BPF ring buffer of this kernel: a one-page buffer written by a tracepoint program when this
process calls getpgid() with a tagged argument (tests/data/ringbuf_bulk.c). Records of five sizes
cross the buffer's end many times, reserved-then-discarded records are skipped, a buffer filled
without draining counts every record that did not fit in the kernel's drop counter, and a full
queue counts the rest: nothing vanishes uncounted. Both the C helper and the pure-Python loop
(TETRAPIPE_NO_EXTENSIONS=1) run, on one loaded program."""

from __future__ import annotations

import asyncio
import ctypes
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import bpf_unavailable_reason, skip_or_fail

from schemas import codec

TAG = 1 << 30
SIZES = (24, 28, 61, 131, 200)   # payload bytes per size class (ringbuf_bulk.c)
RING = 4096
_libc = ctypes.CDLL(None, use_errno=True)


def _emit(seq: int, cls: int = 0, discard: bool = False) -> None:
    _libc.getpgid(TAG | (1 << 24 if discard else 0) | cls << 16 | seq)


@pytest.fixture(scope="module")
def prog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    reason = bpf_unavailable_reason()
    if reason:
        skip_or_fail(reason)
    from collector import loader

    loader.prepare(tmp_path_factory.mktemp("hdr") / "kernel-headers")
    text = (Path(__file__).parent / "data" / "ringbuf_bulk.c").read_text()
    bpf = loader.load_program("ringbuf_bulk.c", {"TEST_PID": os.getpid()}, text=text)
    try:
        yield bpf
    finally:
        bpf.cleanup()


def _check(rec: bytes, seq: int, cls: int) -> None:
    assert len(rec) == SIZES[cls], (seq, cls, len(rec))
    kind, got, pid = struct.unpack_from("<HxxII", rec)
    assert (kind, got, pid) == (0x77, seq, os.getpid())
    if len(rec) >= 28:
        assert struct.unpack_from("<I", rec, 24)[0] == seq


@pytest.mark.kernel
@pytest.mark.parametrize("backend", ["native", "python"])
def test_bulk_drain_wraps_skips_discards_counts_drops(prog: Any, backend: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from collector import ringbuf
    from collector.drain import RecordQueue, RingBufferDrain

    monkeypatch.setenv("TETRAPIPE_NO_EXTENSIONS", "1" if backend == "python" else "0")
    loop = asyncio.new_event_loop()
    q = RecordQueue(1_000_000, loop)
    drain = RingBufferDrain(prog, q, map_name="rb", drops_map="rb_drops")
    assert drain.ring is not None and drain.ring.size == RING
    assert drain.ring.native == (backend == "native")
    drain.kernel_lost_delta()   # the other backend's run

    # 1. ~70 kB through a 4 kB buffer in rounds: every record crosses or meets the wrap some time
    expected: list[tuple[int, int]] = []
    seq = discarded = 0
    for rnd in range(60):
        for j in range(14):      # < 4096 bytes per round even at the largest size
            cls = (rnd + j * 3) % len(SIZES)
            if j % 5 == 4:
                _emit(0, discard=True)
                discarded += 1
            else:
                _emit(seq, cls)
                expected.append((seq, cls))
                seq += 1
        drain._consume()
    assert drain.ring.discarded == discarded
    assert drain.kernel_lost_delta() == 0
    assert len(q) == len(expected)
    # batches framed from the spans without per-record work decode to the same records
    got: list[bytes] = []
    while len(q):
        parts, n = q.take_framed(100, 3000)
        blob = b"".join(parts)
        assert n and (n == 1 or len(blob) + n <= 3000)
        recs = codec.split_records(blob)
        assert len(recs) == n
        got += recs
    assert len(got) == len(expected)
    for rec, (s, cls) in zip(got, expected, strict=True):
        _check(rec, s, cls)

    # 2. filled without draining: what fits (19 records of 208 bytes), the rest counted by the
    # kernel; a queue with room for 7 takes 7 and counts 12 for the next batch's ringbuf_lost
    small = RecordQueue(7, loop)
    drain.queue = small
    for i in range(100):
        _emit(i, 4)
    assert drain.kernel_lost_delta() == 100 - RING // 208
    drain._consume()
    drain._publish_counts()
    assert len(small) == 7 and small.lost_delta() == RING // 208 - 7
    assert [struct.unpack_from("<I", r, 4)[0] for r in small.take(100)] == list(range(7))

    # 3. the thread: started, records written meanwhile, stop() takes the last ones
    drain.queue = q
    drain.start()
    for i in range(10):
        _emit(i, i % len(SIZES))
    drain.stop()
    assert drain.ring is None    # unmapped
    assert [struct.unpack_from("<I", r, 4)[0] for r in q.take(100)] == list(range(10))
    assert ringbuf.native_disabled() == (backend == "python")


@pytest.mark.kernel
def test_drain_thread_coalesces_wakeups(prog: Any) -> None:
    """After a consume that found records the drain waits ``coalesce_ms`` before the next, so the
    kernel's wake-up for each record written after it caught up is not a consume (and a batcher
    wake-up) each: ten records written in its wait come in one consume, in order; stop() takes
    them without waiting the rest of it."""
    import time

    from collector.drain import RecordQueue, RingBufferDrain

    loop = asyncio.new_event_loop()
    q = RecordQueue(1000, loop)
    drain = RingBufferDrain(prog, q, map_name="rb", drops_map="rb_drops", poll_ms=10,
                            coalesce_ms=600_000)
    found: list[int] = []
    consume = drain._consume

    def counted() -> bool:
        before = len(q)
        took = consume()
        if took:
            found.append(len(q) - before)
        return took

    drain._consume = counted  # type: ignore[method-assign]
    drain.start()
    try:
        _emit(0, 1)
        t_end = time.monotonic() + 30
        while len(q) < 1 and time.monotonic() < t_end:
            time.sleep(0.005)
        assert found == [1]
        for i in range(1, 11):
            _emit(i, i % len(SIZES))
        time.sleep(0.05)
        assert len(q) == 1        # the thread waits: the ten stay in the ring
    finally:
        t0 = time.monotonic()
        drain.stop()
        loop.close()
    assert time.monotonic() - t0 < 2
    assert found == [1, 10]
    assert [struct.unpack_from("<I", r, 4)[0] for r in q.take(100)] == list(range(11))
