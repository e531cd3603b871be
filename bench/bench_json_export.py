"""Throughput of the JSON export path; prints figures (not a test).

    .venv/bin/python bench/bench_json_export.py [--events 50000] [--no-service]

1. JsonFileSink alone (render + write), plain and with every option on.
2. Avro encode/decode of one event, single-object vs Confluent framing.
3. The `tetrapipe export json` service end to end: events produced to a topic of the embedded
   broker first, then the exporter started; events/s from its first to its last line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from json_events import exec_event  # noqa: E402

from exporters.filters import ExportFilters  # noqa: E402
from exporters.json_file import JsonFileSink, RotationPolicy  # noqa: E402
from exporters.ratelimit import RateLimiter  # noqa: E402
from schemas import codec  # noqa: E402


def sink_rate(n: int, **kw: object) -> float:
    events = [exec_event(pid=i, args=f"-c run {i}") for i in range(1000)]
    with tempfile.TemporaryDirectory() as d:
        sink = JsonFileSink(Path(d) / "events.log", **kw)  # type: ignore[arg-type]

        async def go() -> float:
            await sink.start()
            t = time.perf_counter()
            for _ in range(n // 1000):
                await sink.write(events)
            dt = time.perf_counter() - t
            await sink.stop()
            return dt

        return n / asyncio.run(go())


def codec_rates(n: int) -> None:
    ev = exec_event()
    t = time.perf_counter()
    for _ in range(n):
        so = codec.encode("event", ev)
    enc = n / (time.perf_counter() - t)
    prefix = b"\x00" + struct.pack(">I", 1)
    t = time.perf_counter()
    for _ in range(n):
        cf = prefix + codec.encode_body("event", ev)
    enc_cf = n / (time.perf_counter() - t)
    parsed = codec.schema("event").parsed
    t = time.perf_counter()
    for _ in range(n):
        codec.decode("event", so)
    dec = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(n):
        codec.decode("event", cf, registry_lookup=lambda i: parsed)
    dec_cf = n / (time.perf_counter() - t)
    print(f"avro encode: single-object {enc:,.0f}/s, confluent {enc_cf:,.0f}/s; "
          f"decode: single-object {dec:,.0f}/s, confluent (cached schema) {dec_cf:,.0f}/s; "
          f"message {len(so)} bytes")


def service_rate(n: int) -> None:
    from tetrapipe import kafka
    from tetrapipe.broker import EmbeddedBroker, free_port
    from tetrapipe.config import Config

    with tempfile.TemporaryDirectory() as d, EmbeddedBroker(log_path=Path(d) / "broker.log") as b:
        topic = f"bench{os.getpid()}.events"
        cfg = Config(kafka=b.bootstrap, events_topic=topic)

        async def produce() -> None:
            await kafka.ensure_topics(cfg, [topic])
            p = await kafka.start_producer(cfg, linger_ms=20)
            try:
                futs = []
                for i in range(n):
                    futs.append(await p.send(topic, codec.encode("event", exec_event(pid=i, args=f"-c {i}"))))
                await asyncio.gather(*futs)
            finally:
                await p.stop()

        asyncio.run(produce())
        out = Path(d) / "events.log"
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("TETRAPIPE_")},
               "PYTHONPATH": str(REPO), "TETRAPIPE_KAFKA": b.bootstrap, "TETRAPIPE_EVENTS_TOPIC": topic,
               "TETRAPIPE_DEADLETTER_TOPIC": topic + ".dl", "TETRAPIPE_EXPORT_FILENAME": str(out),
               "TETRAPIPE_EXPORT_FILE_MAX_SIZE_MB": "100",
               "TETRAPIPE_METRICS_ADDRESS": f"127.0.0.1:{free_port()}"}
        proc = subprocess.Popen([sys.executable, "-m", "tetrapipe", "export", "json"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            first = last = None
            lines = 0
            deadline = time.monotonic() + 600
            while lines < n and time.monotonic() < deadline:
                time.sleep(0.02)
                try:
                    with open(out, "rb") as f:
                        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
                except FileNotFoundError:
                    continue
                if lines and first is None:
                    first = (time.monotonic(), lines)
            last = time.monotonic()
        finally:
            proc.terminate()
            proc.wait(30)
        if first is None:
            print("export json service: nothing written")
            return
        rate = (lines - first[1]) / max(last - first[0], 1e-9)
        print(f"export json service (Kafka → decode → protojson → file): {lines} lines, {rate:,.0f} events/s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=50000)
    ap.add_argument("--no-service", action="store_true")
    a = ap.parse_args()
    n = a.events
    print(f"JsonFileSink plain: {sink_rate(n):,.0f} events/s")
    opts = ExportFilters.parse(
        allowlist='{"event_set":["PROCESS_EXEC","PROCESS_EXIT"]}\n{"binary_regex":["^/usr/bin/"]}',
        denylist='{"health_check":true}\n{"namespace":["kube-system"]}',
        field_filters='{"fields":"parent.cwd","action":"EXCLUDE"}',
        redaction_filters='{"redact":["--password[= ](\\\\S+)"]}')
    full = sink_rate(n, filters=opts, rate_limiter=RateLimiter(10**9), rotation=RotationPolicy(10 << 20, 0, 3, True))
    print(f"JsonFileSink with allow/deny, redaction, field filter, rate limit, rotation 10 MB + gzip: "
          f"{full:,.0f} events/s")
    codec_rates(min(n, 20000))
    if not a.no_service:
        service_rate(n)


if __name__ == "__main__":
    main()
