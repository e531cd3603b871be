"""Bytes per event on the bus (Avro, single-object framing) and per JSON export line, for the
synthetic process stream (bench/synth.py: fork, exec, exit of root processes with every
capability, 10 namespaces), with Tetragon's default event (no cap, ns, process_credentials) and
with ``--enable-process-cred --enable-process-ns``.

    python -m bench.event_bytes [--events N] [--dump-json FILE]

Runs against whichever tree is first on PYTHONPATH: the ``before`` figures come from main's
tree with this file run as a script (``PYTHONPATH=<main> python <this tree>/bench/event_bytes.py``);
a tree without the two options (main before the lean events) always writes cap, ns and
process_credentials, so its one row is printed under both headings. ``--dump-json`` writes the JSON lines
with both options on (compare two trees' files with ``cmp``: the same events give the same lines).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from typing import Any

from bench import synth
from bpf import records
from collector.batcher import Batcher
from enricher.raw_decoder import decode_batch
from enricher.service import Enricher
from exporters import protojson
from schemas import codec
from tetrapipe.config import Config


def _options() -> set[str]:
    return {f.name for f in dataclasses.fields(Config)}


def measure(n_events: int, cred: bool, ns: bool) -> tuple[dict[str, Any], list[str]]:
    settings: dict[str, Any] = {"node_name": "bench-bytes"}
    if "enable_process_cred" in _options():
        settings.update(enable_process_cred=cred, enable_process_ns=ns)
    clock = iter(range(10**15, 10**16, 1000))  # fixed kernel times: two runs make the same events
    synth.time = type("Clock", (), {"monotonic_ns": staticmethod(lambda: next(clock))})  # type: ignore[attr-defined]
    recs = list(synth.ProcessStream().processes(n_events // 2))
    b = Batcher("bench-bytes", records.layout_id(), boot_time=1_700_000_000 * 10**9)
    frames = [b.frame(recs[i:i + 2000]) for i in range(0, len(recs), 2000)]
    enr = Enricher(Config(**settings))
    avro: list[int] = []
    lines: list[str] = []
    kinds: dict[str, list[int]] = {}
    for f in frames:
        evs, _ = enr.handle_batch(decode_batch(f))
        for ev in evs:
            data = codec.encode("event", ev)
            line = protojson.dumps(codec.decode("event", data))
            avro.append(len(data))
            lines.append(line)
            kind = protojson.event_type(ev)
            kinds.setdefault(kind, []).append(len(data))
    json_sizes = [len(ln.encode()) + 1 for ln in lines]  # with the newline
    row = {"events": len(avro), "avro_bytes_mean": round(statistics.mean(avro)),
           "json_line_bytes_mean": round(statistics.mean(json_sizes)),
           "avro_bytes_by_type": {k: round(statistics.mean(v)) for k, v in sorted(kinds.items())}}
    return row, lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=2000)
    p.add_argument("--dump-json", default="", help="write the JSON lines (both options on) here")
    args = p.parse_args(argv)
    out: dict[str, Any] = {"options_known": "enable_process_cred" in _options()}
    out["default"], _ = measure(args.events, cred=False, ns=False)
    out["cred_and_ns"], lines = measure(args.events, cred=True, ns=True)
    if args.dump_json:
        with open(args.dump_json, "w") as fh:
            fh.writelines(ln + "\n" for ln in lines)
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
