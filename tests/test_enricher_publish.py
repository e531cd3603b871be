"""The enricher's publish: events go out in record batches it fills, on a real broker. Every event
arrives once, on the partition of its key, in stamp order, with its headers, also when batches
are small (many batches per partition) and an event is bigger than a batch."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from enricher.service import publish
from schemas import codec
from tests import json_events
from tetrapipe import kafka
from tetrapipe.broker import EmbeddedBroker
from tetrapipe.config import Config
from tetrapipe.sequence import Stamper, read_stamp


def test_publish_in_batches_keeps_every_event_its_partition_and_order(broker: EmbeddedBroker) -> None:
    topic = f"perf-publish-{uuid.uuid4().hex[:8]}"
    cfg = Config(node_name="n", kafka=broker.bootstrap, events_topic=topic)
    events = [json_events.exec_event(pid=1000 + i, args=f"-c {i}", exec_id=f"id-{i % 40}") for i in range(300)]
    events[7]["process_exec"]["process"]["arguments"] = "x" * 20000  # bigger than one batch

    async def run() -> list:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(topic, 3, 1)])
        await admin.close()
        producer = await kafka.start_producer(cfg, max_batch_size=8192)  # a few events per batch
        try:
            await publish(producer, cfg, events, None, Stamper())
        finally:
            await producer.stop()
        consumer = kafka.make_consumer(cfg, f"g-{topic}", [topic])
        await consumer.start()
        got: list = []
        try:
            while len(got) < len(events):
                batch = await asyncio.wait_for(consumer.getmany(timeout_ms=500), 30)
                got += [m for ms in batch.values() for m in ms]
        finally:
            await consumer.stop()
        return got

    got = asyncio.run(run())
    assert len(got) == len(events)
    by_pid = {codec.decode("event", m.value)["process_exec"]["process"]["pid"]: m for m in got}
    assert sorted(by_pid) == [1000 + i for i in range(300)]
    assert len(codec.decode("event", by_pid[1007].value)["process_exec"]["process"]["arguments"]) == 20000
    parts: dict[int, list[int]] = {}
    for m in got:
        source, seq = read_stamp(m.headers) or ("", -1)
        assert source and m.key == codec.decode("event", m.value)["process_exec"]["process"]["exec_id"].encode()
        parts.setdefault(m.partition, []).append(seq)
    for seqs in parts.values():  # each partition: stamps 0..n-1 in offset order
        assert seqs == list(range(len(seqs)))
    keys_on = {m.key: m.partition for m in got}
    assert all(keys_on[m.key] == m.partition for m in got)  # one key, one partition
    assert len(parts) > 1
