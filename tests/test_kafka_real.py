"""tetrapipe on Apache Kafka 4 (KRaft), not the embedded Tansu: the idempotent producer (and the
fallback where the broker refuses it), replicated topics with min.insync.replicas, the compacted
state topic replayed without a marker, SCRAM-SHA-256/512 and TLS served by Kafka itself (users
made with ``kafka-storage format --add-scram``, a CA made for the session), Debian's ``kcat``
reading the events topic with its keys, and raw batches cut below the topic's message size."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from conftest import KAFKA_USERS
from harness import Pipeline, wait_until
from identity_helpers import RawProducer, exec_record
from kafka_cluster import KafkaCluster, run_tool

from enricher import state
from enricher.process_cache import Entry
from tetrapipe import kafka as kafka_lib  # the fixture `kafka` is the broker
from tetrapipe.broker import EmbeddedBroker
from tetrapipe.config import Config


def _cfg(bootstrap: str, **kw: object) -> Config:
    return Config(kafka=bootstrap, **kw)  # type: ignore[arg-type]


def _topic() -> str:
    return f"k{uuid.uuid4().hex[:8]}"


def test_idempotent_producer_on_kafka_and_logged_fallback_on_tansu(
        kafka: KafkaCluster, broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture) -> None:
    async def start(bootstrap: str) -> tuple[bool, float]:
        p = await kafka_mod.start_producer(_cfg(bootstrap))
        try:
            await p.send_and_wait(t, b"x", key=b"k")
            return kafka_mod.is_idempotent(p), kafka_mod.IDEMPOTENT._value.get()
        finally:
            await p.stop()

    kafka_mod = kafka_lib
    t = _topic()
    asyncio.run(kafka_mod.ensure_topics(_cfg(kafka.bootstrap), [t]))
    assert asyncio.run(start(kafka.bootstrap)) == (True, 1.0)
    asyncio.run(kafka_mod.ensure_topics(_cfg(broker.bootstrap), [t]))
    with caplog.at_level(logging.WARNING, logger="tetrapipe.kafka"):
        assert asyncio.run(start(broker.bootstrap)) == (False, 0.0)
    assert "broker refused an idempotent producer" in caplog.text


def test_topics_replicated_with_min_insync_on_three_brokers(kafka_cluster: KafkaCluster) -> None:
    raw, state_t, two = _topic(), _topic(), _topic()
    cfg = _cfg(kafka_cluster.bootstrap, topic_partitions=2, state_topic=state_t)
    asyncio.run(kafka_lib.ensure_topics(cfg, [raw]))
    asyncio.run(state.ensure_state_topic(cfg))
    leader, replicas, isr = kafka_cluster.partition_roles(raw, 1)
    assert sorted(replicas) == [1, 2, 3] and sorted(isr) == [1, 2, 3] and leader in replicas
    desc = kafka_cluster.topic_config(raw)
    assert "min.insync.replicas=2 " in desc
    sdesc = kafka_cluster.topic_config(state_t)
    assert "cleanup.policy=compact " in sdesc and "min.insync.replicas=2 " in sdesc
    # configured: 2 replicas, 1 in sync
    asyncio.run(kafka_lib.ensure_topics(_cfg(kafka_cluster.bootstrap, topic_replication_factor=2,
                                             topic_min_insync_replicas=1), [two]))
    assert len(kafka_cluster.partition_roles(two)[1]) == 2
    assert "min.insync.replicas=1 " in kafka_cluster.topic_config(two)
    # more in sync than replicas: refused before anything is created, with the reason
    with pytest.raises(ValueError, match="topic_min_insync_replicas 3 is more than"):
        asyncio.run(kafka_lib.ensure_topics(_cfg(kafka_cluster.bootstrap, topic_replication_factor=2,
                                                 topic_min_insync_replicas=3), [_topic()]))


def test_acks_all_refused_below_min_insync(kafka_cluster: KafkaCluster) -> None:
    """With replication 3 and min.insync.replicas 3 (so one dead follower is enough), a write
    the cluster cannot protect is refused, not silently acknowledged."""
    from aiokafka.errors import KafkaError

    t = _topic()
    cfg = _cfg(kafka_cluster.bootstrap, topic_min_insync_replicas=3)
    asyncio.run(kafka_lib.ensure_topics(cfg, [t]))
    leader, replicas, _ = kafka_cluster.partition_roles(t)
    follower = next(r for r in replicas if r != leader)

    async def send() -> str:
        p = await kafka_lib.start_producer(cfg, request_timeout_ms=4000)
        try:
            await asyncio.wait_for(p.send_and_wait(t, b"v"), 20)
            return "acknowledged"
        except (KafkaError, TimeoutError) as exc:
            return type(exc).__name__
        finally:
            try:  # a batch the cluster refuses would hold stop() until it is delivered
                await asyncio.wait_for(p.stop(), 5)
            except TimeoutError:
                pass

    assert asyncio.run(send()) == "acknowledged"
    kafka_cluster.kill9(follower)
    try:
        wait_until(lambda: len(kafka_cluster.partition_roles(t)[2]) == 2, 30, interval=0.5,
                   what="the follower out of the ISR")
        assert asyncio.run(send()) != "acknowledged"
    finally:
        kafka_cluster.restart_node(follower)


def _entry(eid: str, pid: int, exited: bool = False) -> Entry:
    return Entry(eid, pid, pid * 10, 0, {"binary": f"/bin/p{pid}"}, "", 0, "", pid, (0,) * 10, (0, 0, 0),
                 exited=exited)


def test_state_topic_compacted_by_kafka_and_replayed_without_marker(kafka: KafkaCluster) -> None:
    """Kafka's log cleaner really compacts the state topic (older versions of a key and
    tombstoned keys disappear); the replay reads the compacted topic up to the end offsets the
    broker reports, and writes no marker."""
    t = _topic()
    cfg = _cfg(kafka.bootstrap, state_topic=t)
    asyncio.run(state.ensure_state_topic(cfg))
    run_tool("kafka.admin.ConfigCommand", "--bootstrap-server", kafka.bootstrap, "--entity-type", "topics",
             "--entity-name", t, "--alter", "--add-config",
             "segment.ms=300,min.cleanable.dirty.ratio=0.01,delete.retention.ms=0,min.compaction.lag.ms=0")

    async def write(n: int) -> None:
        p = await kafka_lib.start_producer(cfg)
        try:
            j = state.StateJournal(t)
            for i in range(n):
                for pid in (100, 200, 300):
                    j.changed(_entry(f"e{pid}", pid, exited=i == n - 1 and pid == 100))
                await asyncio.gather(*await j.flush(p))
                await asyncio.sleep(0.15)  # spread over segments
            j.removed(_entry("e300", 300))
            await asyncio.gather(*await j.flush(p))
        finally:
            await p.stop()

    asyncio.run(write(20))

    async def keys() -> list[bytes | None]:
        c = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, enable_auto_commit=False)
        await c.start()
        try:
            tp = TopicPartition(t, 0)
            c.assign([tp])
            await c.seek_to_beginning(tp)
            end = (await c.end_offsets([tp]))[tp]
            out: list[bytes | None] = []
            while await c.position(tp) < end:
                got = await c.getmany(tp, timeout_ms=1000)
                out += [m.key for v in got.values() for m in v]
            return out
        finally:
            await c.stop()

    async def count() -> int:
        return len(await keys())

    async def touch() -> None:  # a later write rolls the segment the cleaner may then clean
        p = await kafka_lib.start_producer(cfg)
        try:
            j = state.StateJournal(t)
            j.changed(_entry("e400", 400))
            await asyncio.gather(*await j.flush(p))
        finally:
            await p.stop()

    written = 3 * 20 + 1
    def compacted() -> bool:
        asyncio.run(touch())
        return asyncio.run(count()) < written // 2
    wait_until(compacted, 90, interval=2.0, what="Kafka's log cleaner compacting the state topic")

    async def replay() -> tuple[list[Entry], int]:
        p = await kafka_lib.start_producer(cfg)
        try:
            entries = await state.replay(cfg, [0], p)
        finally:
            await p.stop()
        return entries, await count()

    entries, _ = asyncio.run(replay())
    by_id = {e.exec_id: e for e in entries}
    assert set(by_id) == {"e100", "e200", "e400"}  # e300 tombstoned
    assert by_id["e100"].exited and not by_id["e200"].exited
    # no marker written to Apache Kafka (the cleaner keeps compacting meanwhile: count keys, not records)
    assert state.MARKER_KEY not in asyncio.run(keys())


def test_scram_and_tls_served_by_kafka(kafka: KafkaCluster, kafka_certs: tuple[Path, Path]) -> None:
    ca = str(kafka_certs[0])
    cases = [
        (kafka.sasl_bootstrap, dict(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-256",
                                    kafka_sasl_username="alice", kafka_sasl_password=KAFKA_USERS["alice"])),
        (kafka.sasl_bootstrap, dict(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-512",
                                    kafka_sasl_username="bob", kafka_sasl_password=KAFKA_USERS["bob"])),
        (kafka.ssl_bootstrap, dict(kafka_security_protocol="SSL", kafka_ssl_cafile=ca)),
        (kafka.sasl_ssl_bootstrap, dict(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                                        kafka_sasl_username="alice", kafka_sasl_password=KAFKA_USERS["alice"],
                                        kafka_ssl_cafile=ca)),
    ]

    async def roundtrip(cfg: Config) -> bytes:
        t = _topic()
        await kafka_lib.ensure_topics(cfg, [t])
        p = await kafka_lib.start_producer(cfg)
        try:
            await p.send_and_wait(t, b"through " + cfg.kafka_security_protocol.encode(), key=b"k")
        finally:
            await p.stop()
        c = kafka_lib.make_consumer(cfg, f"g{uuid.uuid4().hex[:6]}", [t])
        await c.start()
        try:
            got = await c.getmany(timeout_ms=10000)
            return next(m.value for ms in got.values() for m in ms)
        finally:
            await c.stop()

    for bootstrap, kw in cases:
        cfg = _cfg(bootstrap, **kw)
        assert asyncio.run(roundtrip(cfg)) == b"through " + cfg.kafka_security_protocol.encode(), kw

    # refusals by Kafka itself: a wrong password, an unknown user, one line naming the user
    for user, pw in (("alice", "wrong"), ("mallory", "x")):
        cfg = _cfg(kafka.sasl_bootstrap, kafka_security_protocol="SASL_PLAINTEXT",
                   kafka_sasl_mechanism="SCRAM-SHA-256", kafka_sasl_username=user, kafka_sasl_password=pw)
        with pytest.raises(kafka_lib.KafkaAuthError) as ei:
            asyncio.run(kafka_lib.ensure_topics(cfg, [_topic()]))
        assert f"user {user!r}" in str(ei.value) and pw not in str(ei.value).replace(user, "")
    # a CA that did not sign the broker's certificate: refused
    other_ca = Path(kafka_certs[0]).parent / "other"
    from kafka_cluster import make_tls_pem
    bad_ca, _ = make_tls_pem(other_ca)
    cfg = _cfg(kafka.ssl_bootstrap, kafka_security_protocol="SSL", kafka_ssl_cafile=str(bad_ca))
    with pytest.raises(Exception):  # noqa: B017 - aiokafka wraps the certificate error variously
        asyncio.run(asyncio.wait_for(kafka_lib.ensure_topics(cfg, [_topic()]), 30))


def test_kcat_reads_events_topic_with_keys(kafka_pipeline: Pipeline) -> None:
    """Raw records in, the enricher on Apache Kafka, Debian's kcat reads its Avro events with their
    exec_id keys (and the dead-letter topic is empty)."""
    pipe = kafka_pipeline
    pipe.start("enricher", "enricher")
    marker = f"kcat-{uuid.uuid4().hex[:8]}"
    pid = 40000 + int(time.time()) % 20000
    RawProducer(pipe).send(exec_record(pid, 1, "/usr/bin/kcat-test", [marker]))
    topic = pipe.base["events_topic"]

    def read() -> list[tuple[str, bytes]]:
        p = subprocess.run(["kcat", "-C", "-b", pipe.bootstrap.split(",")[0], "-t", topic, "-o", "beginning",
                            "-e", "-q", "-f", "%k\t%S\t%s\n"], capture_output=True, timeout=30)
        out = []
        for line in p.stdout.split(b"\n"):
            if marker.encode() in line:
                k, _, rest = line.partition(b"\t")
                out.append((k.decode(), rest))
        return out

    got = wait_until(read, 40, interval=1.0, what="kcat reading the event")
    key = got[0][0]
    node, ktime, kpid = base64.b64decode(key).decode().rsplit(":", 2)
    assert node == pipe.node_name and int(kpid) == pid and int(ktime) > 0


def test_raw_batches_cut_below_topic_max_message_bytes(kafka: KafkaCluster) -> None:
    """The raw topic takes at most 20 000 bytes per message: the collector's bound follows it
    (kafka.max_message_bytes), and the queue hands out batches below it."""
    t = _topic()
    cfg = _cfg(kafka.bootstrap, raw_topic=t)
    asyncio.run(kafka_lib.ensure_topics(cfg, [t]))
    run_tool("kafka.admin.ConfigCommand", "--bootstrap-server", kafka.bootstrap, "--entity-type", "topics",
             "--entity-name", t, "--alter", "--add-config", "max.message.bytes=20000")
    assert asyncio.run(kafka_lib.max_message_bytes(cfg, t)) == 20000
    assert asyncio.run(kafka_lib.max_message_bytes(_cfg(kafka.bootstrap, kafka_max_message_bytes=9000), t)) == 9000

    from bpf import records
    from collector.batcher import Batcher
    from collector.drain import RecordQueue
    from collector.service import Limits

    async def fill_and_send() -> tuple[list[int], int]:
        q = RecordQueue(10000, asyncio.get_running_loop())
        for i in range(300):
            q.put(exec_record(1000 + i, 1, "/bin/x", ["a" * 200]))
        big = b"b" * 30000  # the queue and the batcher carry records unparsed
        q.put(big)
        q.put(exec_record(5001, 1, "/bin/after", []))
        lim = Limits(20000)
        b = Batcher("n", records.layout_id())
        p = await kafka_lib.start_producer(cfg)
        sizes, refused = [], 0
        try:
            while len(q):
                recs = q.take(2000, lim.records_bytes)
                msg = b.frame(recs)
                sizes.append(len(recs))
                try:
                    await p.send_and_wait(t, msg)
                except Exception:  # noqa: BLE001 - the one that is too large by itself
                    refused += 1
                    assert recs == [big]
                    await p.stop()  # as the collector does: its sequence is broken now
                    p = await kafka_lib.start_producer(cfg)
        finally:
            await p.stop()
        return sizes, refused

    sizes, refused = asyncio.run(fill_and_send())
    assert sum(sizes) == 302 and refused == 1 and 1 in sizes and len(sizes) > 3


def test_replication_settings_from_file_and_environment(tmp_path: Path) -> None:
    """The new settings come from flags, environment and file like every other."""
    from tetrapipe.config import load

    f = tmp_path / "c.yaml"
    f.write_text("topic-replication-factor: 3\ntopic_min_insync_replicas: 2\nkafka-max-message-bytes: 500000\n")
    cfg = load(None, {"TETRAPIPE_CONFIG": str(f), "TETRAPIPE_TOPIC_REPLICATION_FACTOR": "5"})
    assert (cfg.topic_replication_factor, cfg.topic_min_insync_replicas, cfg.kafka_max_message_bytes) == (5, 2, 500000)
    assert json.dumps(kafka_lib.replication(Config(), 1)) == "[1, 1]"
    assert kafka_lib.replication(Config(), 5) == (3, 2)


def test_rebalance_two_enrichers_kill9_keeps_parents_and_policies(kafka_pipeline: Pipeline) -> None:
    """Two raw partitions (two nodes), two enrichers in one group on Apache Kafka. Each node's
    collector sent its policy catalog and a parent exec; then one enricher is killed -9. The
    survivor takes its partition over in a rebalance, replays the state (process cache and policy
    catalog), and builds the next hook records and child execs of that node with their policy
    and parent: no "unknown policy" dead letter."""
    from bpf import records as r

    pipe = kafka_pipeline
    pipe.settings.update(topic_partitions="2")
    a = pipe.start("enricher-a", "enricher")
    b = pipe.start("enricher-b", "enricher")
    pipe.start("export-json", "export", "json")
    raws = {p: RawProducer(pipe) for p in (0, 1)}
    base = 30000 + int(time.time()) % 10000 * 2
    cat = {p: {"policy_id": 77 + p, "name": f"rebalance-p{p}", "namespace": "", "mode": "enforce",
               "state": "loaded", "hooks": [{"id": 0, "kind": "kprobe", "function_name": "sys_openat",
                                              "args": [], "message": "m", "tags": [],
                                              "selectors": [["Post"]]}]} for p in (0, 1)}
    for p in (0, 1):
        raws[p].send(r.encode_policy(time.monotonic_ns(), json.dumps(cat[p]).encode()),
                     exec_record(base + p, 1, "/bin/sh", []), partition=p)
    for p in (0, 1):
        wait_until(lambda p=p: _one(pipe, "process_exec", base + p), 40, what=f"parent exec on partition {p}")
    time.sleep(1.0)  # the state writes of both enrichers acknowledged (committed after them)
    a.signal(9)
    assert a.proc is not None
    a.proc.wait()
    hook = {p: r.encode_hook(base + 10 + p, base + 10 + p, time.monotonic_ns() + 10**9,
                             r.HookBody(77 + p, 0, 0, 0, 0, 0, [])) for p in (0, 1)}
    for p in (0, 1):
        raws[p].send(exec_record(base + 10 + p, base + p, "/bin/ls", []), hook[p], partition=p)
    for p in (0, 1):
        child = wait_until(lambda p=p: _one(pipe, "process_exec", base + 10 + p), 60,
                           what=f"child exec on partition {p} after the rebalance")
        parent = _one(pipe, "process_exec", base + p)
        assert child["parent"]["exec_id"] == parent["process"]["exec_id"]
        kp = wait_until(lambda p=p: _one(pipe, "process_kprobe", base + 10 + p), 30,
                        what=f"policy event on partition {p}")
        assert kp["policy_name"] == f"rebalance-p{p}"
    assert b.metric("tetrapipe_policy_events_unknown_policy_total") == 0
    assert b.metric("tetrapipe_deadletter_messages_total") == 0
    assert b.proc is not None and b.proc.poll() is None


def _one(pipe: Pipeline, kind: str, pid: int) -> dict | None:
    evs = [e[kind] for e in pipe.exported() if kind in e and e[kind]["process"]["pid"] == pid]
    return evs[-1] if evs else None
