"""Latency of one Kafka hop on the embedded broker (produce → a consumer group's getmany), with
aiokafka's default ``fetch_max_wait_ms`` and with a short one: how much of the pipeline's
kernel → export latency is the broker holding fetches.

    .venv/bin/python -m bench.kafka_hop [--messages 40] [--waits 500,10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tetrapipe.broker import EmbeddedBroker


async def hop(bootstrap: str, topic: str, fetch_max_wait_ms: int, n: int) -> list[float]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 1, 1)])
    await admin.close()
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    cons = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"g-{topic}",
                            auto_offset_reset="earliest", enable_auto_commit=False,
                            fetch_max_wait_ms=fetch_max_wait_ms)
    await prod.start()
    await cons.start()
    lat: list[float] = []
    try:
        await asyncio.sleep(3)  # group joined

        async def consume() -> None:
            while len(lat) < n:
                got = await cons.getmany(timeout_ms=200, max_records=50)
                now = time.time()
                lat.extend((now - float(m.value.decode())) * 1000 for msgs in got.values() for m in msgs)
                if got:
                    await cons.commit()
        task = asyncio.create_task(consume())
        for _ in range(n):
            await (await prod.send(topic, str(time.time()).encode()))
            await asyncio.sleep(0.1)
        await asyncio.wait_for(task, 60)
    finally:
        await cons.stop()
        await prod.stop()
    return lat


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.kafka_hop")
    ap.add_argument("--messages", type=int, default=40)
    ap.add_argument("--waits", default="500,10", help="fetch_max_wait_ms values to compare")
    a = ap.parse_args()
    broker = EmbeddedBroker().start()
    try:
        for i, w in enumerate(int(x) for x in a.waits.split(",")):
            lat = asyncio.run(hop(broker.bootstrap, f"hop{i}", w, a.messages))
            print(f"fetch_max_wait_ms={w:4d}: one hop p50 {statistics.median(lat):6.1f} ms, "
                  f"max {max(lat):6.1f} ms ({len(lat)} messages, 10/s)")
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
