"""CPU cost of the enricher's publish step (Avro encode, key, partition, stamp, Kafka produce and
wait for acks) on the embedded broker, for events the real enricher built from synthetic raw
records: events per CPU second and per wall second of ``enricher.service.publish``, in batches
of the size the service publishes per poll.

    .venv/bin/python -m bench.publish_cost [--processes 1500] [--rounds 3]

Runs against whichever tree is first on PYTHONPATH (``python bench/publish_cost.py`` with
PYTHONPATH pointing at another checkout measures that one).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bpf import records
from collector.batcher import Batcher
from enricher import service
from enricher.raw_decoder import decode_batch
from enricher.service import Enricher, publish
from tetrapipe import kafka
from tetrapipe.broker import EmbeddedBroker
from tetrapipe.config import Config
from tetrapipe.sequence import Stamper


def build_events(processes: int, first_pid: int) -> list[dict[str, Any]]:
    from bench.synth import ProcessStream  # noqa: PLC0415  (bench/ of the tree measured)

    recs = list(ProcessStream(first_pid=first_pid).processes(processes))
    b = Batcher("bench-publish", records.layout_id())
    enr = Enricher(Config(node_name="bench-publish"))
    events: list[dict[str, Any]] = []
    for i in range(0, len(recs), 2000):
        events += enr.handle_batch(decode_batch(b.frame(recs[i:i + 2000])))[0]
    return events


async def measure(bootstrap: str, processes: int, rounds: int, per_poll: int) -> list[tuple[int, float, float]]:
    topic = f"bench-publish-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 1, 1)])
    await admin.close()
    cfg = Config(node_name="bench-publish", kafka=bootstrap, events_topic=topic)
    extra = {"max_batch_size": service.BATCH_BYTES} if hasattr(service, "BATCH_BYTES") else {}
    producer = await kafka.start_producer(cfg, **extra)  # as the enricher service starts it
    out = []
    try:
        for r in range(rounds):  # new processes (exec ids, keys) each round
            events = build_events(processes, 100000 + r * 2 * processes)
            stamper = Stamper()
            c0, w0 = time.process_time(), time.perf_counter()
            for i in range(0, len(events), per_poll):
                await publish(producer, cfg, events[i:i + per_poll], None, stamper)
            c1, w1 = time.process_time(), time.perf_counter()
            out.append((len(events), len(events) / (c1 - c0), len(events) / (w1 - w0)))
    finally:
        await producer.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.publish_cost")
    ap.add_argument("--processes", type=int, default=1500, help="2 events each")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-poll", type=int, default=1333, help="events per publish() call")
    a = ap.parse_args()
    with EmbeddedBroker() as b:
        rates = asyncio.run(measure(b.bootstrap, a.processes, a.rounds, a.per_poll))
    for i, (n, cpu, wall) in enumerate(rates):
        print(f"round {i + 1}: publish of {n} events: {cpu:.0f} events per CPU second, "
              f"{wall:.0f} events/s wall")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
