"""The loop every exporter runs: its own consumer group on the events topic, decode, hand the
batch to the sink, commit only after the sink accepted it. A sink that fails is retried with
backoff while the consumer stops fetching, so a slow or dead sink holds no unbounded memory and
loses nothing; other exporters (other groups) are not slowed down."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition
from prometheus_client import Counter, Gauge

from schemas import codec, registry
from tetrapipe import kafka, metrics
from tetrapipe.config import Config
from tetrapipe.metrics import COMMIT_FAILURES, CONSUMER_LAG
from tetrapipe.sequence import SequenceAudit, read_stamp

log = logging.getLogger("tetrapipe.export")

EXPORTED = Counter("tetrapipe_events_exported", "Events a sink accepted", ["sink"])
EXPORTED_BYTES = Counter("tetrapipe_events_exported_bytes", "Bytes of events a sink accepted", ["sink"])
EXPORT_ERRORS = Counter("tetrapipe_export_errors", "Failed attempts to hand events to a sink", ["sink"])
LAST_EXPORT = Gauge("tetrapipe_events_last_exported_timestamp", "Unix time of the last export", ["sink"])


class Sink(Protocol):
    name: str

    async def start(self) -> None: ...

    async def write(self, events: list[dict[str, Any]]) -> int:
        """Deliver the events; return bytes written. Raise to have the batch retried."""
        ...

    async def stop(self) -> None: ...


def group_for(sink_name: str) -> str:
    return f"tetrapipe-export-{sink_name}"


async def run_sink(cfg: Config, sink: Sink, stop: asyncio.Event, max_records: int = 1000) -> None:
    group = group_for(sink.name)
    decode = registry.decoder_for(cfg)
    await kafka.ensure_topics(cfg, [cfg.events_topic, cfg.deadletter_topic])
    consumer = kafka.make_consumer(cfg, group, [cfg.events_topic])
    producer = await kafka.start_producer(cfg)
    await consumer.start()
    await sink.start()
    for counter in (EXPORTED, EXPORTED_BYTES, EXPORT_ERRORS):
        counter.labels(sink=sink.name)  # exported as 0 from the start, so dashboards see the series
    metrics.set_ready()
    log.info("exporter %s consuming %s as group %s", sink.name, cfg.events_topic, group)
    backoff = 0.2
    audit = SequenceAudit(f"export-{sink.name}")
    deferred = hasattr(sink, "committable")  # the sink acknowledges later (fluentd)
    committed: dict[str, int] = {}
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=max_records)
            if not batch:
                await _update_lag(consumer, group)
                if deferred:
                    await _commit_acked(consumer, sink, committed, group)  # type: ignore[arg-type]
                continue
            events: list[dict[str, Any]] = []
            positions: dict[str, int] = {}
            for tp, msgs in batch.items():
                if msgs:
                    positions[f"{tp.topic}/{tp.partition}"] = msgs[-1].offset + 1
                for m in msgs:
                    stamp = read_stamp(m.headers)
                    if stamp is not None and not audit.accept((stamp[0], m.partition), stamp[1],
                                                              label=stamp[0]):
                        continue  # an event this exporter already handed to its sink
                    try:
                        events.append(await _decode_waiting(decode, m.value, stop))
                    except codec.CodecError as exc:
                        await kafka.send_dead_letter(producer, cfg, f"export-{sink.name}", m.value,
                                                     str(exc), m.key, f"{m.topic}/{m.partition}/{m.offset}")
            while events or deferred:
                try:
                    if deferred:
                        # buffered, not yet delivered: counted as exported once acknowledged
                        await sink.put(events, positions)  # type: ignore[attr-defined]
                    else:
                        n = await sink.write(events)
                        EXPORTED.labels(sink=sink.name).inc(len(events))
                        EXPORTED_BYTES.labels(sink=sink.name).inc(n)
                        LAST_EXPORT.labels(sink=sink.name).set(time.time())
                    backoff = 0.2
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # any sink failure: keep the batch, retry
                    EXPORT_ERRORS.labels(sink=sink.name).inc()
                    log.warning("sink %s failed (%s); retrying in %.1fs", sink.name, exc, backoff)
                    try:
                        await asyncio.wait_for(stop.wait(), backoff)
                        return  # stopping: the batch stays uncommitted and is read again
                    except TimeoutError:
                        pass
                    backoff = min(backoff * 2, 10.0)
            if deferred:
                await _commit_acked(consumer, sink, committed, group)  # type: ignore[arg-type]
            else:
                try:
                    await consumer.commit()
                except KafkaError as exc:  # rebalance or broker away: read again, duplicates only
                    COMMIT_FAILURES.labels(group=group).inc()
                    log.warning("offset commit refused (%s): these events will be read again", exc)
    except registry.RegistryError:
        log.info("stopped while the schema registry was unreachable; the batch will be read again")
    finally:
        await sink.stop()
        if deferred:
            await _commit_acked(consumer, sink, committed, group)  # type: ignore[arg-type]
        await consumer.stop()
        await producer.stop()


class DeferredSink(Protocol):
    """A sink that accepts a batch before its destination acknowledged it (fluentd): ``put``
    buffers the batch with the Kafka position after it; ``committable`` returns, per
    ``"topic/partition"``, the position up to which every event was acknowledged."""

    name: str

    async def put(self, events: list[dict[str, Any]], positions: dict[str, int]) -> int: ...

    def committable(self) -> dict[str, int]: ...


async def _commit_acked(consumer: Any, sink: DeferredSink, committed: dict[str, int], group: str) -> None:
    """Commit what the sink says is acknowledged, never moving an offset back."""
    todo: dict[TopicPartition, int] = {}
    for key, off in sink.committable().items():
        if off > committed.get(key, -1):
            topic, _, part = key.rpartition("/")
            todo[TopicPartition(topic, int(part))] = off
    if not todo:
        return
    try:
        await consumer.commit(todo)
    except Exception as exc:  # e.g. a partition moved to another member: it re-reads, at least once
        COMMIT_FAILURES.labels(group=group).inc()
        log.warning("commit of acknowledged offsets failed (%s); they are read again", exc)
        return
    for tp, off in todo.items():
        committed[f"{tp.topic}/{tp.partition}"] = off


async def _decode_waiting(decode: Any, data: bytes, stop: asyncio.Event) -> dict[str, Any]:
    """Decode; while the schema registry is unreachable, wait and retry (the message is fine).
    Stopping meanwhile raises the RegistryError: the batch stays uncommitted."""
    backoff = 0.5
    while True:
        try:
            return decode(data)
        except registry.RegistryError as exc:
            log.warning("%s; retrying in %.1fs", exc, backoff)
            try:
                await asyncio.wait_for(stop.wait(), backoff)
                raise
            except TimeoutError:
                pass
            backoff = min(backoff * 2, 10.0)


async def _update_lag(consumer: Any, group: str) -> None:
    try:
        parts = list(consumer.assignment())
        if not parts:
            return
        ends = await consumer.end_offsets(parts)
        for tp in parts:
            pos = await consumer.position(tp)
            CONSUMER_LAG.labels(group=group, topic=tp.topic).set(max(ends[tp] - pos, 0))
    except Exception:  # lag is best effort
        return


__all__ = ["Sink", "DeferredSink", "run_sink", "group_for", "TopicPartition"]
