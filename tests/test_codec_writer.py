"""The generated Avro writer (schemas/compiled_writer.py) behind codec.encode_body: the same bytes
as fastavro for every event, the same refusal for every value fastavro refuses, and no stale memo
when a process changes (late pod, refcnt, a value replaced in place by an equal one of another
type)."""

from __future__ import annotations

import copy
import io
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpf import records as r
from bpf.names import EVENT_CAPABILITIES
from enricher.event_builder import EventBuilder
from enricher.process_cache import ProcessCache
from schemas import codec
from schemas.compiled_writer import Refused, compile_writer
from tests import json_events

PARSED = codec.schema("event").parsed
NAMED = PARSED["__named_schemas"]
FAST = codec._compiled("event")


def OLD(e: Any) -> bytes:  # noqa: N802  codec.encode_body before the generated writer
    return codec.encode_body_fastavro("event", e)


def NOW(e: Any) -> bytes:  # noqa: N802
    return codec.encode_body("event", e)
LONG_EDGES = [0, 1, -1, 63, -64, 64, -65, 8191, 8192, 2**31 - 1, -(2**31), 2**62, 2**63 - 1, -(2**63),
              4026531836, 1_700_000_000_123_456_789]


def fastavro_bytes(value: Any) -> bytes:
    """Plain fastavro: every union branch picked by fastavro's own validation."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, PARSED, value)
    return buf.getvalue()


def outcome(fn: Any, value: Any) -> tuple[str, Any]:
    try:
        return ("bytes", fn(value))
    except Exception as exc:  # noqa: BLE001  the refusal itself is compared
        return ("refused", type(exc).__name__)


# ---- values generated from the schema ---------------------------------------------------------

class Int(int):
    """An int subclass: fastavro takes it as a long, the fast path refuses it (fastavro decides)."""


ODD = [True, False, 1.0, 1.5, -1, 2**64, -(2**64), "s", "", b"b", bytearray(b"b"), (), [], {}, None,
       Int(3), ("io.tetrapipe.v1.Namespace", {"inum": 1}), {"-type": "x"}, "\udc80", ["x", 1]]


def values(t: Any, depth: int, odd: bool) -> st.SearchStrategy[Any]:
    s = _values(t, depth, odd)
    return st.one_of(s, st.sampled_from(ODD)) if odd else s


def _values(t: Any, depth: int, odd: bool) -> st.SearchStrategy[Any]:
    if isinstance(t, str) and t in NAMED:
        t = NAMED[t]
    if isinstance(t, list):
        return st.one_of(*(values(b, depth, odd) for b in t))
    if isinstance(t, dict):
        kind = t["type"]
        if kind == "record":
            fields = {f["name"]: values(f["type"], depth + 1, odd) for f in t["fields"]}
            return st.fixed_dictionaries({}, optional=fields)  # absent fields: their defaults
        if kind == "array":
            if depth > 4:
                return st.just([])
            if t["items"] == "string":  # repeated lists: the memo of string lists is hit
                return st.sampled_from([[], list(EVENT_CAPABILITIES[:3]), list(EVENT_CAPABILITIES),
                                        ["CAP_CHOWN"]]) | st.lists(st.text(max_size=6), max_size=3)
            return st.lists(values(t["items"], depth + 1, odd), max_size=2)
        if kind == "map":
            return st.dictionaries(st.text(max_size=5), values(t["values"], depth + 1, odd), max_size=3)
        return _values(kind, depth, odd)
    return {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.sampled_from([v for v in LONG_EDGES if -(2**31) <= v < 2**31])
        | st.integers(-(2**31), 2**31 - 1),
        "long": st.sampled_from(LONG_EDGES) | st.integers(-(2**63), 2**63 - 1),
        "string": st.sampled_from(["", "a", "é" * 40, "x" * 70, "/usr/bin/true", "\u20ac"])
        | st.text(max_size=12),
        "bytes": st.binary(max_size=80),
    }[t]


def processes(odd: bool) -> st.SearchStrategy[dict[str, Any]]:
    return values("io.tetrapipe.v1.Process", 1, odd)  # type: ignore[return-value]


def events(odd: bool) -> st.SearchStrategy[dict[str, Any]]:
    bodies = ["process_exec", "process_exit", "process_kprobe", "process_tracepoint", "process_lsm",
              "process_loader", "process_uprobe", "rate_limit_info"]
    fields = {f["name"]: f for f in PARSED["fields"]}
    envelope = {k: values(fields[k]["type"], 0, odd) for k in ("node_name", "time", "cluster_name", "node_labels")}
    return st.sampled_from(bodies).flatmap(
        lambda b: st.fixed_dictionaries({b: values(fields[b]["type"][1], 0, odd)}, optional=envelope))


SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))


@SETTINGS
@given(events(odd=False))
def test_generated_valid_events_same_bytes_as_fastavro(ev: dict[str, Any]) -> None:
    want = outcome(fastavro_bytes, ev)
    assert outcome(NOW, ev) == want
    if want[0] == "bytes":  # and it was the fast path that wrote them, unless a string is not UTF-8
        got = outcome(FAST, ev)
        assert got == want or (got[0] == "refused" and _has_surrogate(ev))


@SETTINGS
@given(events(odd=True))
def test_generated_odd_events_same_outcome_as_before(ev: dict[str, Any]) -> None:
    """Values of wrong types anywhere: written or refused exactly as the fastavro path does."""
    assert outcome(NOW, ev) == outcome(OLD, ev)
    fast = outcome(FAST, ev)
    if fast[0] == "bytes":  # what the fast path writes, fastavro writes alike
        assert fast == outcome(fastavro_bytes, ev)


@SETTINGS
@given(st.lists(processes(odd=False), min_size=1, max_size=3), st.data())
def test_process_mutated_in_place_between_encodes(procs: list[dict[str, Any]], data: st.DataObject) -> None:
    """One Process dict written, changed in place (a leaf replaced, maybe by an equal value of
    another type), written again: both times what fastavro does. The generated values are
    copied first: a strategy may hand out the same constant object again, and mutating it would
    change later draws (hypothesis' FlakyStrategyDefinition)."""
    for p in copy.deepcopy(procs):
        ev = {"process_exec": {"process": p, "parent": p}}
        assert outcome(NOW, ev) == outcome(fastavro_bytes, ev)
        paths = list(_leaf_paths(p))
        if not paths:
            continue
        path = data.draw(st.sampled_from(paths))
        parent = p
        for k in path[:-1]:
            parent = parent[k]
        old = parent[path[-1]]
        parent[path[-1]] = data.draw(st.sampled_from(_equal_but_other_type(old) + ["changed", 7, None]))
        assert outcome(NOW, ev) == outcome(OLD, ev)


def _leaf_paths(o: Any, path: tuple[Any, ...] = ()) -> Any:
    if isinstance(o, dict):
        for k, v in o.items():
            yield from _leaf_paths(v, (*path, k))
    elif isinstance(o, list):
        for i, v in enumerate(o):
            yield from _leaf_paths(v, (*path, i))
    elif path:
        yield path


def _equal_but_other_type(v: Any) -> list[Any]:
    if v is True or v is False:
        return [int(v), float(v)]
    if type(v) is int:
        return [float(v), Int(v)] + ([bool(v)] if v in (0, 1) else [])
    return []


def _has_surrogate(o: Any) -> bool:
    if isinstance(o, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in o)
    if isinstance(o, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in o.items())
    if isinstance(o, list):
        return any(_has_surrogate(v) for v in o)
    return False


# ---- the seed event and the events the enricher builds -----------------------------------------

def test_seed_events_same_bytes_as_fastavro() -> None:
    for ev in (json_events.exec_event(), json_events.exit_event(), json_events.kprobe_event(),
               json_events.exec_event(namespace=None), json_events.exec_event(labels={"a": "b", "c": ""})):
        want = fastavro_bytes(ev)
        assert FAST(ev) == want
        assert codec.encode("event", ev) == codec.SINGLE_OBJECT_MAGIC + codec.schema("event").fingerprint + want
        assert codec.decode("event", codec.encode("event", ev)) == codec.decode(
            "event", codec.SINGLE_OBJECT_MAGIC + codec.schema("event").fingerprint + want)


def test_memo_never_confuses_equal_values_of_other_types() -> None:
    """1 == True == 1.0 in Python; in Avro a bool in a long field is refused. A namespace record
    written once must not be reused for an equal-looking one of other types."""
    ev = json_events.exec_event()
    ns = {"mnt": {"inum": 1, "is_host": True}, "pid": {"inum": 0, "is_host": False}}
    ev["process_exec"]["process"]["ns"] = ns
    assert FAST(ev) == fastavro_bytes(ev)
    for leaf, other in (("inum", True), ("inum", 1.0), ("is_host", 1), ("inum", Int(1))):
        bad = copy.deepcopy(ev)
        bad["process_exec"]["process"]["ns"]["mnt"][leaf] = other
        with pytest.raises(Refused):
            FAST(bad)
        assert outcome(NOW, bad) == outcome(OLD, bad)
    assert FAST(ev) == fastavro_bytes(ev)  # the memo still answers for the real one


def _exec_rec(pid: int, ppid: int, ktime: int, procfs: bool = False, nspid: int = 0) -> r.ExecRecord:
    kind = r.REC_PROCFS if procfs else r.REC_EXEC
    return r.ExecRecord(
        r.Header(kind, 1, 0, pid, pid, ktime), ppid, 0, ktime, 0, 77, 0, 0, 0, 0, 0, 0, 0, 0,
        0xFFFFFFFF, 0, 0x1FFFFFFFFFF, 0x1FFFFFFFFFF, 0, tuple(0xF0000000 + i for i in range(10)), 0, nspid,
        1234, 1, 0o100755, b"true", b"/usr/bin/true", b"/usr/bin/true\0-x\0", b"/tmp", b"cri-containerd-abc.scope")


def test_enricher_events_follow_process_changes() -> None:
    """Events the real EventBuilder makes while a process changes between them: its pod arrives
    after its exec, the parent's refcnt moves with every child, the exit drops refcnt to 0.
    Every event is written as fastavro writes it and decodes to what the builder made."""
    pods: dict[str, Any] = {}

    def resolver(entry: Any) -> dict[str, Any]:
        return {"docker": "abc", **({"pod": pods["pod"]} if "pod" in pods else {})}

    b = EventBuilder(ProcessCache(), pod_resolver=resolver, process_cred=True, process_ns=True)
    node, boot = "node-a", 1_700_000_000_000_000_000
    made: list[dict[str, Any]] = []

    def add(ev: dict[str, Any] | None) -> None:
        if ev is not None:
            made.append(ev)
            assert FAST(ev) == fastavro_bytes(ev)
            assert codec.decode("event", codec.encode("event", ev)) == codec.decode(
                "event", codec.SINGLE_OBJECT_MAGIC + codec.schema("event").fingerprint + fastavro_bytes(ev))

    add(b.on_record(_exec_rec(500, 1, 10, procfs=True), node, boot, []))
    for i, pid in enumerate((501, 502)):
        b.on_record(r.decode(r.encode_fork(pid, 20 + i, 500, 20 + i)), node, boot, [])
        add(b.on_record(_exec_rec(pid, 500, 30 + i, nspid=1), node, boot, []))
    pods["pod"] = {"namespace": "default", "name": "late", "pod_labels": {"app": "x"},
                   "container": {"id": "containerd://abc", "name": "c", "pid": 1}}
    add(b.on_record(r.ExitRecord(r.Header(r.REC_EXIT, 1, 0, 501, 501, 40), 0, 500, 20), node, boot, []))
    pods["pod"] = {**pods["pod"], "pod_labels": {"app": "y"}}  # a later pod object, other labels
    b.cache.by_pid[502].process["pod"] = pods["pod"]
    add(b.on_record(r.ExitRecord(r.Header(r.REC_EXIT, 1, 0, 502, 502, 50), 9, 500, 21), node, boot, []))

    decoded = [codec.decode("event", codec.encode("event", ev)) for ev in made]
    execs = [d["process_exec"] for d in decoded if d["process_exec"]]
    exits = [d["process_exit"] for d in decoded if d["process_exit"]]
    assert [e["process"]["pod"] for e in execs] == [None, None, None]  # pod not known at exec
    assert [e["parent"]["refcnt"] for e in execs[1:]] == [2, 3]  # the parent's count moves
    assert exits[0]["process"]["pod"]["name"] == "late" and exits[0]["process"]["refcnt"] == 0
    assert exits[1]["process"]["pod"]["pod_labels"] == {"app": "y"}
    assert exits[1]["signal"] == "SIGKILL"
    assert exits[1]["parent"]["refcnt"] == 2


def test_schema_constructs_not_compiled_fall_back_to_fastavro() -> None:
    enum_schema = fastavro.parse_schema({"type": "record", "name": "E", "fields": [
        {"name": "e", "type": {"type": "enum", "name": "Kind", "symbols": ["A"]}}]})
    with pytest.raises(ValueError, match="enum"):
        compile_writer(enum_schema)
    assert codec._compiled("raw_batch") is not None  # the raw batch schema compiles too


@SETTINGS
@given(st.fixed_dictionaries({
    "node_name": st.text(max_size=20), "boot_time_ns": st.integers(-(2**63), 2**63 - 1),
    "layout_id": st.sampled_from(["", r.layout_id()]), "instance_id": st.text(max_size=32),
    "seq": st.integers(0, 2**63 - 1), "created_ns": st.integers(0, 2**63 - 1),
    "record_count": st.integers(-(2**31), 2**31) | st.sampled_from([0, 2000, True, 1.0]),
    "records": st.binary(max_size=3000) | st.sampled_from([bytearray(b"x"), "s", None]),
}, optional={"host_ns": st.lists(st.integers(0, 2**32) | st.sampled_from([True, -1]), max_size=10),
             "ringbuf_lost": st.integers(0, 2**40)}))
def test_raw_batches_same_outcome_as_fastavro(msg: dict[str, Any]) -> None:
    """The collector's raw batches go through the generated writer too."""
    raw = codec.schema("raw_batch").parsed

    def plain(m: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, raw, m)
        return buf.getvalue()

    assert outcome(lambda m: codec.encode_body("raw_batch", m), msg) == outcome(
        lambda m: codec.encode_body_fastavro("raw_batch", m), msg)
    fast = outcome(codec._compiled("raw_batch"), msg)
    if fast[0] == "bytes":
        assert fast == outcome(plain, msg)
