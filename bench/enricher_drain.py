"""One enricher draining a raw topic that was filled before it started (``python -m
bench.enricher_kafka --broker kafka --prefill``): the measurement that isolates the enricher.

Per run: the raw topic (1 partition) gets all synthetic fork/exec/exit records (bench/synth.py,
2000-record batches as the collector frames them) and the producer is stopped; only then is the
enricher started (the tree's ``python -m tetrapipe enricher``, default options, state topic on).
The window opens when the enricher answers /healthz (polled every 10 ms: its imports are done
and its consumer started; the group join and the state replay fall inside) and closes when the
events topic's end offset, asked of the broker every 20 ms, reaches the number of events:
events/s = events ÷ the window, events per CPU-second = events ÷ the enricher's user+system time
in it. Beside them, in the same window: the broker JVM's CPU µs per event, and the share of the
machine's CPU used by everything else (other engineers' work: /proc/stat busy time − enricher −
broker), with the load average. ``first_to_last_events_per_s`` (from the first event seen out)
is also given; it flatters (work done before the first event was seen counts inside).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.e2e import _frames, _produce
from bench.enricher_kafka import _ready
from tetrapipe import kafka
from tetrapipe.broker import free_port
from tetrapipe.config import Config


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(f[:8]) - idle) / tick, sum(f[:8]) / tick


async def _watch(bootstrap: str, topic: str, total: int, pids: dict[str, int], alive: Any,
                 deadline: float, port: int) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await c.start()
    tp = TopicPartition(topic, 0)

    while not _ready(port):  # the enricher's imports are done, its consumer started
        if not alive() or time.monotonic() > deadline:
            return {"ready": None, "first": None, "done": None}
        await asyncio.sleep(0.01)

    def snap(n: int) -> dict[str, float]:
        busy, _ = machine_busy_s()
        return {"t": time.monotonic(), "n": n, "busy": busy,
                **{k: common.cpu_seconds(p) for k, p in pids.items()}}
    try:
        ready, first = snap(0), None
        while time.monotonic() < deadline and alive():
            n = (await c.end_offsets([tp]))[tp]
            if n > 0 and first is None:
                first = snap(n)
            if n >= total:
                return {"ready": ready, "first": first, "done": snap(n)}
            await asyncio.sleep(0.02)
        return {"ready": ready, "first": first, "done": None}
    finally:
        await c.stop()


def prefilled_run(tree: Path, bootstrap: str, n_events: int, work: Path, broker_pid: int,
                  profile: bool = False) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    pipe = common.Pipeline(bootstrap, work)
    pipe.settings.update({"procfs_bootstrap": "false", "log_level": "warning", "topic_partitions": "1"})
    frames, total = _frames(f"{pipe.node_name}-0", n_events // 2)
    topics = [pipe.base["raw_topic"], pipe.base["events_topic"]]
    asyncio.run(kafka.ensure_topics(Config(kafka=bootstrap, topic_partitions=1), topics))
    asyncio.run(_produce(bootstrap, pipe.base["raw_topic"], [frames], [f"{pipe.node_name}-0".encode()]))
    port = free_port()
    env = pipe.env({"metrics_address": f"127.0.0.1:{port}"})
    env["PYTHONPATH"] = str(tree)
    with open(work / f"enricher-{tree.name}.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tetrapipe", "enricher"], cwd=tree, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        spy = common.PySpy(proc.pid, work / "enricher.pyspy").start() if profile else None
        try:
            load = os.getloadavg()[0]
            got = asyncio.run(_watch(bootstrap, pipe.base["events_topic"], total,
                                     {"enricher": proc.pid, "broker": broker_pid},
                                     lambda: proc.poll() is None, time.monotonic() + 120 + total / 500, port))
            ready, first, done = got["ready"], got["first"], got["done"]
            if done is None or first is None:
                raise RuntimeError(f"the enricher of {tree} did not make {total} events; see {work}")
            n, secs = total, done["t"] - ready["t"]
            enr, brk = done["enricher"] - ready["enricher"], done["broker"] - ready["broker"]
            busy = done["busy"] - ready["busy"]
            ncpu = os.cpu_count() or 1
            row = {"tree": str(tree), "enrichers": 1, "mode": "prefilled", "events": total,
                   "seconds": secs, "events_per_s": n / secs,
                   "first_to_last_events_per_s": (done["n"] - first["n"]) / max(done["t"] - first["t"], 1e-9),
                   "events_per_cpu_s": n / max(enr, 1e-9), "enricher_cpu_share_pct": 100 * enr / secs,
                   "broker_cpu_us_per_event": 1e6 * brk / max(n, 1),
                   "others_cpu_pct": 100 * max(busy - enr - brk, 0.0) / (secs * ncpu),
                   "load1_at_start": load}
            if spy is not None:
                row["py_spy"] = spy.stop(top=25)
            return row
        finally:
            common.stop_processes([proc])
