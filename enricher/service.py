"""The enricher service: consume raw batches (group ``tetrapipe-enricher``), audit their sequence,
decode, keep the process tree, publish Avro events keyed by exec_id, commit after the broker
acknowledged every event of the batch. Bad batches and bad records go to the dead-letter topic."""

from __future__ import annotations

import asyncio
import logging
import time
import types
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import Counter

from bpf import records
from enricher import loader_events, state
from enricher.event_builder import EventBuilder
from enricher.input_audit import audit_exec
from enricher.metadata.resolver import ProcessMetadata
from enricher.pending import PendingEvents, Source
from enricher.policy_events import PolicyEventError, PolicyEvents
from enricher.process_cache import ProcessCache
from enricher.raw_decoder import BadInput, Batch, decode_batch
from enricher.sequence_audit import SequenceAudit
from schemas import codec, registry
from tetrapipe import kafka, metrics
from tetrapipe.config import Config
from tetrapipe.k8s.pods import PodIndex
from tetrapipe.metrics import COMMIT_FAILURES, PUBLISH_RETRIES
from tetrapipe.redaction import parse_redaction_filters
from tetrapipe.sequence import Stamper

log = logging.getLogger("tetrapipe.enricher")

GROUP = "tetrapipe-enricher"
STAGE = "enricher"
RECORDS = Counter("tetrapipe_msg_op", "Raw records handled, by kind", ["msg_op"])
EVENTS_OUT = Counter("tetrapipe_enricher_events", "Events published", ["type"])
HANDLER_ERRORS = Counter("tetrapipe_handler_errors", "Records that could not be handled", ["error"])
BATCHES_IN = Counter("tetrapipe_enricher_batches", "Raw batches consumed")
PARTITIONS_ASSIGNED = Counter("tetrapipe_enricher_partitions_assigned",
                              "Raw partitions handed to this enricher by its group (start and rebalances)")
KERNEL_LOST = Counter("tetrapipe_enricher_ringbuf_lost",
                      "Kernel ring-buffer drops reported by collectors", ["node_name"])

ORIGIN = "_origin"  # private key on an event dict: "<collector instance>:<raw batch seq>" (not in Avro)
_partitioner = DefaultPartitioner()  # Kafka's murmur2 of the key, as the producer would pick

KIND_NAMES = {records.REC_EXEC: "exec", records.REC_EXIT: "exit", records.REC_FORK: "fork",
              records.REC_PROCFS: "procfs", records.REC_HOOK: "hook", records.REC_POLICY: "policy",
              records.REC_SOCK: "sock", records.REC_LOADER: "loader",
              records.REC_CONNECT_DENY: "connect_deny"}


# the event types the enricher makes, most frequent first: one dict lookup for an exec
_EVENT_TYPES = ("process_exec", "process_exit", "process_kprobe", "process_tracepoint", "process_lsm",
                "process_uprobe", "process_loader", "rate_limit_info")


def event_type(event: dict[str, Any]) -> str:
    for k in _EVENT_TYPES:
        if event.get(k):
            return k
    return next((k for k, v in event.items() if k.startswith(("process_", "rate_limit")) and v),
                "unknown")


class Enricher:
    """Turns raw batches into events. Kafka-free, so tests and benchmarks can drive it."""

    def __init__(self, cfg: Config) -> None:
        """Raises FilterError (a ValueError naming option, line and reason) on a bad
        ``redaction_filters``."""
        self.cfg = cfg
        redaction = parse_redaction_filters(cfg.redaction_filters)
        ancestors = frozenset(x.strip() for x in cfg.enable_ancestors.split(",") if x.strip())
        self.pods = PodIndex(annotations=cfg.enable_pod_annotations) if cfg.enable_k8s_api else None
        self.metadata = ProcessMetadata(self.pods)
        self.builder = EventBuilder(ProcessCache(cfg.process_cache_size), ancestors_for=ancestors,
                                    cluster_name=cfg.cluster_name, pod_resolver=self.metadata,
                                    redaction=redaction, process_cred=cfg.enable_process_cred,
                                    process_ns=cfg.enable_process_ns)
        self.pending = PendingEvents(self.builder, self.metadata, cfg.event_cache_hold_ms / 1000,
                                     cfg.event_cache_size)
        self.journal = state.StateJournal(cfg.state_topic) if cfg.state_topic else None
        if self.journal is not None:
            self.builder.cache.listener = self.journal
        self.audit = SequenceAudit(STAGE)
        self.policy_events = PolicyEvents(expose_stack_addresses=cfg.expose_stack_addresses)

    def set_node_labels(self, labels: dict[str, str]) -> None:
        self.builder.node_labels = labels

    def handle_batch(self, batch: Batch, source: Source | None = None) -> tuple[
            list[dict[str, Any]], list[tuple[bytes, str]]]:
        """(events to publish now, bad records with their error) for one decoded batch. Events
        waiting for pod metadata come out of ``poll_pending`` later."""
        events: list[dict[str, Any]] = []
        bad: list[tuple[bytes, str]] = []
        origin = f"{batch.instance_id}:{batch.seq}"
        if batch.ringbuf_lost:
            KERNEL_LOST.labels(node_name=batch.node_name).inc(batch.ringbuf_lost)
        decoded: list[tuple[bytes, records.Record]] = []
        for raw in batch.raw_records:
            try:
                decoded.append((raw, records.decode(raw)))
            except records.RecordError as exc:
                HANDLER_ERRORS.labels(error="decode").inc()
                bad.append((raw, str(exc)))
        # the kernel programs drain through several ring buffers: restore the kernel's order
        decoded.sort(key=lambda d: d[1].header.ktime)
        deferred: list[tuple[bytes, records.HookRecord]] = []
        kinds: dict[int, int] = {}
        for _raw, rec in decoded:  # counted once per kind and batch, not per record
            kinds[rec.header.kind] = kinds.get(rec.header.kind, 0) + 1
        for kind, n in kinds.items():
            RECORDS.labels(msg_op=KIND_NAMES.get(kind, "other")).inc(n)
        for raw, rec in decoded:
            if isinstance(rec, records.ExecRecord):
                audit_exec(rec)
            try:
                if isinstance(rec, records.HookRecord):
                    if self.policy_events.wants_later(rec, self.builder):
                        deferred.append((raw, rec))
                        continue
                    ev = self.policy_events.on_hook(rec, batch.node_name, batch.boot_time_ns, self.builder)
                elif isinstance(rec, records.PolicyRecord):
                    ev = self.policy_events.on_catalog(rec, batch.node_name)
                    if self.journal is not None:
                        self.journal.policy(batch.node_name, rec.body)
                elif isinstance(rec, records.ConnectDenyRecord):
                    ev = self.policy_events.on_connect_deny(rec, batch.node_name, batch.boot_time_ns,
                                                            self.builder)
                elif isinstance(rec, records.LoaderRecord):  # its process may have exited since
                    ev = loader_events.build(self.builder, rec, batch.node_name, batch.boot_time_ns,
                                             self.policy_events.process_at(rec.header.pid, rec.header.ktime,
                                                                           self.builder))
                else:
                    if isinstance(rec, records.ExitRecord):
                        self.policy_events.note_exit(rec, self.builder)
                    ev = self.builder.on_record(rec, batch.node_name, batch.boot_time_ns, batch.host_ns)
            except (PolicyEventError, records.RecordError) as exc:
                HANDLER_ERRORS.labels(error="policy_event").inc()
                bad.append((raw, str(exc)))
                continue
            except Exception as exc:  # a record the builder cannot handle must not stop the stream
                log.exception("record of kind %d failed", rec.header.kind)
                HANDLER_ERRORS.labels(error="event_handler_failed").inc()
                bad.append((raw, f"event_handler_failed: {exc}"))
                continue
            if ev is not None:
                ev[ORIGIN] = origin
                events.extend(self.pending.offer(ev, event_type(ev), source))
        for raw, hook_rec in deferred:  # hooks at an exec: built after the exec record of the batch
            try:
                ev = self.policy_events.on_hook(hook_rec, batch.node_name, batch.boot_time_ns, self.builder)
            except (PolicyEventError, records.RecordError) as exc:
                HANDLER_ERRORS.labels(error="policy_event").inc()
                bad.append((raw, str(exc)))
                continue
            if ev is not None:
                ev[ORIGIN] = origin
                events.extend(self.pending.offer(ev, event_type(ev), source))
        self.builder.cache.count_misses()
        return events, bad

    def poll_pending(self, now: float | None = None) -> list[dict[str, Any]]:
        return self.pending.poll(now)


def event_key(ev: dict[str, Any], kind: str | None = None) -> bytes:
    """The event's message key: its process's exec_id (``kind``: its event_type, if known)."""
    body = ev.get(kind or event_type(ev)) or {}
    proc = body.get("process") or {}
    return (proc.get("exec_id") or "").encode()


_PARTITIONS: dict[tuple[bytes, int], int] = {}


def _partition_of(key: bytes, parts: list[int]) -> int:
    """Kafka's murmur2 partition of a key (pure Python in aiokafka: kept for the few thousand
    keys last seen; a process's exec, exit and policy events share its exec_id key)."""
    if len(parts) == 1:  # nothing to pick (murmur2 in pure Python was 4 % of the enricher's time)
        return parts[0]
    found = _PARTITIONS.get((key, len(parts)))
    if found is None or found not in parts:
        if len(_PARTITIONS) >= 8192:
            _PARTITIONS.clear()
        found = _PARTITIONS[(key, len(parts))] = _partitioner(key, parts, parts)
    return found


async def publish(producer: AIOKafkaProducer, cfg: Config, events: list[dict[str, Any]],
                  serializer: registry.EventSerializer | None = None, stamper: Stamper | None = None) -> None:
    """Send and wait until the broker acknowledged all of them. Each event is stamped with
    (enricher instance, per-partition seq) headers for the exporters' sequence audit; what the
    broker did not acknowledge is sent again, same stamp, until it is (or the task is cancelled)."""
    msgs = []
    parts = sorted(await producer.partitions_for(cfg.events_topic)) if stamper else []
    kinds: dict[str, int] = {}
    encode = serializer.encode if serializer is not None else lambda ev: codec.encode("event", ev)
    for ev in events:
        kind = event_type(ev)
        kinds[kind] = kinds.get(kind, 0) + 1
        key = event_key(ev, kind)
        part = _partition_of(key, parts) if stamper else None
        headers = stamper.stamp(part, ev.get(ORIGIN, "")) if stamper and part is not None else None
        msgs.append((encode(ev), key, part, headers))
    for kind, n in kinds.items():  # counted once per kind and round, not per event
        EVENTS_OUT.labels(type=kind).inc(n)
    backoff = 0.2
    watch = kafka.DeliveryWatch("events", cfg.kafka_stuck_exit_s)
    while msgs:
        sent = await _send_batched(producer, cfg.events_topic, msgs)
        results = await asyncio.gather(*(fut for fut, _ in sent), return_exceptions=True)
        failed = [m for (_, ms), r in zip(sent, results, strict=True) if isinstance(r, Exception) for m in ms]
        if not failed:
            return
        errors = {type(r).__name__ for r in results if isinstance(r, Exception)}
        log.warning("%d events not acknowledged (%s): sending again in %.1fs", len(failed),
                    ",".join(sorted(errors)), backoff)
        PUBLISH_RETRIES.labels(stage=STAGE).inc(len(failed))
        watch.failed(",".join(sorted(errors)))
        msgs = failed
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 5.0)


class StateRestorer(ConsumerRebalanceListener):
    """Before raw partitions are consumed, replay their process-cache state (enricher/state.py)."""

    def __init__(self, cfg: Config, enricher: Enricher, producer: AIOKafkaProducer) -> None:
        self.cfg = cfg
        self.enricher = enricher
        self.producer = producer
        self.idle = asyncio.Event()  # cleared while a replay runs: records wait for it
        self.idle.set()

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        PARTITIONS_ASSIGNED.inc(len(assigned))
        journal = self.enricher.journal
        if journal is None or not assigned:
            return
        parts = sorted({tp.partition % journal.partitions for tp in assigned})
        self.idle.clear()
        try:
            entries, policies = await state.replay_all(self.cfg, parts, self.producer)
            for node, body in policies:  # the catalog of every policy a hook record may name
                self.enricher.policy_events.on_catalog(types.SimpleNamespace(body=body), node)
            builder = self.enricher.builder
            redacted = [e for e in entries if builder.redaction and builder.redact(e.process)]
            builder.cache.restore(entries)
            for e in redacted:  # journaled before the filter was set: overwrite the secret there too
                if builder.cache.get(e.exec_id) is e:
                    builder.cache.listener.changed(e)
        except Exception:  # the stream must go on: without state, parents of old processes miss
            log.exception("state replay of %s failed: going on without it", self.cfg.state_topic)
        finally:
            self.idle.set()


async def run(cfg: Config, stop: asyncio.Event) -> None:
    try:
        enricher = Enricher(cfg)
    except ValueError as exc:  # a bad redaction filter: refuse to start, say which and why
        raise SystemExit(f"tetrapipe enricher: {exc}") from None
    await kafka.ensure_topics(cfg, [cfg.raw_topic, cfg.events_topic, cfg.deadletter_topic])
    serializer = registry.serializer_for(cfg)  # Confluent framing when schema_registry_url is set
    try:
        if not await serializer.ready(stop):
            return
    except registry.RegistryError as exc:  # refused, e.g. incompatible with the subject's versions
        raise SystemExit(f"tetrapipe enricher: {exc}") from None
    producer = await kafka.start_producer(cfg, max_batch_size=BATCH_BYTES)
    if enricher.journal is not None:
        await state.ensure_state_topic(cfg)
        enricher.journal.partitions = len(await producer.partitions_for(cfg.state_topic) or [0])
    watcher_task = None
    if enricher.pods is not None:
        from tetrapipe.k8s.watch import PodWatcher  # 1.6 s of imports: only when enabled

        watcher = PodWatcher(enricher.pods, cfg.node_name, cfg.k8s_kubeconfig, enricher.set_node_labels,
                             backoff_max_s=cfg.k8s_retry_max_ms / 1000)
        watcher_task = asyncio.create_task(watcher.run(stop), name="k8s-pod-watch")
    stamper = Stamper()
    group = cfg.enricher_group or GROUP
    consumer = kafka.make_consumer(cfg, group, [])
    restorer = StateRestorer(cfg, enricher, producer)
    consumer.subscribe([cfg.raw_topic], listener=restorer)
    await consumer.start()
    metrics.set_ready()
    log.info("enricher consuming %s as group %s", cfg.raw_topic, group)
    done_upto: dict[TopicPartition, int] = {}   # next offset after the last handled message
    committed: dict[TopicPartition, int] = {}
    in_flight: asyncio.Task | None = None  # the previous round's publish and commit
    try:
        while not stop.is_set():
            got = await consumer.getmany(timeout_ms=200, max_records=ROUND_MAX_BATCHES)
            await restorer.idle.wait()  # records of a partition are handled after its state replay
            out: list[dict[str, Any]] = []
            for tp, msgs in got.items():
                for m in msgs:
                    # the loop's other tasks between raw batches: the group's heartbeats (a round
                    # that held the loop past session_timeout_ms got this member expelled and its
                    # partitions re-read by another), the last round's publish; a state replay a
                    # rebalance started meanwhile finishes before the next batch is handled
                    await asyncio.sleep(0)
                    await restorer.idle.wait()
                    done_upto[tp] = m.offset + 1
                    if enricher.journal is not None:
                        enricher.journal.partition = m.partition
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
                    events, bad = enricher.handle_batch(batch, (m.topic, m.partition, m.offset))
                    for raw, err in bad:
                        await kafka.send_dead_letter(producer, cfg, STAGE, raw, err, m.key, where)
                    out.extend(events)
            out.extend(enricher.poll_pending(time.monotonic()))
            # one round in flight: this round's events are built while the broker acknowledges
            # the last round's; rounds publish and commit one after the other, in order
            if in_flight is not None:
                await in_flight
            _forget_revoked(done_upto, consumer.assignment())
            in_flight = asyncio.create_task(_publish_and_commit(
                producer, consumer, cfg, enricher, out, dict(done_upto), committed, serializer, stamper,
                enricher.pending.floor()), name="enricher-publish")
        if in_flight is not None:
            await in_flight
            in_flight = None
        out = enricher.pending.drain()
        await _publish_and_commit(producer, consumer, cfg, enricher, out, done_upto, committed, serializer,
                                  stamper)
    finally:
        if in_flight is not None and not in_flight.done():
            in_flight.cancel()
        if watcher_task is not None:
            watcher_task.cancel()
        await consumer.stop()
        await producer.stop()


def _forget_revoked(done_upto: dict[TopicPartition, int], assigned: set[TopicPartition]) -> None:
    """Offsets of partitions moved to another enricher are not ours to commit any more."""
    for tp in [tp for tp in done_upto if tp not in assigned]:
        del done_upto[tp]


# raw batches per round: a backlog of full batches (2000 records each) made rounds of 100k
# records, ~2 s of one core's work with the loop held (under load, past the group's 10 s session
# timeout: bench/enricher_group.py saw every member expelled and 67k events doubled), the
# last round's publish not overlapped; at live rates a poll returns fewer batches than this anyway
ROUND_MAX_BATCHES = 10
Message = tuple[bytes, bytes, int | None, list[tuple[str, bytes]] | None]  # value, key, partition, headers
BATCH_BYTES = 256 * 1024  # the enricher producer's record batches (aiokafka's default: 16 kB)


async def _send_batched(producer: AIOKafkaProducer, topic: str,
                        msgs: list[Message]) -> list[tuple[asyncio.Future, list[Message]]]:
    """Messages of a known partition go out in record batches filled here, one future per batch:
    aiokafka's send() per message cost three times the enrichment of the event. Order within a
    partition is kept. (future, its messages) for each batch or single send."""
    sent: list[tuple[asyncio.Future, list[Message]]] = []
    filling: dict[int, tuple[Any, list[Message]]] = {}

    async def submit(part: int) -> None:
        batch, ms = filling.pop(part)
        try:
            fut = await producer.send_batch(batch, topic, partition=part)
        except KafkaError as exc:  # refused as a whole: failed like an unacknowledged send
            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(exc)
        sent.append((fut, ms))

    for m in msgs:
        value, key, part, headers = m
        if part is not None:
            if part not in filling:
                filling[part] = (producer.create_batch(), [])
            if filling[part][0].append(key=key, value=value, timestamp=None, headers=headers or []) is None:
                await submit(part)  # full: send it, start the next
                filling[part] = (producer.create_batch(), [])
                if filling[part][0].append(key=key, value=value, timestamp=None, headers=headers or []) is None:
                    filling.pop(part)  # bigger than a batch: on its own
                    sent.append((await _send(producer, topic, value, key=key, partition=part, headers=headers),
                                 [m]))
                    continue
            filling[part][1].append(m)
        else:
            sent.append((await _send(producer, topic, value, key=key, partition=None, headers=headers), [m]))
    for part in list(filling):
        await submit(part)
    return sent


async def _send(producer: AIOKafkaProducer, topic: str, value: bytes, **kw: Any) -> asyncio.Future:
    """producer.send, whose own refusal (its buffer full for a whole request timeout while the
    broker is away) becomes a failed future like any other unacknowledged message."""
    try:
        return await producer.send(topic, value, **kw)
    except KafkaError as exc:
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        fut.set_exception(exc)
        return fut


async def _flush_journal(producer: AIOKafkaProducer, journal: Any, stuck_s: float = kafka.PRODUCER_STUCK_S) -> None:
    """State writes until the broker acknowledged them all: what it refused (a broker outage
    longer than the request timeout) is made dirty again and sent again, unless a newer write of
    the same entry is already waiting."""
    backoff = 0.2
    watch = kafka.DeliveryWatch("state writes", stuck_s)
    while journal.dirty:
        pending = dict(journal.dirty)
        try:
            futures = await journal.flush(producer)
        except KafkaError:  # the producer refused to take more: all of it stays dirty, sent again
            futures = []
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = ([k for k, r in zip(pending, results, strict=True) if isinstance(r, Exception)]
                  if futures else list(pending))
        if not failed:
            return
        for k in failed:
            journal.dirty.setdefault(k, pending[k])
        PUBLISH_RETRIES.labels(stage=f"{STAGE}-state").inc(len(failed))
        errors = {type(r).__name__ for r in results if isinstance(r, Exception)} or {"refused"}
        log.warning("%d state writes not acknowledged (%s): sending again in %.1fs", len(failed),
                    ",".join(sorted(errors)), backoff)
        watch.failed(",".join(sorted(errors)))
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 5.0)


async def _publish_and_commit(producer: AIOKafkaProducer, consumer: Any, cfg: Config, enricher: Enricher,
                              events: list[dict[str, Any]], done_upto: dict[TopicPartition, int],
                              committed: dict[TopicPartition, int], serializer: Any,
                              stamper: Stamper | None = None,
                              floor: dict[tuple[str, int], int] | None = None) -> None:
    """Events and state writes acknowledged first, then raw offsets committed, never past an
    event still held for pod metadata. ``done_upto`` and ``floor`` (the held events' lowest
    offsets) as they were when ``events`` were made: later rounds do not move this commit."""
    if enricher.journal is not None:
        await _flush_journal(producer, enricher.journal, cfg.kafka_stuck_exit_s)
    await publish(producer, cfg, events, serializer, stamper)
    if floor is None:
        floor = enricher.pending.floor()
    offsets = {}
    assigned = consumer.assignment()
    for tp in [tp for tp in done_upto if tp not in assigned]:  # moved to another enricher
        del done_upto[tp]
        committed.pop(tp, None)
    for tp, upto in done_upto.items():
        held = floor.get((tp.topic, tp.partition))
        off = min(upto, held) if held is not None else upto
        if committed.get(tp) != off:
            offsets[tp] = off
    if offsets:
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # a rebalance took partitions away, or the broker is away: re-read from the last commit
            COMMIT_FAILURES.labels(group=cfg.enricher_group or GROUP).inc()
            log.warning("raw offsets not committed (%s): those batches will be read again", exc)
            return
        committed.update(offsets)
