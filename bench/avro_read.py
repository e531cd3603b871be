"""The JSON exporter's per-event work in one process, before and after the generated reader and
renderer: Avro decode by plain fastavro (what ``codec.decode`` did) against ``codec.decode`` now
(the reader generated from the schema, schemas/compiled_reader.py), and protojson rendering by the
tree of closures (before) against the generated ``to_protojson``, plus the whole line
(decode + render + JSON). Events: built by the real enricher from synthetic raw records
(bench/synth.py) and the exporter bench's events (tests/sink_events.py). Interleaved rounds; the
outputs are compared for equality.

    .venv/bin/python -m bench.avro_read [--processes 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import fastavro

from bench.e2e import _frames
from enricher.raw_decoder import decode_batch
from enricher.service import Enricher
from exporters import protojson
from schemas import codec
from tetrapipe.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from sink_events import make_event  # noqa: E402

PARSED = codec.schema("event").parsed


def fastavro_decode(msg: bytes) -> dict[str, Any]:
    """codec.decode before: fastavro's schemaless_reader on the body (writer = reader schema)."""
    buf = io.BytesIO(msg[10:])
    return fastavro.schemaless_reader(buf, PARSED, PARSED)  # type: ignore[return-value]


REFERENCE = protojson._event_renderers()[0]


def old_line(msg: bytes) -> str:
    return json.dumps(REFERENCE(fastavro_decode(msg)), ensure_ascii=False, separators=(",", ":"))


def new_line(msg: bytes) -> str:
    return protojson.dumps(codec.decode("event", msg))


def event_sets(processes: int) -> dict[str, list[bytes]]:
    frames, _ = _frames("bench-read", processes)
    enr = Enricher(Config(node_name="bench-read"))
    evs: list[dict[str, Any]] = []
    for f in frames:
        evs += enr.handle_batch(decode_batch(f))[0]
    kinds = ("process_exec", "process_exit", "process_kprobe")
    sink = [make_event(i, "node-x", kind=kinds[i % 3], binary=f"/usr/bin/b{i % 50}", namespace="ns",
                       pod=f"pod-{i % 20}", workload="w", policy="p" if i % 3 == 2 else "",
                       function="__x64_sys_write" if i % 3 == 2 else "") for i in range(len(evs))]
    return {"enricher events": [codec.encode("event", e) for e in evs],
            "exporter-bench events": [codec.encode("event", e) for e in sink]}


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.avro_read")
    ap.add_argument("--processes", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    for label, msgs in event_sets(a.processes).items():
        measure(label, msgs, a.rounds)
    return 0


def measure(label: str, msgs: list[bytes], rounds: int) -> None:
    n = len(msgs)
    decoded = [fastavro_decode(m) for m in msgs]
    same_decode = [codec.decode("event", m) for m in msgs] == decoded
    same_doc = [protojson.to_protojson(d) for d in decoded] == [REFERENCE(d) for d in decoded]
    same_line = [new_line(m) for m in msgs] == [old_line(m) for m in msgs]
    steps = {
        "decode: fastavro (before)": lambda: [fastavro_decode(m) for m in msgs],
        "decode: generated reader (now)": lambda: [codec.decode("event", m) for m in msgs],
        "to_protojson: closures (before)": lambda: [REFERENCE(d) for d in decoded],
        "to_protojson: generated (now)": lambda: [protojson.to_protojson(d) for d in decoded],
        "line, decode+render+JSON (before)": lambda: [old_line(m) for m in msgs],
        "line, decode+render+JSON (now)": lambda: [new_line(m) for m in msgs],
    }
    us: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):  # interleaved: the machine is shared and noisy
        for k, fn in steps.items():
            t0 = time.process_time()
            fn()
            us[k].append((time.process_time() - t0) / n * 1e6)
    size = sum(map(len, msgs)) / n
    print(f"{label}: {n} events, {size:.0f} B Avro each; CPU µs per event, median of {rounds} "
          f"interleaved rounds (min-max)")
    for k, v in us.items():
        print(f"  {k:<36} {statistics.median(v):7.1f}  ({min(v):.1f}-{max(v):.1f})")
    print(f"  same decoded dicts: {same_decode}, same protojson dicts: {same_doc}, "
          f"same lines: {same_line}")


if __name__ == "__main__":
    raise SystemExit(main())
