"""Malformed messages from a foreign producer on the events topic, between valid events: the JSON
and fluentd exporters write every valid event, send each bad message (original bytes, the error
in headers) to the dead-letter topic exactly once per exporter, count it, and go on. Messages
with forged sequence headers are exported like any other (the audit ignores stamps it cannot
read)."""

from __future__ import annotations

import asyncio

from fluent_receiver import FluentReceiver
from harness import Pipeline, wait_until
from sink_events import cfg_of, make_event, seq_of

from schemas import codec
from tetrapipe import kafka
from tetrapipe.config import Config

BAD = [
    b"",
    b"not avro at all",
    b'{"process_exec": {"process": {"binary": "/bin/sh"}}}',  # JSON, not Avro
    codec.SINGLE_OBJECT_MAGIC + b"\x00" * 8 + b"\x02\x04",  # unknown schema fingerprint
    codec.encode("event", make_event(999, "n"))[:-7],  # cut short
    b"\x00\x00\x00\x00\x07garbage",  # Confluent framing, no registry configured
]


async def _produce(cfg: Config, node: str) -> None:
    await kafka.ensure_topics(cfg, [cfg.events_topic, cfg.deadletter_topic])
    p = await kafka.start_producer(cfg)
    try:
        n = 0
        for bad in BAD:
            for _ in range(2):  # valid events around every bad message
                await p.send_and_wait(cfg.events_topic, codec.encode("event", make_event(n, node)), key=b"k")
                n += 1
            await p.send_and_wait(cfg.events_topic, bad, key=b"k")
        forged = [("tetrapipe-producer", b"\xff\xfe"), ("tetrapipe-seq", b"-1e9999")]
        await p.send_and_wait(cfg.events_topic, codec.encode("event", make_event(n, node)), key=b"k",
                              headers=forged)
    finally:
        await p.stop()


async def _dead_letters(cfg: Config) -> list[tuple[bytes, dict[str, bytes]]]:
    c = kafka.make_consumer(cfg, f"dl-reader-{id(cfg)}", [cfg.deadletter_topic])
    await c.start()
    out = []
    try:
        for _ in range(10):
            got = await c.getmany(timeout_ms=500)
            for msgs in got.values():
                out += [(m.value, dict(m.headers)) for m in msgs]
    finally:
        await c.stop()
    return out


def test_foreign_garbage_goes_to_dead_letters(pipeline: Pipeline) -> None:
    cfg = cfg_of(pipeline.base)
    valid = 2 * len(BAD) + 1
    with FluentReceiver() as rx:
        json_ex = pipeline.start("export-json", "export", "json")
        fluent_ex = pipeline.start("export-fluentd", "export", "fluentd", extra={"fluentd_address": rx.address})
        asyncio.run(_produce(cfg, pipeline.node_name))
        wait_until(lambda: len(pipeline.exported()) >= valid, 30, what="valid events in the JSON export")
        wait_until(lambda: len({seq_of(r.record) for r in rx.snapshot()}) >= valid, 30,
                   what="valid events at fluentd")
        for svc in (json_ex, fluent_ex):
            wait_until(lambda s=svc: s.metric("tetrapipe_deadletter_messages_total") == len(BAD), 30,
                       what=f"{svc.name} counting every bad message")
    assert sorted(seq_of(e) for e in pipeline.exported()) == list(range(valid))
    letters = asyncio.run(_dead_letters(cfg))
    for stage in ("export-json", "export-fluentd"):
        mine = [(v, h) for v, h in letters if h.get("tetrapipe-stage") == stage.encode()]
        assert sorted(v for v, _ in mine) == sorted(BAD), stage  # original bytes, once each
        assert all(h.get("tetrapipe-error") for _, h in mine)
    for svc in (json_ex, fluent_ex):
        assert svc.proc is not None and svc.proc.poll() is None, svc.log()


def test_dead_letter_waits_out_a_broker_outage(tmp_path, caplog) -> None:  # noqa: ANN001
    """A dead letter written while the broker does not answer is sent again until acknowledged
    (the exporter commits past the bad message only after that), and is counted once."""
    from tetrapipe.broker import EmbeddedBroker
    from tetrapipe.metrics import DEAD_LETTERS

    async def run(broker: EmbeddedBroker, cfg: Config) -> list:
        await kafka.ensure_topics(cfg, [cfg.deadletter_topic])
        p = await kafka.start_producer(cfg, request_timeout_ms=1500)
        try:
            broker.pause()
            loop = asyncio.get_running_loop()
            loop.call_later(10.0, broker.resume)  # several request timeouts: refused at least once, even loaded
            before = DEAD_LETTERS.labels(stage="test")._value.get()
            await asyncio.wait_for(kafka.send_dead_letter(p, cfg, "test", b"bad", "why", b"k", "t/0/1"), 60)
            assert DEAD_LETTERS.labels(stage="test")._value.get() == before + 1
        finally:
            broker.resume()
            await p.stop()
        return await _dead_letters(cfg)

    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        cfg = Config(kafka=broker.bootstrap, deadletter_topic="t.dl")
        letters = asyncio.run(run(broker, cfg))
    mine = [v for v, h in letters if h.get("tetrapipe-stage") == b"test"]
    assert mine and set(mine) == {b"bad"}  # at least once (a timed-out request may land too)
    assert "dead letter not acknowledged" in caplog.text  # the outage really refused it
