"""Section 2: end to end. Enricher throughput without Kafka (pure CPU: decode, build, Avro
encode), through Kafka with one and two enricher processes (raw topic with ``topic_partitions``
partitions, one node per partition) into every sink, and the latency from kernel timestamp to
the line in the JSON export file at a fixed event rate."""

from __future__ import annotations

import asyncio
import cProfile
import io
import json
import os
import pstats
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from bench import common
from bench.synth import ProcessStream
from bpf import records
from collector.batcher import Batcher
from enricher.raw_decoder import decode_batch
from enricher.service import Enricher, event_key
from exporters import protojson, sinks
from schemas import codec
from tetrapipe.config import Config
from tetrapipe.kafka import MAX_MESSAGE_BYTES
from tetrapipe.service import tune_gc

BATCH = 2000  # records per raw batch, the collector's default batch_max_records


def _frames(node: str, n_procs: int, stream: ProcessStream | None = None) -> tuple[list[bytes], int]:
    stream = stream or ProcessStream()
    recs = list(stream.processes(n_procs))
    b = Batcher(node, records.layout_id())
    frames = [b.frame(recs[i:i + BATCH]) for i in range(0, len(recs), BATCH)]
    return frames, 2 * n_procs + 1


# ---- pure CPU ---------------------------------------------------------------------------------

def enricher_cpu(n_events: int, profile: bool = True, redaction_filters: str = "") -> dict[str, Any]:
    """``redaction_filters``: the enricher's option (the synthetic processes run
    ``/usr/bin/true --bench "a b"``; a filter on ``--bench`` redacts every one of them)."""
    frames, n = _frames("bench-cpu", n_events // 2)
    enr = Enricher(Config(node_name="bench-cpu", redaction_filters=redaction_filters))
    tune_gc()  # as tetrapipe.service.run_stage does in the enricher process
    encoded: list[bytes] = []

    def enrich() -> None:
        for f in frames:
            evs, _ = enr.handle_batch(decode_batch(f))
            for ev in evs:
                encoded.append(codec.encode("event", ev))
                event_key(ev)

    w0, c0 = time.perf_counter(), time.process_time()
    enrich()
    w1, c1 = time.perf_counter(), time.process_time()

    def export() -> None:
        for m in encoded:
            protojson.dumps(codec.decode("event", m))

    w2, c2 = time.perf_counter(), time.process_time()
    export()
    w3, c3 = time.perf_counter(), time.process_time()
    out: dict[str, Any] = {
        "events": len(encoded),
        "enricher_events_per_s_wall": len(encoded) / (w1 - w0),
        "enricher_events_per_s_cpu": len(encoded) / max(c1 - c0, 1e-9),
        "json_export_events_per_s_wall": len(encoded) / (w3 - w2),
        "json_export_events_per_s_cpu": len(encoded) / max(c3 - c2, 1e-9),
    }
    if profile:
        encoded.clear()
        enr.builder.cache.by_pid.clear()
        enr.builder.cache.by_exec_id.clear() if hasattr(enr.builder.cache, "by_exec_id") else None
        out["enricher_profile"] = _profile(enrich)
        out["export_profile"] = _profile(export)
    return out


def _profile(fn: Any, top: int = 12) -> list[dict[str, Any]]:
    """Where the time goes (cProfile, cumulative share of each function's own time)."""
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    st = pstats.Stats(prof, stream=io.StringIO())
    total = sum(v[2] for v in st.stats.values()) or 1.0  # type: ignore[attr-defined]
    rows = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
    return [{"function": f"{Path(k[0]).name}:{k[1]}({k[2]})", "calls": v[1],
             "own_share": round(v[2] / total, 3)} for k, v in rows]


# ---- through Kafka ----------------------------------------------------------------------------

def _sum_metric(svcs: list[common.Service], name: str, **labels: str) -> float:
    return sum(s.metric(name, **labels) for s in svcs)


async def _produce(bootstrap: str, topic: str, per_partition: list[list[bytes]], keys: list[bytes]) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=MAX_MESSAGE_BYTES,
                         linger_ms=5)
    await p.start()
    try:
        futs = []
        for part, (frames, key) in enumerate(zip(per_partition, keys, strict=True)):
            for f in frames:
                futs.append(await p.send(topic, f, key=key, partition=part))
        await asyncio.gather(*futs)
    finally:
        await p.stop()


def kafka_throughput(ctx: Any, n_enrichers: int, profile: bool = False) -> dict[str, Any]:
    size = ctx.size
    pipe = ctx.new_pipeline(ctx.ws.sub(f"tput{n_enrichers}"), topic_partitions=str(n_enrichers))
    fluent = common.FluentReceiver().start()  # the fluentd sink's peer: Forward protocol with acks
    try:
        enrichers = [pipe.start(f"enricher{i}", "enricher") for i in range(n_enrichers)]
        exporters = {name: pipe.start(f"export-{name}", "export", name,
                                      extra={"fluentd_address": fluent.address})
                     for name in sorted(sinks.STAGES)}
        time.sleep(3 if n_enrichers > 1 else 1)  # let the group settle on one partition each
        per_part, total = [], 0
        for i in range(n_enrichers):
            frames, n = _frames(f"bench-node-{i}", size.e2e_events // (2 * n_enrichers))
            per_part.append(frames)
            total += n
        pids = {s.name: s.proc.pid for s in [*enrichers, *exporters.values()] if s.proc}
        pids["broker"] = pipe.broker_pid
        spies = {}
        if profile:
            for svc in [*enrichers, exporters.get("json")]:
                if svc is not None and svc.proc:
                    spies[svc.name] = common.PySpy(svc.proc.pid, pipe.tmp / f"{svc.name}.pyspy").start()
        t0 = time.monotonic()
        with common.RssSampler(pids) as rss:
            asyncio.run(_produce(pipe.bootstrap, pipe.base["raw_topic"], per_part,
                                 [f"bench-node-{i}".encode() for i in range(n_enrichers)]))
            t_produced = time.monotonic()
            first: dict[str, float] = {}
            done: dict[str, float] = {}
            cpu0 = {n: common.cpu_seconds(p) for n, p in pids.items()}
            deadline = t_produced + max(90.0, total / 100)
            while time.monotonic() < deadline and len(done) < 1 + len(exporters):
                now = time.monotonic()
                counts = {"enricher": _sum_metric(enrichers, "tetrapipe_enricher_events_total")}
                for name, svc in exporters.items():
                    counts[name] = svc.metric("tetrapipe_events_exported_total", sink=name)
                for k, v in counts.items():
                    if v > 0 and k not in first:
                        first[k] = now
                    if v >= total and k not in done:
                        done[k] = now
                time.sleep(0.1)
            cpu = {n: common.cpu_seconds(p) - cpu0[n] for n, p in pids.items()}
        profiles = {name: spy.stop() for name, spy in spies.items()}
        res: dict[str, Any] = {"enrichers": n_enrichers, "events": total,
                               "produce_seconds": t_produced - t0, "peak_rss_mib": rss.peak,
                               "cpu_seconds": cpu,
                               "cpu_us_per_event": {n: 1e6 * c / total for n, c in cpu.items()}}
        if profile:
            res["py_spy"] = profiles
        for k in first:
            end = done.get(k)
            res[f"{k}_events_per_s"] = _rate(total, first[k], end, t_produced)
            res[f"{k}_complete"] = end is not None
        return res
    finally:
        pipe.stop()
        fluent.stop()


def _rate(total: int, first: float, end: float | None, produced: float) -> float | None:
    """Events per second from the first counted event to the last. A stage that counts once per
    batch may show the whole run at its first poll (first == end): then from the end of the
    produce instead, which includes the hop's latency (a lower bound)."""
    if end is None:
        return None
    if end > first:
        return total / (end - first)
    return total / (end - produced) if end > produced else None


# ---- latency ----------------------------------------------------------------------------------

class Tail(threading.Thread):
    """Reads the export file as it grows; stamps each line with the time it was seen."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.lines: list[tuple[int, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        pos = 0
        ino = None
        buf = ""
        while not self.stop.is_set():
            data = ""
            try:
                with open(self.path) as f:
                    st = os.fstat(f.fileno())
                    if st.st_ino != ino or st.st_size < pos:  # rotated: a new file from its start
                        ino, pos, buf = st.st_ino, 0, ""
                    f.seek(pos)
                    data = f.read()
                    pos = f.tell()
            except FileNotFoundError:
                pass
            if data:
                now = time.time_ns()
                buf += data
                *full, buf = buf.split("\n")
                self.lines.extend((now, line) for line in full if line)
            else:
                self.stop.wait(0.005)


class Injector(threading.Thread):
    """Stands in for more nodes' collectors: synthetic raw batches every 50 ms at ``rate`` events/s,
    stamped with the current kernel clock (so their latency is measured from injection)."""

    def __init__(self, bootstrap: str, topic: str, node: str, rate: float, seconds: float) -> None:
        super().__init__(daemon=True)
        self.args = (bootstrap, topic, node, rate, seconds)
        self.sent = 0

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        bootstrap, topic, node, rate, seconds = self.args
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                             max_request_size=MAX_MESSAGE_BYTES)
        await p.start()
        stream = ProcessStream(first_pid=500000)
        b = Batcher(node, records.layout_id())
        t0 = time.monotonic()
        owed = 0.0
        try:
            while time.monotonic() - t0 < seconds:
                owed += rate * 0.05 / 2
                n = int(owed)
                owed -= n
                if n:
                    recs = list(stream.processes(n))
                    await p.send(topic, b.frame(recs), key=node.encode())
                    self.sent += 2 * n
                await asyncio.sleep(max(0.0, 0.05 - (time.monotonic() - t0) % 0.05))
            await p.flush()
        finally:
            await p.stop()


def latency(ctx: Any, rate: int) -> dict[str, Any]:
    size = ctx.size
    d = ctx.ws.sub(f"latency{rate}")
    pipe = ctx.new_pipeline(d, export_file_max_size_mb="100000")  # no rotation under the tail
    target = d / "true-latency"
    shutil.copy(shutil.which("true") or "/bin/true", target)
    kernel_exec_rate = min(100.0, rate / 10)  # the VM execs a few hundred/s at most
    try:
        enr = pipe.start("enricher", "enricher")
        exp = pipe.start("export-json", "export", "json")
        col = pipe.start("collector", "collector")
        pids = {"collector": col.proc.pid, "enricher": enr.proc.pid, "export-json": exp.proc.pid,  # type: ignore[union-attr]
                "broker": pipe.broker_pid}
        time.sleep(2)
        idle_rss = {n: common.rss_mib(p) for n, p in pids.items()}
        tail = Tail(pipe.export_file)
        tail.start()
        inject_node = f"bench-inject-{ctx.tag}"
        inj = Injector(pipe.bootstrap, pipe.base["raw_topic"], inject_node,
                       rate - 2 * kernel_exec_rate, size.latency_seconds)
        cpu0 = {n: common.cpu_seconds(p) for n, p in pids.items()}
        with common.RssSampler(pids) as rss:
            inj.start()
            load = common.run_load(ctx.binary, "exec", str(target), size.latency_seconds,
                                   kernel_exec_rate)
            inj.join()
            time.sleep(3)
        cpu = {n: common.cpu_seconds(p) - cpu0[n] for n, p in pids.items()}
        tail.stop.set()
        tail.join()
        kernel_lat, inj_lat = [], []
        t_first = t_last = None
        n_all = 0
        unreadable = 0
        for seen, line in tail.lines:
            try:
                ev = json.loads(line)
            except ValueError:  # a line cut by a rotation between two reads
                unreadable += 1
                continue
            kind = next((k for k in ev if k.startswith("process_")), None)
            if kind is None:
                continue
            n_all += 1
            t_first = t_first or seen
            t_last = seen
            lat_ms = (seen - protojson.parse_rfc3339(ev["time"])) / 1e6
            if ev.get("node_name") == inject_node:
                inj_lat.append(lat_ms)
            elif ev[kind].get("process", {}).get("binary") == str(target):
                kernel_lat.append(lat_ms)
        span = (t_last - t_first) / 1e9 if t_first and t_last and t_last > t_first else None
        return {
            "target_events_per_s": rate, "unreadable_lines": unreadable,
            "exported_events_per_s": n_all / span if span else None,
            "kernel_execs": load.ops, "kernel_exec_rate": load.rate,
            "injected_events": inj.sent,
            "kernel_events_seen": len(kernel_lat),
            "kernel_p50_ms": common.percentile(kernel_lat, 50),
            "kernel_p99_ms": common.percentile(kernel_lat, 99),
            "kernel_max_ms": max(kernel_lat) if kernel_lat else None,
            "injected_p50_ms": common.percentile(inj_lat, 50),
            "injected_p99_ms": common.percentile(inj_lat, 99),
            "idle_rss_mib": idle_rss, "load_peak_rss_mib": rss.peak, "cpu_seconds": cpu,
        }
    finally:
        pipe.stop()


def run(ctx: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"sinks": sorted(sinks.STAGES)}
    missing = [s for s in ("json", "fluentd", "prometheus") if s not in sinks.STAGES]
    if missing:
        ctx.note(f"sinks not built yet on this branch, not measured: {', '.join(missing)}")
    out["cpu"] = enricher_cpu(ctx.size.cpu_events)
    rounds1, rounds2 = [], []
    if not common.py_spy_path():
        ctx.note("py-spy is not installed (pip install py-spy): no profile of the running services")
    for rnd in range(max(1, ctx.size.rounds - 1)):  # interleaved: 1 enricher, 2 enrichers, ...
        rounds1.append(kafka_throughput(ctx, 1, profile=rnd == 0))
        rounds2.append(kafka_throughput(ctx, 2))
    out["kafka_1_enricher"] = rounds1
    out["kafka_2_enrichers"] = rounds2
    for key, rounds in (("one", rounds1), ("two", rounds2)):
        out[f"enricher_rate_{key}"] = common.spread([r.get("enricher_events_per_s") for r in rounds])
        out[f"json_rate_{key}"] = common.spread([r.get("json_events_per_s") for r in rounds])
    out["cpu_us_per_event_one"] = {n: common.spread([r["cpu_us_per_event"][n] for r in rounds1])
                                   for n in (rounds1[0]["cpu_us_per_event"] if rounds1 else {})}
    out["latency"] = latency(ctx, ctx.size.latency_rate)
    out["latency_low"] = latency(ctx, ctx.size.latency_low_rate)
    return out
