"""`tetrapipe export fluentd` against the real broker and a Forward Protocol v1 receiver: tag,
record and nanosecond time of every event; acks gate the Kafka commits; an outage (with an
exporter restart in the middle) is buffered on disk and loses nothing."""

from __future__ import annotations

import asyncio
import signal

from fluent_receiver import FluentReceiver
from harness import Pipeline, wait_until
from sink_events import cfg_of, make_event, produce_sync, seq_of

from exporters import protojson
from schemas import codec
from tetrapipe import kafka
from tetrapipe.broker import free_port
from tetrapipe.config import Config


def _committed(cfg: Config, group: str) -> int:
    """The group's committed offset on partition 0 of the events topic (0 when none)."""
    from aiokafka.structs import TopicPartition

    async def run() -> int:
        c = kafka.make_consumer(cfg, group, [])
        await c.start()
        try:
            return await c.committed(TopicPartition(cfg.events_topic, 0)) or 0
        finally:
            await c.stop()

    return asyncio.run(run())


def _events(node: str, start: int, n: int) -> list[dict]:
    kinds = ["process_exec", "process_exit", "process_kprobe"]
    return [make_event(i, node, kind=kinds[i % 3], policy="p" if i % 3 == 2 else "",
                       function="__x64_sys_write" if i % 3 == 2 else "")
            for i in range(start, start + n)]


def test_every_event_arrives_with_tag_record_and_ns_time(pipeline: Pipeline) -> None:
    cfg = cfg_of(pipeline.base)
    events = _events(pipeline.node_name, 0, 300)
    expected = {seq_of(e): e for e in (codec.decode("event", codec.encode("event", e)) for e in events)}
    with FluentReceiver() as rx:
        svc = pipeline.start("export-fluentd", "export", "fluentd",
                             extra={"fluentd_address": rx.address, "fluentd_tag_prefix": "sec"})
        produce_sync(cfg, events)
        wait_until(lambda: len({seq_of(e.record) for e in rx.snapshot()}) == 300, 30,
                   what="300 events at the receiver")
        got = rx.snapshot()
        wait_until(lambda: _committed(cfg, "tetrapipe-export-fluentd") == 300, 10, what="commit")
    for r in got:
        ev = expected[seq_of(r.record)]
        assert r.tag == f"sec.{protojson.event_type(ev)}"
        assert r.record == protojson.to_protojson(ev)
        assert r.time_ns == ev["time"]  # nanoseconds survive (EventTime)
        assert r.mode == "PackedForward" and r.chunk
    assert {r.tag for r in got} == {"sec.process_exec", "sec.process_exit", "sec.process_kprobe"}
    assert svc.metric("tetrapipe_events_exported_total", sink="fluentd") >= 300
    assert svc.metric("tetrapipe_fluentd_buffer_events") == 0


def test_compressed_packed_forward(pipeline: Pipeline) -> None:
    cfg = cfg_of(pipeline.base)
    with FluentReceiver() as rx:
        pipeline.start("export-fluentd", "export", "fluentd",
                       extra={"fluentd_address": rx.address, "fluentd_compress": "true"})
        produce_sync(cfg, _events(pipeline.node_name, 0, 50))
        wait_until(lambda: rx.count() >= 50, 30, what="50 events")
        assert {e.mode for e in rx.snapshot()} == {"CompressedPackedForward"}
        assert sorted({seq_of(e.record) for e in rx.snapshot()}) == list(range(50))


def test_unacknowledged_chunks_are_resent_and_not_committed(pipeline: Pipeline) -> None:
    cfg = cfg_of(pipeline.base)
    rx = FluentReceiver()
    rx.send_acks = False  # fluentd that takes the data but never confirms it
    rx.start()
    try:
        svc = pipeline.start("export-fluentd", "export", "fluentd",
                             extra={"fluentd_address": rx.address, "fluentd_ack_timeout": "1"})
        produce_sync(cfg, _events(pipeline.node_name, 0, 40))
        wait_until(lambda: rx.count() >= 80, 20, what="the same events sent twice (no ack)")
        assert svc.metric("tetrapipe_events_exported_total", sink="fluentd") == 0
        assert svc.metric("tetrapipe_fluentd_buffer_events") == 40
        assert _committed(cfg, "tetrapipe-export-fluentd") == 0
        rx.send_acks = True
        wait_until(lambda: svc.metric("tetrapipe_events_exported_total", sink="fluentd") == 40, 20,
                   what="40 acknowledged")
        wait_until(lambda: _committed(cfg, "tetrapipe-export-fluentd") == 40, 10, what="commit")
    finally:
        rx.stop()


def test_outage_buffers_on_disk_survives_exporter_restart_and_loses_nothing(pipeline: Pipeline) -> None:
    cfg = cfg_of(pipeline.base)
    port = free_port()
    extra = {"fluentd_address": f"127.0.0.1:{port}", "fluentd_buffer_dir": str(pipeline.tmp / "fbuf")}
    svc = pipeline.start("export-fluentd", "export", "fluentd", extra=extra)
    produce_sync(cfg, _events(pipeline.node_name, 0, 200))
    wait_until(lambda: svc.metric("tetrapipe_fluentd_buffer_events") == 200, 20, what="200 buffered")
    assert svc.metric("tetrapipe_fluentd_buffer_bytes") > 0
    assert svc.metric("tetrapipe_export_errors_total", sink="fluentd") > 0
    assert _committed(cfg, "tetrapipe-export-fluentd") == 0  # nothing acked, nothing committed
    assert list((pipeline.tmp / "fbuf").glob("*.chunk"))

    svc.signal(signal.SIGKILL)  # the worst stop: the buffer and Kafka must cover it
    svc.proc.wait()
    svc = pipeline.start("export-fluentd-2", "export", "fluentd", extra=extra)
    produce_sync(cfg, _events(pipeline.node_name, 200, 100))
    with FluentReceiver(port) as rx:
        wait_until(lambda: {seq_of(e.record) for e in rx.snapshot()} >= set(range(300)), 30,
                   what="all 300 events after fluentd returns")
        wait_until(lambda: _committed(cfg, "tetrapipe-export-fluentd") == 300, 15, what="commit to 300")
        wait_until(lambda: svc.metric("tetrapipe_fluentd_buffer_events") == 0, 10, what="buffer drained")
    assert not list((pipeline.tmp / "fbuf").glob("*.chunk"))


def test_lost_buffer_chunk_stops_commits_so_kafka_has_its_events(tmp_path) -> None:  # noqa: ANN001
    """A chunk of this run that can no longer be read from disk is dropped and counted, and from
    then on no Kafka offset is committed, so a later ack cannot move the group past its events."""
    from exporters.fluentd import FluentdSink

    port = free_port()
    cfg = Config(fluentd_address=f"127.0.0.1:{port}", fluentd_buffer_dir=str(tmp_path / "buf"),
                 fluentd_ack_timeout=2)

    async def run() -> tuple[dict[str, int], dict[str, int], int, int]:
        sink = FluentdSink(cfg)
        await sink.start()
        try:
            await sink.put(_events("n", 0, 5), {"t/0": 5})  # fluentd is down: stays on disk
            await sink.put(_events("n", 5, 5), {"t/0": 10})
            await asyncio.sleep(0.3)
            first = min(sink.buffer.dir.glob("*.chunk"))
            first.write_bytes(b"\x93 cut short")  # the disk lost the first chunk
            with FluentReceiver(port) as rx:
                for _ in range(100):
                    if not len(sink.buffer):
                        break
                    await asyncio.sleep(0.1)
                got = rx.count()
            # sink._acked: where the acks alone would put the group (past the lost chunk)
            return sink.committable(), dict(sink._acked), sink.buffer.dropped_chunks, got
        finally:
            await sink.stop()

    frozen, acked, dropped, got = asyncio.run(run())
    assert dropped == 1 and got == 5  # the second chunk was delivered, the first is gone
    assert frozen == {}  # ...so nothing is committed: a restart reads offsets 0..4 from Kafka again
    assert acked == {"t/0": 10}
