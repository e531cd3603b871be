"""The enricher service: consume raw batches (group ``tetrapipe-enricher``), audit their sequence,
decode, keep the process tree, publish Avro events keyed by exec_id, commit after the broker
acknowledged every event of the batch. Bad batches and bad records go to the dead-letter topic."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaProducer
from prometheus_client import Counter

from bpf import records
from enricher.event_builder import EventBuilder
from enricher.process_cache import ProcessCache
from enricher.raw_decoder import BadInput, Batch, decode_batch
from enricher.sequence_audit import SequenceAudit
from schemas import codec, registry
from tetrapipe import kafka, metrics
from tetrapipe.config import Config

log = logging.getLogger("tetrapipe.enricher")

GROUP = "tetrapipe-enricher"
STAGE = "enricher"
RECORDS = Counter("tetrapipe_msg_op", "Raw records handled, by kind", ["msg_op"])
EVENTS_OUT = Counter("tetrapipe_enricher_events", "Events published", ["type"])
HANDLER_ERRORS = Counter("tetrapipe_handler_errors", "Records that could not be handled", ["error"])
BATCHES_IN = Counter("tetrapipe_enricher_batches", "Raw batches consumed")
KERNEL_LOST = Counter("tetrapipe_enricher_ringbuf_lost",
                      "Kernel ring-buffer drops reported by collectors", ["node_name"])

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
                  serializer: registry.EventSerializer | None = None) -> None:
    """Send and wait until the broker acknowledged all of them."""
    futures = []
    for ev in events:
        value = serializer.encode(ev) if serializer is not None else codec.encode("event", ev)
        futures.append(await producer.send(cfg.events_topic, value, key=event_key(ev)))
        EVENTS_OUT.labels(type=event_type(ev)).inc()
    if futures:
        await asyncio.gather(*futures)


async def run(cfg: Config, stop: asyncio.Event) -> None:
    await kafka.ensure_topics(cfg, [cfg.raw_topic, cfg.events_topic, cfg.deadletter_topic])
    enricher = Enricher(cfg)
    serializer = registry.serializer_for(cfg)  # Confluent framing when schema_registry_url is set
    try:
        if not await serializer.ready(stop):
            return
    except registry.RegistryError as exc:  # refused, e.g. incompatible with the subject's versions
        raise SystemExit(f"tetrapipe enricher: {exc}") from None
    producer = await kafka.start_producer(cfg)
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
                    await publish(producer, cfg, events, serializer)
            if got:
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()
