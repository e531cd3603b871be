"""The Avro encode of events: plain fastavro (what ``codec.encode_body`` did first) against
``codec.encode_body_fastavro`` (validate once, then write with union branches named: the fallback)
and ``codec.encode_body`` now (the writer generated from the schema), on events built
by the real enricher from synthetic raw records (bench/synth.py); fastavro's validation alone and
named branches without validation beside them; and, on randomly mutated events, whether each
variant refuses exactly what plain fastavro refuses.

    .venv/bin/python -m bench.avro_union [--processes 1000] [--mutations 600]
"""

from __future__ import annotations

import argparse
import copy
import io
import marshal
import random
import statistics
import time
from typing import Any

import fastavro
from fastavro.validation import validate

from bench.e2e import _frames
from enricher.raw_decoder import decode_batch
from enricher.service import Enricher
from schemas import codec
from tetrapipe.config import Config


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.avro_union")
    ap.add_argument("--processes", type=int, default=1000)
    ap.add_argument("--mutations", type=int, default=600, help="per base event")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    frames, _ = _frames("bench-avro", a.processes)
    enr = Enricher(Config(node_name="bench-avro"))
    events: list[dict[str, Any]] = []
    for f in frames:
        events += enr.handle_batch(decode_batch(f))[0]
    parsed = codec.schema("event").parsed
    conv = codec._namer("event")
    assert conv is not None

    def plain_fastavro(e: dict[str, Any]) -> bytes:
        """What codec.encode_body did before: fastavro picks every union branch by validation."""
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, e)
        return buf.getvalue()

    def named(e: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, conv(e))
        return buf.getvalue()

    checked = lambda e: codec.encode_body("event", e)  # noqa: E731  validate once, then named

    n = len(events)
    rates: dict[str, list[float]] = {}
    same = True
    for _ in range(a.rounds):  # interleaved: the machine is shared and noisy
        for label, fn in (("plain fastavro (before)", plain_fastavro),
                          ("fastavro validate() alone", lambda e: validate(e, parsed, raise_errors=False)),
                          ("union branches named", named),
                          ("validate once + named", lambda e: codec.encode_body_fastavro("event", e)),
                          ("codec.encode_body (now)", checked)):
            t0 = time.perf_counter()
            out = [fn(e) for e in events]
            rates.setdefault(label, []).append(n / (time.perf_counter() - t0))
            if label != "fastavro validate() alone":
                if label == "plain fastavro (before)":
                    plain = out
                else:
                    same = same and out == plain
    print(f"{n} events, {sum(map(len, plain)) / n:.0f} bytes each; median of {a.rounds} interleaved rounds")
    for label, r in rates.items():
        print(f"{label:<28} {statistics.median(r):8.0f} events/s  (min {min(r):.0f}, max {max(r):.0f})")
    print(f"output byte-identical to plain fastavro: {same}")
    _process_cost(events)

    rnd = random.Random(1)
    bad = [None, "str", 5, -1, 2**70, 1.5, [], {}, {"zz": 1}, b"b", True]
    agree = [0, 0, 0, 0]
    for e in events[:6]:
        paths = list(_paths(e))
        for _ in range(a.mutations):
            m = copy.deepcopy(e)
            p = rnd.choice(paths)
            tgt = m
            for k in p[:-1]:
                tgt = tgt[k]
            tgt[p[-1]] = rnd.choice(bad)
            r1 = _try(lambda m=m: plain_fastavro(m))
            r2, r3 = _try(lambda m=m: named(m)), _try(lambda m=m: checked(m))
            agree[0 if r1 == r2 else 1] += 1
            agree[2 if r1 == r3 else 3] += 1
    print(f"mutated events, named branches without validation vs plain fastavro: {agree[0]} alike, "
          f"{agree[1]} differ (refused by one, written by the other)")
    print(f"mutated events, codec.encode_body vs plain fastavro: {agree[2]} alike, {agree[3]} differ")
    return 0


def _process_cost(events: list[dict[str, Any]]) -> None:
    """A whole-Process cache would need an exact key of the Process: marshal.dumps costs what?
    Against writing the Process with the generated writer (its sub-records memoised)."""
    fast = codec._compiled("event")
    assert fast is not None
    procs = [(e.get("process_exec") or e.get("process_exit"))["process"] for e in events]
    with_p = [{"process_exec": {"process": p}} for p in procs]
    without = [{"process_exec": {}} for _ in procs]
    for e in with_p:
        fast(e)  # memos warm, as in a running enricher

    def per_item(fn: Any, items: list[Any]) -> float:
        t0 = time.perf_counter()
        for x in items:
            fn(x)
        return (time.perf_counter() - t0) / len(items) * 1e6

    write = [per_item(fast, with_p) - per_item(fast, without) for _ in range(3)]
    key = [per_item(marshal.dumps, procs) for _ in range(3)]
    print(f"one Process: generated writer {statistics.median(write):.1f} us, "
          f"marshal.dumps (an exact cache key) {statistics.median(key):.1f} us")


def _try(fn: Any) -> bytes | None:
    try:
        return fn()
    except Exception:
        return None


def _paths(o: Any, p: tuple[Any, ...] = ()) -> Any:
    if isinstance(o, dict):
        for k, v in o.items():
            yield (*p, k)
            yield from _paths(v, (*p, k))
    elif isinstance(o, list):
        for i, v in enumerate(o):
            yield (*p, i)
            yield from _paths(v, (*p, i))


if __name__ == "__main__":
    raise SystemExit(main())
