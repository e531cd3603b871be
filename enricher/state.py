"""Restart without amnesia: the process cache is journaled to a compacted Kafka topic
(``state_topic``, default ``tetrapipe.state``, ``cleanup.policy=compact``), one message per
process-cache entry keyed by exec_id, value = the entry as JSON; a tombstone (null value) when the
entry leaves the cache. A state message goes to the state partition of the raw partition its
process came from (raw is keyed by node name, so one node's processes share one partition).

Order of work per poll: handle raw batches → send events and state writes → wait for the broker
to acknowledge all of them → commit raw offsets. So whatever raw offset is committed, the state
topic already holds the cache as it was after it. An enricher that is given raw partitions
(first start, restart, or a rebalance that moves a partition to it) first replays the matching
state partitions from the beginning to the end offset it saw, puts the entries back in its cache
(reference counts recomputed from the tree), then consumes raw. Records seen again after the
committed offset are applied idempotently (an exec_id already in the cache is not added twice).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import Counter, Gauge

from enricher.process_cache import CacheListener, Entry
from tetrapipe import kafka
from tetrapipe.config import Config

log = logging.getLogger("tetrapipe.enricher.state")

STATE_WRITES = Counter("tetrapipe_state_writes", "Process-cache state messages acknowledged", ["kind"])
STATE_RESTORED = Counter("tetrapipe_state_restored_entries", "Process-cache entries replayed at start")
STATE_POLICIES = Counter("tetrapipe_state_restored_policies", "Policy catalog entries replayed at start")
STATE_REPLAY_SECONDS = Gauge("tetrapipe_state_replay_seconds", "Duration of the last state replay")
VERSION = 1
REPLAY_TIMEOUT_S = 120.0
MARKER_KEY = b"\x00replay-marker"  # not an exec_id; compaction keeps only the latest marker
POLICY_KEY = "\x00policy\x00"  # + node + "\x00" + policy id: the policy catalog journal


class PolicyBlob:
    """A policy catalog record body (collector JSON), journaled as it came."""

    def __init__(self, data: bytes) -> None:
        self.data = data


def entry_to_json(e: Entry) -> bytes:
    return json.dumps({
        "v": VERSION, "exec_id": e.exec_id, "pid": e.pid, "ktime": e.ktime, "start_time": e.start_time,
        "process": e.process, "parent_exec_id": e.parent_exec_id, "cgroup_id": e.cgroup_id,
        "cgroup_name": e.cgroup_name, "cgroup_ancestors": e.cgroup_ancestors, "nspid": e.nspid,
        "ns": list(e.ns), "caps": list(e.caps), "exited": e.exited,
        "partition": e.extra.get("state_partition", 0),
    }, separators=(",", ":")).encode()


def entry_from_json(raw: bytes) -> Entry:
    d = json.loads(raw)
    if d.get("v") != VERSION:
        raise ValueError(f"state entry version {d.get('v')!r} is not {VERSION}")
    e = Entry(d["exec_id"], d["pid"], d["ktime"], d["start_time"], d["process"], d["parent_exec_id"],
              d["cgroup_id"], d["cgroup_name"], d["nspid"], tuple(d["ns"]), tuple(d["caps"]),
              exited=d["exited"], cgroup_ancestors=d.get("cgroup_ancestors", ""))
    e.extra["state_partition"] = d.get("partition", 0)
    e.extra["journaled"] = True  # read from the state topic: its removal is a tombstone
    return e


class StateJournal(CacheListener):
    """Collects the cache entries changed since the last flush."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.partition = 0            # raw partition of the batch being handled
        self.partitions = 1           # of the state topic
        self.dirty: dict[str, tuple[int, Entry | None]] = {}
        self.sent: set[str] = set()   # exec_ids whose value this journal sent, not tombstoned since

    def changed(self, entry: Entry) -> None:
        p = entry.extra.setdefault("state_partition", self.partition % self.partitions)
        self.dirty[entry.exec_id] = (p, entry)

    def removed(self, entry: Entry) -> None:
        if entry.exec_id not in self.sent and not entry.extra.get("journaled"):
            self.dirty.pop(entry.exec_id, None)  # never sent (exec and exit in one round): no
            return                               # tombstone, and its value need not go either
        p = entry.extra.get("state_partition", self.partition % self.partitions)
        self.dirty[entry.exec_id] = (p, None)

    def policy(self, node: str, body: bytes) -> None:
        """A policy catalog record seen in raw: journaled under its node and id (a deleted
        policy's key is tombstoned), so an enricher that takes this partition over knows
        every policy a hook record may name."""
        try:
            doc = json.loads(body)
            pid = int(doc["policy_id"])
        except (ValueError, KeyError, TypeError):
            return  # the enricher dead-letters it
        key = f"{POLICY_KEY}{node}\x00{pid}"
        self.dirty[key] = (self.partition % self.partitions,
                           None if doc.get("state") == "deleted" else PolicyBlob(body))  # type: ignore[assignment]

    async def flush(self, producer: AIOKafkaProducer) -> list[asyncio.Future]:
        """Send the dirty entries; the caller awaits the returned futures before committing."""
        dirty, self.dirty = self.dirty, {}  # the next batch may make entries dirty meanwhile
        for eid, (_p, entry) in dirty.items():  # before the first await: a removal from now on
            if isinstance(entry, Entry):          # is a tombstone
                self.sent.add(eid)
            elif entry is None:
                self.sent.discard(eid)
        # in record batches filled here, one per state partition (a send() per entry cost more
        # than the entry): every key's future is its batch's, in the order of ``dirty``
        futures: list[asyncio.Future | None] = [None] * len(dirty)
        filling: dict[int, tuple[Any, list[tuple[int, bool]]]] = {}

        async def submit(part: int) -> None:
            batch, slots = filling.pop(part)
            fut = await producer.send_batch(batch, self.topic, partition=part)
            for i, tombstone in slots:
                fut.add_done_callback(_count(tombstone))
                futures[i] = fut

        for i, (eid, (p, entry)) in enumerate(dirty.items()):
            if isinstance(entry, PolicyBlob):
                value: bytes | None = entry.data
            else:
                value = entry_to_json(entry) if entry is not None else None
            key = eid.encode()
            if p not in filling:
                filling[p] = (producer.create_batch(), [])
            if filling[p][0].append(key=key, value=value, timestamp=None, headers=[]) is None:
                await submit(p)  # full: send it, start the next
                filling[p] = (producer.create_batch(), [])
                if filling[p][0].append(key=key, value=value, timestamp=None, headers=[]) is None:
                    filling.pop(p)  # bigger than a batch: on its own
                    fut = await producer.send(self.topic, value, key=key, partition=p)
                    fut.add_done_callback(_count(entry is None))
                    futures[i] = fut
                    continue
            filling[p][1].append((i, entry is None))
        for part in list(filling):
            await submit(part)
        return [f for f in futures if f is not None]


def _count(tombstone: bool) -> Any:
    def done(fut: asyncio.Future) -> None:
        if not fut.cancelled() and fut.exception() is None:
            STATE_WRITES.labels(kind="tombstone" if tombstone else "entry").inc()
    return done


async def ensure_state_topic(cfg: Config) -> None:
    """Create the state topic, compacted, with as many partitions as tetrapipe gives raw,
    replicated as the other topics (kafka.create_missing)."""
    admin = AIOKafkaAdminClient(**kafka.client_settings(cfg))
    await admin.start()
    try:
        await kafka.create_missing(cfg, admin, [cfg.state_topic], {"cleanup.policy": "compact"})
    finally:
        await admin.close()


async def replay(cfg: Config, partitions: list[int], producer: AIOKafkaProducer) -> list[Entry]:
    return (await replay_all(cfg, partitions, producer))[0]


async def replay_all(cfg: Config, partitions: list[int],
                     producer: AIOKafkaProducer) -> tuple[list[Entry], list[tuple[str, bytes]]]:
    """The latest entry of every exec_id in the given state partitions (tombstoned ones left
    out), read from the beginning of the compacted topic up to its end offsets.

    Apache Kafka reports exact end offsets. The embedded broker (Tansu 0.6) reports a high
    watermark that lags when one produce request carried several records, and refuses the
    idempotent producer: with such a producer, the replay writes a marker at each partition's
    end and reads up to it instead."""
    t0 = time.monotonic()
    token = uuid.uuid4().hex.encode()
    tps = [TopicPartition(cfg.state_topic, p) for p in partitions]
    use_marker = not kafka.is_idempotent(producer)
    end: dict[TopicPartition, int] = {}
    if use_marker:
        marks = [await producer.send(cfg.state_topic, token, key=MARKER_KEY, partition=p) for p in partitions]
        end = {tp: (await m).offset for tp, m in zip(tps, marks, strict=True)}
    consumer = AIOKafkaConsumer(**kafka.client_settings(cfg), group_id=None, enable_auto_commit=False,
                                max_partition_fetch_bytes=kafka.MAX_MESSAGE_BYTES)
    await consumer.start()
    latest: dict[str, bytes | None] = {}
    bad = 0
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        if not use_marker:  # after the seek: aiokafka fetches nothing when asked before it
            end = await consumer.end_offsets(tps)
        todo = {tp for tp in tps if use_marker or end[tp] > 0}
        deadline = time.monotonic() + REPLAY_TIMEOUT_S
        while todo and time.monotonic() < deadline:
            got = await consumer.getmany(*todo, timeout_ms=500, max_records=5000)
            for tp, msgs in got.items():
                for m in msgs:
                    if m.key == MARKER_KEY:
                        if m.value == token:
                            todo.discard(tp)
                        continue
                    if m.offset < end[tp] and m.key is not None:
                        latest[m.key.decode(errors="replace")] = m.value
                # compaction keeps a partition's last record (the active segment is never
                # cleaned): offset end - 1 is always read
                if not use_marker and msgs and msgs[-1].offset >= end[tp] - 1:
                    todo.discard(tp)
        if todo:
            log.error("state replay stopped after %.0fs with partitions %s unfinished: "
                      "processes started before may lack parent and pod", REPLAY_TIMEOUT_S,
                      sorted(tp.partition for tp in todo))
    finally:
        await consumer.stop()
    entries = []
    policies = []
    for key, value in latest.items():
        if value is None:
            continue
        if key.startswith(POLICY_KEY):
            policies.append((key[len(POLICY_KEY):].rpartition("\x00")[0], value))
            continue
        try:
            entries.append(entry_from_json(value))
        except (ValueError, KeyError, TypeError):
            bad += 1
    if bad:
        log.warning("state replay skipped %d unreadable entries", bad)
    STATE_RESTORED.inc(len(entries))
    STATE_POLICIES.inc(len(policies))
    STATE_REPLAY_SECONDS.set(time.monotonic() - t0)
    log.info("state replay: %d live process entries (%d keys, end offsets %s by %s) from %s partitions %s "
             "in %.2fs", len(entries), len(latest), {tp.partition: o for tp, o in end.items()},
             "marker" if use_marker else "the broker", cfg.state_topic, partitions, time.monotonic() - t0)
    return entries, policies
