"""Records refused by a full drain queue reach the sequence audit: they are added to the next raw
batch's ``ringbuf_lost`` (read by the enricher), and the queue's byte bound cuts batches."""

from __future__ import annotations

import asyncio

from collector.drain import RECORD_FRAMING, RecordQueue


def test_queue_drops_counted_once_for_the_next_batch() -> None:
    q = RecordQueue(3, asyncio.new_event_loop())
    assert all(q.put(b"r%d" % i) for i in range(3))
    assert not q.put(b"dropped-1") and not q.put(b"dropped-2")
    q.count_drops(5)  # as a drain thread publishes its per-poll count
    assert q.lost_delta() == 7
    assert q.lost_delta() == 0  # reported once


def test_take_bounded_in_bytes_big_record_alone() -> None:
    q = RecordQueue(100, asyncio.new_event_loop())
    for _ in range(10):
        q.put(b"x" * 95)
    q.put(b"B" * 1000)
    q.put(b"y")
    first = q.take(100, 300)
    assert len(first) == 3 and sum(len(r) + RECORD_FRAMING for r in first) <= 300
    rest = []
    while len(q):
        rest.append(q.take(100, 300))
    assert [b"B" * 1000] in rest  # larger than the bound by itself: alone, never dropped
    assert sum(len(b) for b in rest) + 3 == 12


def test_wake_reaches_the_loop_only_when_the_batcher_was_not_told() -> None:
    """Each drain poll that queued records calls wake(); the event loop's pipe is written only
    when ``ready`` is clear (the batcher took everything), not once per poll."""
    loop = asyncio.new_event_loop()
    try:
        q = RecordQueue(100, loop)
        q.put(b"r")
        q.wake()
        q.wake()   # ready.set is still only scheduled: a second call goes too
        loop.run_until_complete(asyncio.sleep(0))
        assert q.ready.is_set()
        calls: list[object] = []
        real = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *a: calls.append(a) or real(*a)  # type: ignore[method-assign]
        q.put(b"s")
        q.wake()
        assert calls == []        # told already: nothing written to the loop
        q.take_framed(10)         # the batcher takes everything: ready cleared
        assert not q.ready.is_set()
        q.put(b"t")
        q.wake()
        assert len(calls) == 1
        loop.run_until_complete(asyncio.sleep(0))
        assert q.ready.is_set()
    finally:
        loop.close()
