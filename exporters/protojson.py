"""Avro event dict ⇄ Tetragon's protojson form (what ``tetra getevents -o json`` and Tetragon's
export file hold): snake_case names, zero values omitted, wrapper and oneof fields kept even when
zero, 64-bit integers as strings, timestamps as RFC 3339 with nanoseconds, bytes as base64.

The rules come from the ``proto`` attribute of each field in schemas/event.avsc, compiled once
into a tree of small functions.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from functools import cache
from typing import Any

from schemas import capabilities, codec

Render = Callable[[Any], Any]
_EMPTY = object()


_SECONDS: dict[int, str] = {}  # whole seconds → their RFC 3339 text (events come in time order)


def rfc3339(ns: int) -> str:
    """As Go's protojson prints a Timestamp: 0, 3, 6 or 9 fraction digits, whichever is exact."""
    secs, frac = divmod(int(ns), 1_000_000_000)
    base = _SECONDS.get(secs)
    if base is None:
        if len(_SECONDS) >= 4096:
            _SECONDS.clear()
        base = _SECONDS[secs] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if frac == 0:
        return base + "Z"
    if frac % 1_000_000 == 0:
        return f"{base}.{frac // 1_000_000:03d}Z"
    if frac % 1_000 == 0:
        return f"{base}.{frac // 1_000:06d}Z"
    return f"{base}.{frac:09d}Z"


def parse_rfc3339(s: str) -> int:
    """RFC 3339 (Z or offset, any fraction digits) → ns since the epoch."""
    import calendar
    import re

    m = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", s)
    if not m:
        raise ValueError(f"not an RFC 3339 timestamp: {s!r}")
    y, mo, d, hh, mm, ss, frac, tz = m.groups()
    secs = calendar.timegm((int(y), int(mo), int(d), int(hh), int(mm), int(ss), 0, 0, 0))
    if tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        secs -= sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    return secs * 1_000_000_000 + int((frac or "0").ljust(9, "0"))


def _is_zero(v: Any) -> bool:
    return v is None or v == 0 or v == "" or v is False or v == [] or v == {} or v == b""


def _compile(avro_type: Any, named: dict[str, Any], proto: str) -> tuple[Render, Render]:
    """(to_json, from_json) for one Avro type with the field's proto hints."""
    hints = set(proto.split(",")) if proto else set()
    if isinstance(avro_type, list):  # ["null", T]
        inner = next(t for t in avro_type if t != "null")
        return _compile(inner, named, proto)
    if isinstance(avro_type, str) and avro_type in named:
        return _record(named[avro_type], named)
    if isinstance(avro_type, str) or (isinstance(avro_type, dict) and avro_type["type"] in (
            "string", "long", "int", "boolean", "bytes")):
        t = avro_type if isinstance(avro_type, str) else avro_type["type"]
        if "timestamp" in hints:
            return rfc3339, lambda s: parse_rfc3339(s) if isinstance(s, str) else int(s)
        if t == "long" and "int64" in hints:
            return str, int
        if t == "long" and "uint64" in hints:   # a u64 carried in two's complement (stack addresses)
            return (lambda v: str(v & 0xFFFF_FFFF_FFFF_FFFF)), (lambda s: int(s) - (int(s) >> 63 << 64))
        if t == "bytes":
            return (lambda b: base64.b64encode(b).decode()), base64.b64decode
        if t in ("long", "int"):
            return int, int
        return (lambda v: v), (lambda v: v)
    kind = avro_type["type"]
    if kind == "record":
        named[avro_type["name"]] = avro_type
        return _record(avro_type, named)
    if kind == "array":
        to_item, from_item = _compile(avro_type["items"], named, "")
        return (lambda xs: [to_item(x) for x in xs]), (lambda xs: [from_item(x) for x in xs])
    if kind == "map":
        to_v, from_v = _compile(avro_type["values"], named, "")
        return (lambda m: {k: to_v(v) for k, v in m.items()}), (lambda m: {k: from_v(v) for k, v in m.items()})
    raise TypeError(f"unsupported Avro type {avro_type!r}")


_records: dict[str, tuple[Render, Render]] = {}


def _record(rec: dict[str, Any], named: dict[str, Any]) -> tuple[Render, Render]:
    name = rec["name"]
    if name in _records:
        return _records[name]
    fields: list[tuple[str, bool, Render, Render]] = []

    def to_json(d: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for fname, keep_zero, to_f, _ in fields:
            # a set carried as a bit mask: its names
            v = capabilities.set_names(d, fname) if fname in masked else d.get(fname)
            if v is None or (not keep_zero and _is_zero(v)):
                continue
            out[fname] = to_f(v)
        return out

    def from_json(d: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for fname, _, _, from_f in fields:
            if fname in d and d[fname] is not None:
                out[fname] = from_f(d[fname])
        return out

    _records[name] = (to_json, from_json)
    masked = _masked_fields(rec)
    for f in rec["fields"]:
        proto = f.get("proto", "")
        if _mask_of(proto):
            continue  # not a field of Tetragon's message: rendered as the names of its set
        keep_zero = "wrapper" in proto or "oneof" in proto
        to_f, from_f = _compile(f["type"], named, proto)
        fields.append((f["name"], keep_zero, to_f, from_f))
    return to_json, from_json


def _mask_of(proto: str) -> str:
    """The name-list field a ``mask_of:<field>`` hint renders into ("" for other fields)."""
    for hint in proto.split(","):
        if hint.startswith("mask_of:"):
            return hint[len("mask_of:"):]
    return ""


def _masked_fields(rec: dict[str, Any]) -> frozenset[str]:
    """Fields of a record whose value may come as a bit mask in another field (capability sets:
    schemas/capabilities.py makes the names here, at the edge)."""
    return frozenset(m for f in rec["fields"] if (m := _mask_of(f.get("proto", ""))))


@cache
def _event_renderers() -> tuple[Render, Render]:
    return _compile(codec.schema("event").raw, {}, "")


# ---- to_protojson generated from the schema ---------------------------------------------------
# The tree of closures above (one call per field, a generic zero test) was 40 % of the JSON
# exporter's in-process cost. The same rules, written out as one Python function per record type
# and compiled once, give the same dict (tests/test_protojson_generated.py compares the two on
# generated events); the closures stay for from_protojson and as that test's reference.

_ZERO_TESTED = frozenset({type(None), bool, int, float, str, bytes, list, dict})  # zero ⇔ falsy


def _generate_to_json(raw: dict[str, Any]) -> tuple[str, str]:
    """(source, name of the top function) of to_protojson for the raw event schema."""
    named: dict[str, Any] = {}
    funcs: dict[str, list[str]] = {}

    def conv(x: str, t: Any, hints: set[str]) -> str:
        """An expression rendering the (non-null) value in ``x`` of Avro type ``t``."""
        if isinstance(t, list):
            return conv(x, next(b for b in t if b != "null"), hints)
        if isinstance(t, str) and t in named:
            return f"{record(named[t])}({x})"
        if isinstance(t, dict) and t["type"] == "record":
            named[t["name"]] = t
            return f"{record(t)}({x})"
        if isinstance(t, dict) and t["type"] == "array":
            item = conv("y", t["items"], set())
            return f"list({x})" if item == "y" else f"[{item} for y in {x}]"
        if isinstance(t, dict) and t["type"] == "map":
            val = conv("y", t["values"], set())
            return f"dict({x}.items())" if val == "y" else f"{{k: {val} for k, y in {x}.items()}}"
        kind = t["type"] if isinstance(t, dict) else t
        if kind not in ("string", "long", "int", "boolean", "bytes"):
            raise TypeError(f"unsupported Avro type {t!r}")
        if "timestamp" in hints:
            return f"TS({x})"
        if kind == "long" and "int64" in hints:
            return f"str({x})"
        if kind == "long" and "uint64" in hints:   # a u64 in two's complement (stack addresses)
            return f"str({x} & 0xFFFFFFFFFFFFFFFF)"
        if kind == "bytes":
            return f"B64({x})"
        if kind in ("long", "int"):
            return f"({x} if type({x}) is int else int({x}))"
        return x

    def record(rec: dict[str, Any]) -> str:
        fname = "j_" + rec["name"].rsplit(".", 1)[-1]
        if fname in funcs:
            return fname
        funcs[fname] = []
        body = ["out = {}", "g = d.get"]
        masked = _masked_fields(rec)
        for f in rec["fields"]:
            proto = f.get("proto", "")
            if _mask_of(proto):
                continue  # rendered as the names of the set it carries (below)
            hints = set(proto.split(",")) if proto else set()
            keep_zero = "wrapper" in hints or "oneof" in hints
            test = ("v is not None" if keep_zero else
                    "v or (v is not None and type(v) not in ZT and not IZ(v))")
            get = (f"CAPN(d, {f['name']!r})" if f["name"] in masked else f"g({f['name']!r})")
            body += [f"v = {get}", f"if {test}:",
                     f"    out[{f['name']!r}] = {conv('v', f['type'], hints)}"]
        body.append("return out")
        funcs[fname] = [f"def {fname}(d):", *("    " + ln for ln in body)]
        return fname

    top = record(raw)
    return "\n\n".join("\n".join(lines) for lines in funcs.values()) + "\n", top


@cache
def _generated_to_json() -> Render:
    src, top = _generate_to_json(codec.schema("event").raw)
    env: dict[str, Any] = {"TS": rfc3339, "B64": lambda b: base64.b64encode(b).decode(),
                           "ZT": _ZERO_TESTED, "IZ": _is_zero, "CAPN": capabilities.set_names}
    exec(compile(src, "<protojson renderer>", "exec"), env)  # noqa: S102  our own generated code
    fn: Render = env[top]
    fn.source = src  # type: ignore[attr-defined]
    return fn


def to_protojson(event: dict[str, Any]) -> dict[str, Any]:
    """Avro event dict → protojson dict."""
    return _generated_to_json()(event)


def from_protojson(doc: dict[str, Any]) -> dict[str, Any]:
    """protojson dict (a Tetragon export line) → Avro event dict (missing fields stay absent)."""
    return _event_renderers()[1](doc)


_LINE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # json.dumps with these options, built once


def dumps_doc(doc: dict[str, Any]) -> str:
    """A protojson dict as one export line (no newline): ``json.dumps(doc, ensure_ascii=False,
    separators=(",", ":"))``."""
    return _LINE.encode(doc)


def dumps(event: dict[str, Any]) -> str:
    """One export line (no newline)."""
    return _LINE.encode(to_protojson(event))


def event_type(event: dict[str, Any]) -> str:
    """The set oneof: process_exec, process_exit, ... (works on Avro and protojson dicts)."""
    for k, v in event.items():
        if k.startswith(("process_", "rate_limit_info")) and v:
            return k
    return "unknown"
