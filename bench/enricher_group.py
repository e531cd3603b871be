"""N enrichers in one consumer group draining an N-partition raw topic filled before they start
(``python -m bench.enricher_kafka --broker kafka --prefill --enrichers 1,2,3``): does the
enricher scale with its processes, and does each process keep its efficiency as N grows.

Per run: N synthetic nodes (bench/synth.py: fork/exec/exit of short-lived processes under one
parent each, 2000-record batches as the collector frames them) are written to a fresh raw topic
of N partitions **the way the collector writes them**: key = node name, partition chosen by the
producer's default (murmur2) partitioner, so one node's records, i.e. each process's fork, exec
and exit and its parent, stay in one partition and are handled by one enricher. The node names
are picked so that the N nodes land on N different partitions (with real nodes the spread is
whatever their names hash to). The producer is stopped, then the N enrichers are started at once
(the tree's ``python -m tetrapipe enricher``, default options, state topic on, events topic of
N partitions), optionally each pinned to one CPU (``taskset``, enricher i on CPU i mod cores),
or each given the same fixed CPU budget in its own cgroup (``--cpu-quota 0.4``:
bench/cpu_quota.py; the quota, the cgroup setting and how often it throttled are in the row), so
that N enrichers get N times the CPU of one even where N of them would fill the machine.

Measured, with the events topic's end offsets asked of the broker every 20 ms: events/s from the
moment the first enricher was seen handling raw batches (its ``tetrapipe_enricher_batches_total``,
scraped every 20 ms until then) to the last event out (the figure); beside it from the first event
out (flatters: the first round's work is before it), and from every enricher's /healthz (group
join inside); each enricher's CPU-seconds from just before its first raw batch to the last event
(all of its events' work, none of its imports nor its group join) and its events (its own
``tetrapipe_enricher_events_total``), events per enricher CPU-second (the sum, and each
process's); from every enricher's /healthz to the last event, the broker JVM's CPU per event
and the shares of the machine's CPU the enrichers, the broker and everything else used.
Checked after the window: the group committed every raw partition to its end, every event is in
the events topic exactly once (no event lost or doubled across the group: (exec_id, event type)
pairs, which are unique in this stream), and every exec/exit event names its parent (the process
tree held), and how many partition assignments the enrichers went through (rebalances).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from bench import common
from bench.cpu_quota import CpuCgroup
from bench.e2e import _frames
from bench.enricher_drain import machine_busy_s
from bench.enricher_kafka import _metric, _ready
from tetrapipe import kafka
from tetrapipe.broker import free_port
from tetrapipe.config import Config
from tetrapipe.kafka import MAX_MESSAGE_BYTES


def spread_nodes(base: str, n: int) -> list[str]:
    """N node names whose murmur2 partitions (the producer's default, as the collector's raw
    records are keyed by node name) are 0..n-1, one each; the i-th name lands on partition i."""
    part = DefaultPartitioner()
    parts = list(range(n))
    names: list[str | None] = [None] * n
    j = 0
    while any(x is None for x in names):
        name = f"{base}-{j}"
        p = part(name.encode(), parts, parts)
        if names[p] is None:
            names[p] = name
        j += 1
    return [x for x in names if x is not None]


def check_outputs(pairs: Iterable[tuple[bytes, str, bool]], expected: int, roots: int) -> dict[str, Any]:
    """What the group wrote, from the events topic read back: (key = exec_id, event type, has a
    parent) per message. Each (exec_id, type) pair occurs once in the synthetic stream, so any
    pair seen twice is a doubled event and ``expected`` minus the distinct pairs the lost ones.
    ``roots``: exec events whose parent is rightly unknown (each node's /proc parent, child of
    pid 1); any other exec or exit without a parent is an orphan (its tree was split)."""
    seen: Counter[tuple[bytes, str]] = Counter()
    orphans = 0
    for key, kind, has_parent in pairs:
        seen[(key, kind)] += 1
        if kind in ("process_exec", "process_exit") and not has_parent:
            orphans += 1
    messages = sum(seen.values())
    return {"events_read": messages, "distinct": len(seen), "lost": max(expected - len(seen), 0),
            "doubled": messages - len(seen), "extra": max(len(seen) - expected, 0),
            "orphans": max(orphans - roots, 0)}


async def _produce_keyed(bootstrap: str, topic: str, per_node: list[tuple[str, list[bytes]]]) -> dict[int, int]:
    """Raw batches keyed by node name, partition left to the producer (as the collector sends
    them); the partition each batch went to, counted."""
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=MAX_MESSAGE_BYTES,
                         linger_ms=5)
    await p.start()
    try:
        futs = [await p.send(topic, f, key=node.encode()) for node, frames in per_node for f in frames]
        meta = await asyncio.gather(*futs)
    finally:
        await p.stop()
    return dict(Counter(m.partition for m in meta))


async def _watch(bootstrap: str, topic: str, n_parts: int, total: int, pids: dict[str, int],
                 ports: list[int], alive: Any, deadline: float) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await c.start()
    tps = [TopicPartition(topic, p) for p in range(n_parts)]

    def snap(n: int) -> dict[str, float]:
        busy, _ = machine_busy_s()
        return {"t": time.monotonic(), "n": n, "busy": busy,
                **{k: common.cpu_seconds(p) for k, p in pids.items()}}
    try:
        ready: dict[str, float] = {}  # each enricher's CPU-seconds before it handled a raw batch
        consuming: dict[str, float] = {}  # the time each one was seen handling raw batches
        t_ready = work = first = None
        while time.monotonic() < deadline and alive():
            for i, port in enumerate(ports):
                k = f"e{i}"
                if k in consuming:
                    continue
                before = common.cpu_seconds(pids[k])
                if k not in ready and not _ready(port):
                    continue
                if _metric(port, "tetrapipe_enricher_batches_total") > 0:
                    consuming[k] = time.monotonic()
                    ready.setdefault(k, before)
                else:
                    ready[k] = before  # its CPU before the last look that found no batch yet
            if t_ready is None and len(ready) == len(ports):
                t_ready = snap(0)
            if work is None and consuming:
                work = snap(0)
            n = sum((await c.end_offsets(tps)).values())
            if n > 0 and first is None:
                first = snap(n)
            if n >= total:
                return {"ready": t_ready, "ready_cpu": ready, "work": work, "consuming": consuming,
                        "first": first, "done": snap(n)}
            await asyncio.sleep(0.02)
        return {"ready": t_ready, "ready_cpu": ready, "work": work, "first": first, "done": None}
    finally:
        await c.stop()


async def _settled(bootstrap: str, group: str, raw: str, n_parts: int, timeout: float) -> bool:
    """The group committed every raw partition up to its end (nothing left to re-read)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        tps = [TopicPartition(raw, p) for p in range(n_parts)]
        ends = await c.end_offsets(tps)
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            committed = [await c.committed(tp) or 0 for tp in tps]
            if all(off >= ends[tp] for off, tp in zip(committed, tps, strict=True)):
                return True
            await asyncio.sleep(0.1)
        return False
    finally:
        await c.stop()


async def _read_all(bootstrap: str, topic: str, n_parts: int) -> list[Any]:
    """Every message now in the topic's ``n_parts`` partitions (no group, nothing committed)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                         max_partition_fetch_bytes=MAX_MESSAGE_BYTES, fetch_max_bytes=4 * MAX_MESSAGE_BYTES)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(n_parts)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        ends = await c.end_offsets(tps)
        out: list[Any] = []
        left = {tp for tp in tps if ends[tp] > 0}
        while left:
            for tp, msgs in (await c.getmany(timeout_ms=1000, max_records=5000)).items():
                out.extend(msgs)
                if msgs and msgs[-1].offset >= ends[tp] - 1:
                    left.discard(tp)
        return out
    finally:
        await c.stop()


def _read_pairs(bootstrap: str, topic: str, n_parts: int) -> list[tuple[bytes, str, bool]]:
    from enricher.service import event_type
    from schemas import codec

    out = []
    for m in asyncio.run(_read_all(bootstrap, topic, n_parts)):
        ev = codec.decode("event", m.value)
        kind = event_type(ev)
        parent = (ev.get(kind) or {}).get("parent") or {}
        out.append((m.key or b"", kind, bool(parent.get("exec_id"))))
    return out


def _start(tree: Path, env: dict[str, str], log: Any, cpu: int | None, cg: CpuCgroup | None) -> subprocess.Popen:
    cmd = [*(["taskset", "-c", str(cpu)] if cpu is not None else []), sys.executable, "-m", "tetrapipe", "enricher"]
    return subprocess.Popen(cg.wrap(cmd) if cg else cmd, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)


def group_run(tree: Path, bootstrap: str, n_events: int, work: Path, broker_pid: int, n: int,
              pin: bool = False, cpu_quota: float | None = None) -> dict[str, Any]:
    """``cpu_quota``: each enricher in its own cgroup limited to that many cores (bench/cpu_quota.py)."""
    work.mkdir(parents=True, exist_ok=True)
    pipe = common.Pipeline(bootstrap, work)
    pipe.settings.update({"procfs_bootstrap": "false", "log_level": "warning", "topic_partitions": str(n)})
    nodes = spread_nodes(pipe.node_name, n)
    per_node, total = [], 0
    for node in nodes:
        frames, k = _frames(node, n_events // (2 * n))
        per_node.append((node, frames))
        total += k
    raw, events = pipe.base["raw_topic"], pipe.base["events_topic"]
    asyncio.run(kafka.ensure_topics(Config(kafka=bootstrap, topic_partitions=n), [raw, events]))
    spread = asyncio.run(_produce_keyed(bootstrap, raw, per_node))
    if sorted(spread) != list(range(n)):
        raise RuntimeError(f"raw batches went to partitions {spread}, not one node on each of {n}")
    ncpu = os.cpu_count() or 1
    procs, logs, ports, groups = [], [], [], []
    try:
        for i in range(n):
            if cpu_quota is not None:
                groups.append(CpuCgroup(cpu_quota, f"e{i}"))
            port = free_port()
            env = pipe.env({"metrics_address": f"127.0.0.1:{port}"})
            env["PYTHONPATH"] = str(tree)
            logs.append(open(work / f"enricher{i}-{tree.name}.log", "ab"))  # noqa: SIM115
            ports.append(port)
            procs.append(_start(tree, env, logs[-1], i % ncpu if pin else None, groups[i] if groups else None))
        t_start = time.monotonic()
        load = os.getloadavg()[0]
        pids = {**{f"e{i}": p.pid for i, p in enumerate(procs)}, "broker": broker_pid}
        got = asyncio.run(_watch(bootstrap, events, n, total, pids, ports,
                                 lambda: all(p.poll() is None for p in procs), time.monotonic() + 120 + total / 500))
        ready, work_t, first, done = got["ready"], got["work"], got["first"], got["done"]
        if done is None or first is None or work_t is None:
            raise RuntimeError(f"the {n} enrichers of {tree} did not make {total} events; see {work}")
        settled = asyncio.run(_settled(bootstrap, pipe.base["enricher_group"], raw, n, 30))
        per_events = [_metric(p, "tetrapipe_enricher_events_total") for p in ports]
        assigned = [_metric(p, "tetrapipe_enricher_partitions_assigned_total") for p in ports]
        throttled = [g.throttled() for g in groups]
    finally:
        common.stop_processes(procs, logs)
        for g in groups:
            g.remove()
    check = check_outputs(_read_pairs(bootstrap, events, n), total, n)
    secs = done["t"] - work_t["t"]
    keys = [f"e{i}" for i in range(n)]
    cpu = {k: done[k] - got["ready_cpu"][k] for k in keys}  # from before its first batch: all its work
    enr = sum(cpu.values())
    brk = done["broker"] - work_t["broker"]
    busy = done["busy"] - work_t["busy"]
    cpu_w = sum(done[k] - work_t[k] for k in keys)  # in the window, for the shares
    starts = sorted(got["consuming"].values())
    quota = {"cpu_quota_cores": cpu_quota, "cgroup": f"{groups[0].kind}: {groups[0].setting}",
             "throttled_periods": [f"{t['throttled']}/{t['periods']}" for t in throttled],
             "throttled_s": [round(t["throttled_s"], 2) for t in throttled]} if groups else {"cpu_quota_cores": None}
    return {"tree": str(tree), "enrichers": n, "mode": "prefilled-group", "pinned": pin, **quota, "events": total,
            "raw_batches_per_partition": [spread[p] for p in range(n)],
            "seconds": secs, "events_per_s": total / secs,
            "first_to_last_events_per_s": (done["n"] - first["n"]) / max(done["t"] - first["t"], 1e-9),
            "ready_to_last_events_per_s": total / (done["t"] - ready["t"]) if ready else None,
            "start_to_ready_s": ready["t"] - t_start if ready else None,
            "consuming_spread_s": starts[-1] - starts[0] if len(starts) == n else None,
            "events_per_cpu_s": total / max(enr, 1e-9),
            "enricher_cpu_s": [round(cpu[k], 3) for k in keys],
            "enricher_cores_used": [round(cpu[k] / secs, 3) for k in keys],  # against --cpu-quota
            "enricher_events": per_events,
            "enricher_events_per_cpu_s": [round(e / max(cpu[k], 1e-9)) for e, k in zip(per_events, keys, strict=True)],
            "enricher_cpu_share_pct": 100 * cpu_w / (secs * ncpu),
            "broker_cpu_us_per_event": 1e6 * brk / total, "broker_cpu_share_pct": 100 * brk / (secs * ncpu),
            "others_cpu_pct": 100 * max(busy - cpu_w - brk, 0.0) / (secs * ncpu),
            "partitions_assigned": assigned, "committed_to_end": settled, **check,
            "load1_at_start": load}
