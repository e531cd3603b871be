"""The enricher service: consume raw batches (group ``tetrapipe-enricher``), audit their sequence,
decode, keep the process tree, publish Avro events keyed by exec_id, commit after the broker
acknowledged every event of the batch. Bad batches and bad records go to the dead-letter topic."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import Counter

from bpf import records
from enricher.event_builder import EventBuilder
from enricher.input_audit import audit_exec
from enricher.process_cache import ProcessCache
from enricher.raw_decoder import BadInput, Batch, decode_batch
from enricher.sequence_audit import SequenceAudit
from schemas import codec
from tetrapipe import kafka, metrics
from tetrapipe.config import Config
from tetrapipe.metrics import COMMIT_FAILURES, PUBLISH_RETRIES
from tetrapipe.sequence import Stamper

log = logging.getLogger("tetrapipe.enricher")

GROUP = "tetrapipe-enricher"
STAGE = "enricher"
RECORDS = Counter("tetrapipe_msg_op", "Raw records handled, by kind", ["msg_op"])
EVENTS_OUT = Counter("tetrapipe_enricher_events", "Events published", ["type"])
HANDLER_ERRORS = Counter("tetrapipe_handler_errors", "Records that could not be handled", ["error"])
BATCHES_IN = Counter("tetrapipe_enricher_batches", "Raw batches consumed")
KERNEL_LOST = Counter("tetrapipe_enricher_ringbuf_lost",
                      "Kernel ring-buffer drops reported by collectors", ["node_name"])

_partitioner = DefaultPartitioner()  # Kafka's murmur2 of the key, as the producer would pick

KIND_NAMES = {records.REC_EXEC: "exec", records.REC_EXIT: "exit", records.REC_FORK: "fork",
              records.REC_PROCFS: "procfs", records.REC_HOOK: "hook"}


def event_type(event: dict[str, Any]) -> str:
    return next((k for k, v in event.items() if k.startswith(("process_", "rate_limit")) and v),
                "unknown")


class Enricher:
    """Turns raw batches into events. Kafka-free, so tests and benchmarks can drive it."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        ancestors = frozenset(x.strip() for x in cfg.enable_ancestors.split(",") if x.strip())
        self.builder = EventBuilder(ProcessCache(cfg.process_cache_size), ancestors_for=ancestors,
                                    cluster_name=cfg.cluster_name)
        self.audit = SequenceAudit(STAGE)

    def handle_batch(self, batch: Batch) -> tuple[list[dict[str, Any]], list[tuple[bytes, str]]]:
        """(events, bad records with their error) for one decoded batch."""
        events: list[dict[str, Any]] = []
        bad: list[tuple[bytes, str]] = []
        if batch.ringbuf_lost:
            KERNEL_LOST.labels(node_name=batch.node_name).inc(batch.ringbuf_lost)
        for raw in batch.raw_records:
            try:
                rec = records.decode(raw)
            except records.RecordError as exc:
                HANDLER_ERRORS.labels(error="decode").inc()
                bad.append((raw, str(exc)))
                continue
            RECORDS.labels(msg_op=KIND_NAMES.get(rec.header.kind, "other")).inc()
            if isinstance(rec, records.ExecRecord):
                audit_exec(rec)
            try:
                ev = self.builder.on_record(rec, batch.node_name, batch.boot_time_ns, batch.host_ns)
            except Exception as exc:  # a record the builder cannot handle must not stop the stream
                log.exception("record of kind %d failed", rec.header.kind)
                HANDLER_ERRORS.labels(error="event_handler_failed").inc()
                bad.append((raw, f"event_handler_failed: {exc}"))
                continue
            if ev is not None:
                events.append(ev)
        return events, bad


def event_key(ev: dict[str, Any]) -> bytes:
    body = ev.get(event_type(ev)) or {}
    proc = body.get("process") or {}
    return (proc.get("exec_id") or "").encode()


async def publish(producer: AIOKafkaProducer, cfg: Config, events: list[dict[str, Any]],
                  stamper: Stamper | None = None, origin: str = "") -> None:
    """Send and wait until the broker acknowledged all of them. Each event is stamped with
    (enricher instance, per-partition seq) headers for the exporters' sequence audit; what the
    broker did not acknowledge is sent again, same stamp, until it is (or the task is cancelled)."""
    msgs = []
    parts = sorted(await producer.partitions_for(cfg.events_topic)) if stamper else []
    for ev in events:
        key = event_key(ev)
        part = _partitioner(key, parts, parts) if stamper else None
        headers = stamper.stamp(part, origin) if stamper and part is not None else None
        msgs.append((codec.encode("event", ev), key, part, headers))
        EVENTS_OUT.labels(type=event_type(ev)).inc()
    backoff = 0.2
    while msgs:
        futures = [await producer.send(cfg.events_topic, v, key=k, partition=p, headers=h)
                   for v, k, p, h in msgs]
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = [m for m, r in zip(msgs, results, strict=True) if isinstance(r, Exception)]
        if not failed:
            return
        errors = {type(r).__name__ for r in results if isinstance(r, Exception)}
        log.warning("%d events not acknowledged (%s): sending again in %.1fs", len(failed),
                    ",".join(sorted(errors)), backoff)
        PUBLISH_RETRIES.labels(stage=STAGE).inc(len(failed))
        msgs = failed
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 5.0)


async def commit(consumer: Any, group: str) -> None:
    """Commit the consumed offsets; a refused commit (rebalance, broker away) is counted and the
    messages are read again later: duplicates, never loss."""
    try:
        await consumer.commit()
    except KafkaError as exc:
        COMMIT_FAILURES.labels(group=group).inc()
        log.warning("offset commit refused (%s): these messages will be read again", exc)


async def run(cfg: Config, stop: asyncio.Event) -> None:
    await kafka.ensure_topics(cfg, [cfg.raw_topic, cfg.events_topic, cfg.deadletter_topic])
    enricher = Enricher(cfg)
    producer = await kafka.start_producer(cfg)
    stamper = Stamper()
    consumer = kafka.make_consumer(cfg, GROUP, [cfg.raw_topic])
    await consumer.start()
    metrics.set_ready()
    log.info("enricher consuming %s as group %s", cfg.raw_topic, GROUP)
    try:
        while not stop.is_set():
            got = await consumer.getmany(timeout_ms=200, max_records=50)
            for msgs in got.values():
                for m in msgs:
                    BATCHES_IN.inc()
                    where = f"{m.topic}/{m.partition}/{m.offset}"
                    try:
                        batch = decode_batch(m.value)
                    except BadInput as exc:
                        log.warning("dead-lettering raw message %s: %s", where, exc)
                        await kafka.send_dead_letter(producer, cfg, STAGE, m.value, str(exc), m.key, where)
                        continue
                    if not enricher.audit.accept(batch.instance_id, batch.seq):
                        continue  # a batch seen before: at-least-once redelivery
                    events, bad = enricher.handle_batch(batch)
                    for raw, err in bad:
                        await kafka.send_dead_letter(producer, cfg, STAGE, raw, err, m.key, where)
                    await publish(producer, cfg, events, stamper, f"{batch.instance_id}:{batch.seq}")
            if got:
                await commit(consumer, GROUP)
    finally:
        await consumer.stop()
        await producer.stop()
