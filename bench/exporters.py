"""Events/s each exporter sustains, measured end to end on the real services (prints figures; not a
test).

N Avro events are put on a fresh events topic first; then each exporter (`tetrapipe export json |
fluentd | prometheus`, a subprocess with its own consumer group) is started alone and reads the
backlog; its rate runs from the moment it is ready (consumer group join, Kafka reading, Avro
decoding and the sink are in; process startup is not) to its last export, in events per second of
wall clock and per CPU second of the exporter process (the machine is shared).
fluentd events count when the loopback Forward Protocol v1 receiver (tests/fluent_receiver.py, in
this process) acknowledged them. Finally all three run at once while N more events are produced
(the fan-out).

    .venv/bin/python bench/exporters.py [--events 50000] [--kafka host:port]

Without ``--kafka`` an embedded broker (Tansu, in memory) is started. The machine is shared: run it
more than once and report the spread.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from fluent_receiver import FluentReceiver  # noqa: E402
from harness import Pipeline, Service  # noqa: E402
from sink_events import cfg_of, make_event  # noqa: E402

from schemas import codec  # noqa: E402
from tetrapipe import kafka  # noqa: E402
from tetrapipe.broker import EmbeddedBroker  # noqa: E402
from tetrapipe.config import Config  # noqa: E402

KINDS = ("process_exec", "process_exit", "process_kprobe")


def events(node: str, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        kind = KINDS[i % 3]
        ev = make_event(i, node, kind=kind, binary=f"/usr/bin/b{i % 50}", namespace="ns",
                        pod=f"pod-{i % 20}", workload="w",
                        policy="p" if kind == "process_kprobe" else "",
                        function="__x64_sys_write" if kind == "process_kprobe" else "")
        out.append(codec.encode("event", ev))
    return out


async def produce(cfg: Config, values: list[bytes], key: bytes) -> float:
    await kafka.ensure_topics(cfg, [cfg.events_topic])
    p = await kafka.start_producer(cfg)
    t0 = time.perf_counter()
    try:
        for i in range(0, len(values), 2000):
            futs = [await p.send(cfg.events_topic, v, key=key) for v in values[i:i + 2000]]
            await asyncio.gather(*futs)
    finally:
        await p.stop()
    return len(values) / (time.perf_counter() - t0)


def cpu_seconds(svcs: dict[str, Service]) -> dict[str, float]:
    return {name: svc.metric("process_cpu_seconds_total") for name, svc in svcs.items()}


def measure(svcs: dict[str, Service], n: int, t_start: float, cpu0: dict[str, float],
            timeout: float = 600) -> dict[str, tuple[float, float]]:
    """Each service's (events/s wall, events per CPU second) from its own metrics: from t_start
    (the service ready with the backlog waiting, or the events starting to arrive) to its
    ``tetrapipe_events_last_exported_timestamp`` once its exported counter reached n; CPU is the
    exporter process's ``process_cpu_seconds_total`` over the same span, which on a shared
    machine says more than the wall clock. Polled every 0.25 s only: rendering /metrics costs
    the exporter CPU, and Prometheus scrapes far less often."""
    done: dict[str, tuple[float, float]] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(svcs):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out; done: {done}")
        for name, svc in svcs.items():
            if name in done:
                continue
            text = svc.metrics()
            if _sample(text, "tetrapipe_events_exported_total", name) >= n:
                t1 = _sample(text, "tetrapipe_events_last_exported_timestamp", name)
                cpu = _sample(text, "process_cpu_seconds_total") - cpu0[name]
                done[name] = (n / (t1 - t_start), n / cpu if cpu > 0 else float("nan"))
        time.sleep(0.25)
    return done


def _sample(text: str, name: str, sink: str | None = None) -> float:
    for line in text.splitlines():
        if line.startswith(name + ("{" if sink else " ")) and (sink is None or f'sink="{sink}"' in line):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def breakdown(count: int = 20000) -> None:
    """Where an exporter's time goes: CPU per event in this process (no Kafka)."""
    from exporters import protojson
    from exporters.fluentd import pack_events
    from exporters.prometheus import PrometheusSink

    values = events("node-x", count)
    t = time.process_time()
    evs = [codec.decode("event", v) for v in values]
    costs = {"Avro decode (every sink)": time.process_time() - t}
    t = time.process_time()
    for e in evs:
        protojson.dumps(e)
    costs["json: protojson line"] = time.process_time() - t
    t = time.process_time()
    for i in range(0, count, 1000):
        pack_events(evs[i:i + 1000], "tetrapipe")
    costs["fluentd: protojson + msgpack"] = time.process_time() - t
    sink = PrometheusSink(Config())
    t = time.process_time()
    for e in evs:
        sink.count(e)
    costs["prometheus: counter updates"] = time.process_time() - t
    print("  in-process cost per event:")
    for what, secs in costs.items():
        print(f"    {what:<30} {secs / count * 1e6:6.1f} us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=50000)
    ap.add_argument("--kafka", default="")
    args = ap.parse_args()
    n = args.events

    broker = None
    if not args.kafka:
        broker = EmbeddedBroker(log_path=Path(tempfile.mkdtemp()) / "tansu.log").start()
    bootstrap = args.kafka or broker.bootstrap  # type: ignore[union-attr]
    rx = FluentReceiver().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            size = sum(len(v) for v in events("node-x", 100)) / 100
            print(f"events: {n} per run, ~{size:.0f} B Avro each; broker {bootstrap}"
                  f"{' (embedded Tansu)' if broker else ''}")
            extras = {"json": {}, "prometheus": {},
                      "fluentd": {"fluentd_address": rx.address, "fluentd_buffer_dir": f"{tmp}/fbuf"}}
            for sink in ("json", "fluentd", "prometheus"):
                p = Pipeline(bootstrap, Path(tmp) / sink)
                p.tmp.mkdir()
                cfg = cfg_of(p.base)
                rate_in = asyncio.run(produce(cfg, events(p.node_name, n), p.node_name.encode()))
                try:
                    svc = p.start(f"export-{sink}", "export", sink, extra=extras[sink])
                    rate, per_cpu = measure({sink: svc}, n, time.time(), cpu_seconds({sink: svc}))[sink]
                finally:
                    p.stop()
                print(f"  {sink:<10} alone: {rate:7.0f} events/s wall, {per_cpu:7.0f} events per CPU s"
                      f"   (backlog produced at {rate_in:.0f}/s)")
            # the fan-out: all three are up first, then the events arrive (faster than any sink
            # takes them), so each works alongside the other two the whole time
            p = Pipeline(bootstrap, Path(tmp) / "fanout")
            p.tmp.mkdir()
            extras["fluentd"]["fluentd_buffer_dir"] = f"{tmp}/fbuf2"
            try:
                svcs = {s: p.start(f"export-{s}", "export", s, extra=extras[s])
                        for s in ("json", "fluentd", "prometheus")}
                values = events(p.node_name, n)
                t0, cpu0 = time.time(), cpu_seconds(svcs)
                asyncio.run(produce(cfg_of(p.base), values, p.node_name.encode()))
                rates = measure(svcs, n, t0, cpu0)
            finally:
                p.stop()
            print("  all three at once (2 shared cores): "
                  + ", ".join(f"{s} {r:.0f}/s ({c:.0f}/CPU s)" for s, (r, c) in rates.items()))
            print(f"  fluentd receiver: {rx.count()} events, modes {rx.messages_by_mode}, "
                  f"{rx.acks_sent} acks, errors {len(rx.errors)}")
            breakdown()
    finally:
        rx.stop()
        if broker:
            broker.stop()


if __name__ == "__main__":
    main()
