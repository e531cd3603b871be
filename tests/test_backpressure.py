"""Backpressure: a sink that stalls holds no unbounded memory. The fluentd exporter faces a
fluentd that accepts connections and never reads; its disk buffer fills to its bound, then the
exporter stops reading Kafka (the events wait in the topic, as consumer lag). Tens of MB more
events arrive meanwhile and the exporter's resident memory barely moves; when fluentd reads
again, every event arrives: nothing dropped, nothing dead-lettered. (The collector's side of the
same promise, a stalled broker, is tests/test_spool.py and the crash suite's broker outage.)"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

from fluent_receiver import FluentReceiver
from harness import Pipeline, wait_until
from sink_events import cfg_of, make_event, produce, seq_of

from tetrapipe.config import Config

ARG_BYTES = 4000  # ~4 KB per event
BUFFER_MAX = 1_000_000


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _events(node: str, start: int, n: int) -> list[dict]:
    out = []
    for i in range(start, start + n):
        ev = make_event(i, node)
        ev["process_exec"]["process"]["cwd"] = "/" + "c" * ARG_BYTES  # bulk; arguments keep seq=<n>
        out.append(ev)
    return out


def _produce(cfg: Config, events: list[dict]) -> None:
    async def run() -> None:
        for i in range(0, len(events), 2000):
            await produce(cfg, events[i:i + 2000])
    asyncio.run(run())


def test_stalled_fluentd_holds_bounded_memory_and_loses_nothing(pipeline: Pipeline) -> None:
    cfg = cfg_of(pipeline.base)
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    stalled.bind(("127.0.0.1", 0))
    stalled.listen(8)  # connections complete in the backlog; nothing is ever read
    port = stalled.getsockname()[1]
    try:
        svc = pipeline.start("export-fluentd", "export", "fluentd", extra={
            "fluentd_address": f"127.0.0.1:{port}", "fluentd_ack_timeout": "2",
            "fluentd_buffer_max_bytes": str(BUFFER_MAX)})
        assert svc.proc is not None
        pid = svc.proc.pid
        first, second = 4000, 12000
        _produce(cfg, _events(pipeline.node_name, 0, first))  # ~16 MB
        wait_until(lambda: svc.metric("tetrapipe_fluentd_buffer_full_total") > 0, 60,
                   what="the disk buffer to fill")
        time.sleep(3)  # the exporter settles: one batch in hand, the consumer's prefetch full
        rss_full = _rss_kb(pid)
        buffered = svc.metric("tetrapipe_fluentd_buffer_bytes")
        assert 0 < buffered <= BUFFER_MAX
        _produce(cfg, _events(pipeline.node_name, first, second))  # ~48 MB more while stalled
        time.sleep(5)
        rss_after = _rss_kb(pid)
        growth_mb = (rss_after - rss_full) / 1024
        print(f"exporter RSS with a stalled fluentd: {rss_full / 1024:.1f} MiB when the buffer was "
              f"full, {rss_after / 1024:.1f} MiB after 48 MB more events (+{growth_mb:.1f} MiB)")
        assert growth_mb < 16, f"exporter memory grew by {growth_mb:.1f} MiB with a stalled sink"
        assert svc.metric("tetrapipe_fluentd_buffer_bytes") <= BUFFER_MAX
        assert svc.metric("tetrapipe_events_exported_total", sink="fluentd") == 0
    finally:
        stalled.close()  # the stalled fluentd goes away; a working one takes its port
    with FluentReceiver(port=port) as rx:
        total = first + second
        wait_until(lambda: len({seq_of(r.record) for r in rx.snapshot()}) == total, 180, interval=1,
                   what=f"all {total} events at fluentd once it reads again")
    assert svc.proc.poll() is None, svc.log()
    assert svc.metric("tetrapipe_fluentd_buffer_dropped_events_total") == 0
    assert svc.metric("tetrapipe_deadletter_messages_total") == 0
