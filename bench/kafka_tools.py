"""Reading back what reached Kafka: every message of a topic from the start to its current end."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from bpf import records
from schemas import codec
from tetrapipe.kafka import MAX_MESSAGE_BYTES


async def read_topic(bootstrap: str, topic: str) -> list[Any]:
    """All messages now in ``topic`` (no consumer group, nothing committed)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
                                fetch_max_bytes=4 * MAX_MESSAGE_BYTES)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or set())]
        if not parts:
            await consumer.client.force_metadata_update()
            parts = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or set())]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        out: list[Any] = []
        remaining = {tp for tp in parts if ends[tp] > 0}
        while remaining:
            got = await consumer.getmany(timeout_ms=1000, max_records=1000)
            for tp, msgs in got.items():
                out.extend(msgs)
                if msgs and msgs[-1].offset >= ends[tp] - 1:
                    remaining.discard(tp)
        return out
    finally:
        await consumer.stop()


async def count_raw_records(bootstrap: str, topic: str,
                            pred: Callable[[records.Record], bool]) -> tuple[int, int]:
    """(records matching ``pred``, kernel drops reported in batches) in a raw topic."""
    n = 0
    lost = 0
    for m in await read_topic(bootstrap, topic):
        msg = codec.decode("raw_batch", m.value)
        lost += msg["ringbuf_lost"]
        for raw in codec.split_records(msg["records"]):
            try:
                rec = records.decode(raw)
            except records.RecordError:
                continue
            if pred(rec):
                n += 1
    return n, lost
