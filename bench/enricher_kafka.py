"""Enricher events/s through Kafka, one enricher process, for one or more source trees run
interleaved (e.g. main's and a branch's), on the embedded broker or on Apache Kafka.

    .venv/bin/python -m bench.enricher_kafka --trees /tmp/main-tree,. --rounds 3 \\
        [--broker embedded|kafka] [--events 20000] [--cpu] [--enrichers 1,2,4]

Per run: one enricher (``python -m tetrapipe enricher`` with the tree's code: cwd and
PYTHONPATH = the tree, default options) is started and given 5 s to join its group, then the raw
topic gets the synthetic fork/exec/exit records (bench/synth.py, in 2000-record batches as the
collector frames them); events/s = events ÷ (time the last event was out − time the raw
production began), the count from the events topic's
end offset every 20 ms on Kafka (asked of the broker, not the enricher), from the enricher's
``tetrapipe_enricher_events_total`` every 200 ms on the embedded broker (whose end offsets
lag); CPU = the enricher process's user+system time
over the same span (events per CPU second). The state topic is on (the default), as in
production. No exporter runs, so the two cores are the enricher's and the broker's.
``--prefill`` isolates the enricher (bench/enricher_drain.py): the raw topic is filled and the
producer finished *before* the enricher starts; events/s and per CPU-second are taken between the
first and the last event out, with the broker's CPU and the rest of the machine's beside them.
With ``--enrichers 1,2,3`` it runs N enrichers in one group on an N-partition raw topic keyed
as the collector keys it (bench/enricher_group.py: per-enricher CPU and events, no event lost or
doubled, ``--pin`` to give each enricher one CPU, ``--cpu-quota 0.4`` to give each enricher its
own cgroup limited to 0.4 of a core: bench/cpu_quota.py).
``--cpu`` adds the Kafka-free figure of each tree (``bench.e2e.enricher_cpu``: decode, build,
Avro encode in one process). Apache Kafka comes from scripts/setup-kafka.sh's cache
(tests/kafka_cluster.py starts one KRaft node); the embedded broker is tetrapipe's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench import common
from bench.cpu_quota import parse_quota
from bench.e2e import _frames, _produce
from tetrapipe import kafka
from tetrapipe.broker import EmbeddedBroker, free_port
from tetrapipe.config import Config


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _metric(port: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return -1.0
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
               if ln.startswith(name) and ln[len(name)] in " {")


async def _count(bootstrap: str, topic: str, port: int, partitions: int = 1) -> Any:
    """How many events are out: the events topic's end offset on Apache Kafka (asked of the
    broker, every 20 ms); the enricher's ``tetrapipe_enricher_events_total`` every 200 ms on the
    embedded broker (Tansu under-reports end offsets, docs/ARCHITECTURE.md)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    if port:
        async def scrape() -> float:
            await asyncio.sleep(0.18)
            return await asyncio.to_thread(_metric, port, "tetrapipe_enricher_events_total")
        return scrape, None
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await c.start()
    tps = [TopicPartition(topic, p) for p in range(partitions)]  # made before the enrichers start

    async def offsets() -> float:
        return float(sum((await c.end_offsets(tps)).values()))
    return offsets, c


async def _watch_events(bootstrap: str, topic: str, total: int, pids: list[int], deadline: float,
                        alive: Any, port: int, partitions: int = 1) -> tuple[float, float, float, float]:
    """(time, enrichers' CPU s) when the first and when the last event was out."""
    count, c = await _count(bootstrap, topic, port, partitions)
    cpu = lambda: sum(common.cpu_seconds(p) for p in pids)  # noqa: E731
    try:
        first = done = cpu_first = cpu_done = 0.0
        while time.monotonic() < deadline and alive():
            n = await count()
            now = time.monotonic()
            if n > 0 and not first:
                first, cpu_first = now, cpu()
            if n >= total:
                done, cpu_done = now, cpu()
                break
            await asyncio.sleep(0.02)
        return first, done, cpu_first, cpu_done
    finally:
        if c is not None:
            await c.stop()


def one_run(tree: Path, bootstrap: str, n_events: int, work: Path, profile: bool = False,
            on_kafka: bool = False, n_enrichers: int = 1) -> dict[str, Any]:
    """``n_enrichers`` processes in one group on as many raw (and events) partitions, each
    partition given its node's share of the records; CPU summed over the processes."""
    work.mkdir(parents=True, exist_ok=True)
    pipe = common.Pipeline(bootstrap, work)
    pipe.settings.update({"procfs_bootstrap": "false", "log_level": "warning",
                          "topic_partitions": str(n_enrichers)})
    per_part, total = [], 0
    for i in range(n_enrichers):
        frames, n = _frames(f"{pipe.node_name}-{i}", n_events // (2 * n_enrichers))
        per_part.append(frames)
        total += n
    topics = [pipe.base["raw_topic"], pipe.base["events_topic"]]
    asyncio.run(kafka.ensure_topics(Config(kafka=bootstrap, topic_partitions=n_enrichers), topics))
    procs, logs, ports = [], [], []
    try:
        for i in range(n_enrichers):
            port = free_port()
            env = pipe.env({"metrics_address": f"127.0.0.1:{port}"})
            env["PYTHONPATH"] = str(tree)
            log = open(work / f"enricher{i}-{tree.name}.log", "ab")  # noqa: SIM115
            logs.append(log)
            ports.append(port)
            procs.append(subprocess.Popen([sys.executable, "-m", "tetrapipe", "enricher"], cwd=tree, env=env,
                                          stdout=log, stderr=subprocess.STDOUT))
        for proc, port in zip(procs, ports, strict=True):
            common.wait_until(lambda p=proc, q=port: _ready(q) or p.poll() is not None, 90, what="enricher ready")
        time.sleep(5 + 3 * (n_enrichers > 1))  # the group settles, one partition each (3 s initial delay)
        spy = common.PySpy(procs[0].pid, work / "enricher.pyspy").start() if profile else None
        pids = [p.pid for p in procs]
        t0, cpu0 = time.monotonic(), sum(common.cpu_seconds(p) for p in pids)
        asyncio.run(_produce(bootstrap, pipe.base["raw_topic"], per_part,
                             [f"{pipe.node_name}-{i}".encode() for i in range(n_enrichers)]))
        first, done, cpu_first, cpu_done = asyncio.run(_watch_events(
            bootstrap, pipe.base["events_topic"], total, pids, time.monotonic() + 120 + total / 500,
            lambda: all(p.poll() is None for p in procs), 0 if on_kafka or n_enrichers > 1 else ports[0],
            n_enrichers))
        if not done:
            raise RuntimeError(f"enrichers of {tree} did not make {total} events; see {work}")
        row = {"tree": str(tree), "enrichers": n_enrichers, "events": total, "seconds": done - t0,
               "events_per_s": total / (done - t0),
               "events_per_cpu_s": total / max(cpu_done - cpu0, 1e-9)}
        if spy is not None:
            row["py_spy"] = spy.stop(top=20)
        return row
    finally:
        common.stop_processes(procs, logs)


def cpu_only(tree: Path, n_events: int) -> float:
    code = ("from bench import e2e; import json; "
            f"print(json.dumps(e2e.enricher_cpu({n_events}, profile=False)['enricher_events_per_s_cpu']))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                         capture_output=True, text=True, check=True, timeout=600)
    return float(out.stdout.strip().splitlines()[-1])


def start_broker(kind: str, work: Path, config: dict[str, str] | None = None) -> tuple[str, Any]:
    if kind == "embedded":
        b = EmbeddedBroker(log_path=work / "broker.log").start()
        return b.bootstrap, b
    from kafka_cluster import KafkaCluster, unavailable_reason  # tests/, on the path by bench.common

    why = unavailable_reason()
    if why:
        raise SystemExit(f"no Apache Kafka: {why} (run scripts/setup-kafka.sh)")
    c = KafkaCluster(work / "kafka", broker_config=dict(config or {})).start()
    return c.bootstrap, c


def counts_above_one(enrichers: str) -> bool:
    return any(int(n) > 1 for n in enrichers.split(","))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trees", default=".", help="comma list of source trees, run in this order each round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--broker", choices=("embedded", "kafka"), default="embedded")
    p.add_argument("--cpu", action="store_true", help="also the Kafka-free figure of each tree")
    p.add_argument("--enrichers", default="1",
                   help="comma list of enricher counts (N processes on N partitions), each run every round")
    p.add_argument("--py-spy", action="store_true", help="profile each enricher (py-spy record, from outside)")
    p.add_argument("--prefill", action="store_true",
                   help="enrichers draining a raw topic filled before they start (Apache Kafka only); "
                        "with an --enrichers list above 1, every count runs as a group (bench/enricher_group.py)")
    p.add_argument("--cpu-quota", metavar="CORES",
                   help="with --prefill: each enricher in its own cgroup limited to CORES of CPU (e.g. 0.4: "
                        "N enrichers get N x 0.4 cores, the broker and the bench the rest; bench/cpu_quota.py); "
                        "every count then runs as a group")
    p.add_argument("--pin", action="store_true",
                   help="with --prefill and --enrichers above 1: enricher i runs on CPU i mod cores (taskset)")
    args = p.parse_args(argv)
    if args.prefill and args.broker != "kafka":
        p.error("--prefill measures on Apache Kafka: --broker kafka")
    if args.pin and not (args.prefill and counts_above_one(args.enrichers)):
        p.error("--pin pins the enrichers of --prefill --enrichers N (N above 1)")
    quota = None
    if args.cpu_quota is not None:
        if not args.prefill:
            p.error("--cpu-quota limits the enrichers of --prefill")
        try:
            quota = parse_quota(args.cpu_quota)
        except ValueError as e:
            p.error(str(e))
    as_group = args.prefill and (counts_above_one(args.enrichers) or quota is not None)
    trees = [Path(t).resolve() for t in args.trees.split(",")]
    counts = [int(n) for n in args.enrichers.split(",")]
    if max(counts) > 1 and args.broker != "kafka":
        p.error("--enrichers above 1 counts the events topic's end offsets: --broker kafka")
    work = Path(tempfile.mkdtemp(prefix="tetrapipe-bench-enricher-"))
    # a group of N enrichers started at once: the broker waits for the members of a new group
    # (Kafka's default 3 s; tests/kafka_cluster.py sets 0; 10 s here, as N Python processes
    # starting on 2 busy cores took up to 7.5 s to import), else the first one takes every
    # partition and a rebalance follows in the middle of the drain (partitions_assigned shows it)
    group = {"group.initial.rebalance.delay.ms": "10000"} if as_group else {}
    bootstrap, broker = start_broker(args.broker, work, group)
    runs: list[dict[str, Any]] = []
    try:
        for r in range(args.rounds):
            for n in counts:
                for tree in trees:
                    if as_group:
                        from bench.enricher_group import group_run

                        row = group_run(tree, bootstrap, args.events, work / f"r{r}-{n}-{tree.name}",
                                        broker.nodes[0].proc.pid, n, args.pin, quota)
                    elif args.prefill:
                        from bench.enricher_drain import prefilled_run

                        row = prefilled_run(tree, bootstrap, args.events, work / f"r{r}-{tree.name}",
                                            broker.nodes[0].proc.pid, args.py_spy)
                    else:
                        row = one_run(tree, bootstrap, args.events, work / f"r{r}-{n}-{tree.name}",
                                      args.py_spy, args.broker == "kafka", n)
                    row["round"] = r
                    row["load1"] = os.getloadavg()[0]
                    if args.cpu and n == counts[0]:
                        row["cpu_only_events_per_cpu_s"] = cpu_only(tree, args.events)
                    runs.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        broker.stop()
    summary = {}
    for tree in trees:
        for n in counts:
            mine = [r for r in runs if r["tree"] == str(tree) and r["enrichers"] == n]
            name = str(tree) if len(counts) == 1 else f"{tree} x{n}"
            summary[name] = {k: round(statistics.median(r[k] for r in mine if k in r))
                             for k in ("events_per_s", "events_per_cpu_s", "cpu_only_events_per_cpu_s",
                                       "broker_cpu_us_per_event", "others_cpu_pct",
                                       "ready_to_last_events_per_s")
                             if k in mine[0]}
            summary[name].update({k: sum(r[k] for r in mine) for k in ("lost", "doubled", "orphans")
                                  if k in mine[0]})  # over every round: any is a fault
    print(json.dumps({"broker": args.broker, "events": args.events, "cpu_quota_cores": quota, "median": summary,
                      "load1_range": [min(r["load1"] for r in runs), max(r["load1"] for r in runs)]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
