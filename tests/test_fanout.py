"""Issue 5 check: the three exporters are separate consumer groups on the real broker. With
fluentd (the loopback Forward Protocol receiver) down for 30 s, the JSON and Prometheus exporters
keep exporting every wave of events, the fluentd exporter commits nothing past what was
acknowledged, and once fluentd is back it catches up without losing an event."""

from __future__ import annotations

import asyncio
import time

from fluent_receiver import FluentReceiver
from harness import Pipeline, wait_until
from sink_events import cfg_of, make_event, produce_sync, seq_of

from tetrapipe import kafka
from tetrapipe.config import Config

OUTAGE_S = 30
WAVE = 100


def _committed(cfg: Config) -> dict[str, int]:
    from aiokafka.structs import TopicPartition

    async def run() -> dict[str, int]:
        out = {}
        for sink in ("json", "prometheus", "fluentd"):
            c = kafka.make_consumer(cfg, f"tetrapipe-export-{sink}", [])
            await c.start()
            try:
                out[sink] = await c.committed(TopicPartition(cfg.events_topic, 0)) or 0
            finally:
                await c.stop()
        return out

    return asyncio.run(run())


def test_one_sink_down_others_continue_and_it_catches_up(pipeline: Pipeline) -> None:
    cfg = cfg_of(pipeline.base)
    node = pipeline.node_name
    rx = FluentReceiver().start()
    fluentd = pipeline.start("export-fluentd", "export", "fluentd", extra={"fluentd_address": rx.address})
    prom = pipeline.start("export-prometheus", "export", "prometheus")
    pipeline.start("export-json", "export", "json")

    def json_seqs() -> set[int]:
        return {seq_of(e) for e in pipeline.exported()}

    def fluent_seqs() -> set[int]:
        return {seq_of(e.record) for e in rx.snapshot()}

    def all_up_to(n: int) -> None:
        want = set(range(n))
        wait_until(lambda: json_seqs() == want, 30, what=f"json has {n}")
        wait_until(lambda: prom.metric("tetrapipe_events_total", node_name=node) == n, 30,
                   what=f"prometheus counted {n}")

    produce_sync(cfg, [make_event(i, node) for i in range(WAVE)])
    all_up_to(WAVE)
    wait_until(lambda: fluent_seqs() == set(range(WAVE)), 30, what="fluentd has the first wave")
    wait_until(lambda: _committed(cfg)["fluentd"] == WAVE, 15, what="fluentd group committed wave 1")

    rx.stop()  # fluentd goes away
    down_at = time.monotonic()
    sent = WAVE
    while time.monotonic() - down_at < OUTAGE_S:
        produce_sync(cfg, [make_event(i, node) for i in range(sent, sent + WAVE)])
        sent += WAVE
        all_up_to(sent)  # the other two sinks keep exporting while fluentd is down
        time.sleep(max(0.0, min(8.0, OUTAGE_S - (time.monotonic() - down_at))))
    assert time.monotonic() - down_at >= OUTAGE_S
    wait_until(lambda: (c := _committed(cfg))["json"] == sent and c["prometheus"] == sent, 10,
               what="json and prometheus groups committed everything")
    assert _committed(cfg)["fluentd"] == WAVE  # nothing committed past what fluentd acknowledged
    # the outage is on disk (the last wave may still be on its way into the buffer)
    wait_until(lambda: fluentd.metric("tetrapipe_fluentd_buffer_events") == sent - WAVE, 15,
               what=f"{sent - WAVE} events buffered on disk")
    assert fluentd.metric("tetrapipe_events_exported_total", sink="fluentd") == WAVE
    assert fluent_seqs() == set(range(WAVE))

    rx.start()  # fluentd is back on the same port
    wait_until(lambda: fluent_seqs() == set(range(sent)), 60, what=f"fluentd caught up to {sent}")
    wait_until(lambda: _committed(cfg)["fluentd"] == sent, 15, what="fluentd group committed all")
    assert fluentd.metric("tetrapipe_fluentd_buffer_events") == 0
    assert fluentd.metric("tetrapipe_export_errors_total", sink="fluentd") > 0
    assert fluentd.metric("tetrapipe_fluentd_buffer_dropped_events_total") == 0
    rx.stop()
    # json and prometheus never saw an error, and exported each event once
    assert len(pipeline.exported()) == sent
    assert prom.metric("tetrapipe_export_errors_total", sink="prometheus") == 0
