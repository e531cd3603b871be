"""Events/s a GetEvents stream of ``tetrapipe export grpc`` delivers (prints figures; not a test).

The server runs as its own process against a broker; 1 and then K clients (built from our .proto)
open GetEvents streams and wait until positioned; N events (the seed's Tetragon process_exec with
varying pids) are then produced on the events topic. The rate runs from the first produce to the
moment every stream has all N, in events per second of wall clock (bounded by how fast the events
are produced, printed too) and in CPU time of the server process per event sent, the figure that
bounds a server (the machine is shared). Also printed: what one event costs in-process, split into Avro
decode, protojson rendering and the protobuf message (json_format).

    .venv/bin/python bench/grpc_getevents.py [--events 20000] [--streams 4] [--kafka host:port]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import grpc  # noqa: E402
from harness import Pipeline  # noqa: E402
from json_events import exec_event  # noqa: E402
from sink_events import cfg_of, produce_sync  # noqa: E402

from exporters import grpc_api, protojson  # noqa: E402
from schemas import codec  # noqa: E402
from tetragon import events_pb2, sensors_pb2_grpc  # noqa: E402
from tetrapipe.broker import EmbeddedBroker, free_port  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_round(p: Pipeline, address: str, events: list[dict], streams: int) -> tuple[float, float, float]:
    counts = [0] * streams
    calls = []
    channel = grpc.insecure_channel(address)
    stub = sensors_pb2_grpc.FineGuidanceSensorsStub(channel)
    for i in range(streams):
        call = stub.GetEvents(events_pb2.GetEventsRequest(), wait_for_ready=True)
        call.initial_metadata()
        calls.append(call)

        def read(i: int = i, call: grpc.Call = call) -> None:
            try:
                for _ in call:
                    counts[i] += 1
            except grpc.RpcError:
                pass

        threading.Thread(target=read, daemon=True).start()
    pid = p.services["export-grpc"].proc.pid  # type: ignore[union-attr]
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    produce_sync(cfg_of(p.base), events)
    produced = time.monotonic() - t0
    while min(counts) < len(events):
        if time.monotonic() - t0 > 600:
            raise SystemExit(f"timed out: {counts} of {len(events)}")
        time.sleep(0.01)
    wall, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
    for c in calls:
        c.cancel()
    channel.close()
    return wall, cpu, produced


def in_process_cost(events: list[dict], n: int = 2000) -> None:
    blobs = [codec.encode("event", e) for e in events[:n]]
    t0 = time.perf_counter()
    decoded = [codec.decode("event", b) for b in blobs]
    t1 = time.perf_counter()
    docs = [protojson.to_protojson(d) for d in decoded]
    t2 = time.perf_counter()
    msgs = [grpc_api.to_message(d) for d in docs]
    t3 = time.perf_counter()
    for m in msgs:
        m.SerializeToString()
    t4 = time.perf_counter()
    per = lambda a, b: (b - a) / len(blobs) * 1e6  # noqa: E731
    print(f"in-process per event: Avro decode {per(t0, t1):.1f} µs, protojson {per(t1, t2):.1f} µs, "
          f"protobuf message (grpc_api.to_message) {per(t2, t3):.1f} µs, serialize {per(t3, t4):.1f} µs")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--kafka", default="")
    args = ap.parse_args()
    events = [exec_event(pid=10_000 + i, args=f"seq={i}") for i in range(args.events)]
    in_process_cost(events)
    broker = None if args.kafka else EmbeddedBroker().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            p = Pipeline(args.kafka or broker.bootstrap, Path(tmp))  # type: ignore[union-attr]
            address = f"127.0.0.1:{free_port()}"
            p.settings["server_address"] = address
            try:
                p.start("export-grpc", "export", "grpc")
                for streams in (1, args.streams):
                    wall, cpu, produced = one_round(p, address, events, streams)
                    total = len(events) * streams
                    print(f"{streams} stream(s) × {len(events)} events: {total / wall:,.0f} events/s sent "
                          f"({len(events) / wall:,.0f}/s per stream), server CPU {cpu:.1f} s = "
                          f"{cpu / total * 1e6:.0f} µs per event sent (producing them took {produced:.1f} s)")
            finally:
                p.stop()
    finally:
        if broker:
            broker.stop()


if __name__ == "__main__":
    main()
