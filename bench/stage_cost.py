"""CPU µs per event of the stages after the collector (enricher, JSON exporter, broker) at one fixed
event rate, by how often raw batches arrive: the per-round cost the exec loop's events pay
(bench/overhead.py's per-stage figures), without the exec loop's own noise.

    .venv/bin/python -m bench.stage_cost --intervals 10,50 --rate 3000 --seconds 10 --rounds 2

Per run: a pipeline of its own (the embedded broker, as bench/overhead.py uses; this tree's
enricher and JSON exporter, default options; for another tree, run its copy of this file), then
synthetic fork/exec/exit records (bench/synth.py, framed by one collector Batcher) produced as
one raw batch every ``interval`` ms, ``rate`` events/s, for ``seconds``. CPU (user+system) of
each stage from the first batch until the exporter has written every event, divided by the
events. 10 ms is how often the collector cut batches at an exec loop's rate before batches
filled for batch_max_ms (50 ms). The intervals rotate each round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from bench import common
from bench.synth import ProcessStream
from bpf import records
from collector.batcher import Batcher
from tetrapipe.broker import EmbeddedBroker


async def _paced(bootstrap: str, topic: str, key: bytes, frames: list[bytes], interval: float) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await p.start()
    try:
        t0 = time.monotonic()
        for i, f in enumerate(frames):
            await asyncio.sleep(max(0.0, t0 + i * interval - time.monotonic()))
            await p.send_and_wait(topic, f, key=key)
    finally:
        await p.stop()


def one_run(work: Path, rate: int, seconds: float, interval_ms: int) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    broker = EmbeddedBroker(log_path=work / "broker.log").start()
    pipe = common.BenchPipeline(broker.bootstrap, work, broker=broker)
    pipe.settings.update({"procfs_bootstrap": "false", "log_level": "warning"})
    try:
        enr = pipe.start("enricher", "enricher")
        exp = pipe.start("export-json", "export", "json")
        time.sleep(2)  # the groups settle
        n_batches = int(seconds * 1000 / interval_ms)
        per_batch = max(1, round(rate * interval_ms / 1000 / 2))  # processes: 2 events each
        stream, b = ProcessStream(), Batcher(pipe.node_name, records.layout_id())
        recs = [stream.parent_record()]
        frames = []
        for _ in range(n_batches):
            recs += list(stream.processes(per_batch))
            frames.append(b.frame(recs))
            recs = []
        total = 2 * per_batch * n_batches + 1
        pids = {"enricher": enr.proc.pid, "export-json": exp.proc.pid, "broker": pipe.broker_pid}
        cpu0 = {k: common.cpu_seconds(p) for k, p in pids.items()}
        t0 = time.monotonic()
        asyncio.run(_paced(pipe.bootstrap, pipe.base["raw_topic"], pipe.node_name.encode(), frames,
                           interval_ms / 1000))
        common.wait_until(lambda: exp.metric("tetrapipe_events_exported_total", sink="json") >= total,
                          60 + seconds, what="every event exported")
        row: dict[str, Any] = {"tree": str(common.REPO), "interval_ms": interval_ms, "events": total,
                               "seconds": time.monotonic() - t0}
        for k, p in pids.items():
            row[f"cpu_us_per_event_{k}"] = 1e6 * (common.cpu_seconds(p) - cpu0[k]) / total
        return row
    finally:
        pipe.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--intervals", default="10,50", help="ms between raw batches, comma list")
    p.add_argument("--rate", type=int, default=3000, help="events/s")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    intervals = [int(x) for x in args.intervals.split(",")]
    work = Path(tempfile.mkdtemp(prefix="tetrapipe-bench-stage-"))
    runs = []
    for r in range(args.rounds):
        for interval in intervals[r % len(intervals):] + intervals[:r % len(intervals)]:
            load = os.getloadavg()[0]
            row = one_run(work / f"r{r}-{interval}", args.rate, args.seconds, interval)
            row.update(round=r, load1_at_start=load)
            runs.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for interval in intervals:
        mine = [x for x in runs if x["interval_ms"] == interval]
        summary[f"{common.REPO} @{interval}ms"] = {k: round(statistics.median(x[k] for x in mine))
                                                    for k in mine[0] if k.startswith("cpu_us")}
    print(json.dumps({"rate": args.rate, "seconds": args.seconds, "median": summary}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
