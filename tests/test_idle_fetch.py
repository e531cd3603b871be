"""Consumers fetch less often while idle (tetrapipe/idle_fetch.py), on the embedded broker: after
``idle_after_s`` with no records the fetch wait grows to ``idle_fetch_wait_ms``; a record
produced then still arrives, and the first batch back restores the short wait. The idle stretch
is made short here (the stages use 2 s) so no test sleeps a minute."""

from __future__ import annotations

import asyncio
import time
import uuid

from tetrapipe import kafka
from tetrapipe.broker import EmbeddedBroker
from tetrapipe.config import Config


async def _idle_then_event(bootstrap: str) -> None:
    cfg = Config()
    cfg.kafka = bootstrap
    topic = f"idle-{uuid.uuid4().hex[:8]}"
    cfg.raw_topic = topic
    await kafka.ensure_topics(cfg, [topic])
    consumer = kafka.make_consumer(cfg, f"g-{topic}", [topic], idle_after_s=0.5, idle_fetch_wait_ms=400)
    producer = await kafka.start_producer(cfg)
    await consumer.start()
    try:
        assert consumer.fetch_wait_ms == 25 and not consumer.idle
        t_end = time.monotonic() + 20
        while not consumer.idle and time.monotonic() < t_end:   # group join, then 0.5 s empty
            assert not await consumer.getmany(timeout_ms=100)
        assert consumer.idle and consumer.fetch_wait_ms == 400
        await producer.send_and_wait(topic, b"after the idle stretch")
        t0 = time.monotonic()
        got: list[bytes] = []
        while not got and time.monotonic() - t0 < 10:
            for msgs in (await consumer.getmany(timeout_ms=200)).values():
                got += [m.value for m in msgs]
        assert got == [b"after the idle stretch"]
        assert consumer.fetch_wait_ms == 25 and not consumer.idle   # records came: short wait again
        await producer.send_and_wait(topic, b"next")
        t1 = time.monotonic()
        nxt: list[bytes] = []
        while not nxt and time.monotonic() - t1 < 10:
            for msgs in (await consumer.getmany(timeout_ms=200)).values():
                nxt += [m.value for m in msgs]
        assert nxt == [b"next"]
    finally:
        await consumer.stop()
        await producer.stop()


def test_idle_consumer_waits_longer_and_still_gets_the_next_event(broker: EmbeddedBroker) -> None:
    asyncio.run(_idle_then_event(broker.bootstrap))
