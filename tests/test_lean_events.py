"""Lean events (issue 16 item 2): Tetragon's defaults (``cap``, ``process_credentials`` and
``binary_properties`` only with ``enable_process_cred``, ``ns`` only with ``enable_process_ns``)
and capability sets as bit masks on the bus, named only where events leave tetrapipe (the
protojson renderer: JSON file, fluentd, gRPC, getevents, compact view). No Kafka: pure CPU."""

from __future__ import annotations

import copy
import io
import json
import struct
from pathlib import Path
from typing import Any

import fastavro
import pytest
from json_events import exec_event

from bpf import records as r
from enricher.event_builder import EventBuilder
from enricher.process_cache import ProcessCache
from exporters import compact, fluentd, grpc_api, protojson
from schemas import capabilities, codec
from tetrapipe.config import Config

HISTORY = Path(codec.__file__).parent / "history"
CRED_FIELDS = {"cap", "process_credentials", "binary_properties"}
BOOT = 1_700_000_000_000_000_000
# masks an event may carry: none, root's 41, one bit, bit 63 (negative as an Avro long), an
# unnamed bit (41), a sparse set
MASKS = [0, (1 << 41) - 1, 1 << 21, 1 << 63, 1 << 41, 0b1010_0000_0000_0100_0001]


def _exec_rec(pid: int, ppid: int, ktime: int, mode: int = 0o100755, euid: int = 0) -> r.ExecRecord:
    return r.ExecRecord(
        r.Header(r.REC_EXEC, 1, 0, pid, pid, ktime), ppid, 0, ktime, 0, 77,
        1000, 1000, euid, 1000, 0, 1000, 0, 1000,  # uid gid euid egid suid sgid fsuid fsgid
        0xFFFFFFFF, 0, 0x1FFFFFFFFFF, 0x3000, 0x20, tuple(0xF0000000 + i for i in range(10)),
        0, 0, 1234, 1, mode, b"su", b"/usr/bin/su", b"/usr/bin/su\0-\0", b"/tmp", b"x.scope")


def _procs(ev: dict[str, Any]) -> list[dict[str, Any]]:
    body = next(v for k, v in ev.items() if k.startswith("process_") and v)
    return [p for p in (body.get("process"), body.get("parent"), *body.get("ancestors", [])) if p]


def _run(builder: EventBuilder) -> list[dict[str, Any]]:
    """A parent, a setuid child of it, the child's clone and the child's exit."""
    evs = [builder.on_record(_exec_rec(10, 1, 100), "n", BOOT, [])]
    evs.append(builder.on_record(_exec_rec(11, 10, 200, mode=0o104755, euid=0), "n", BOOT, []))
    builder.on_record(r.decode(r.encode_fork(12, 300, 11, 300)), "n", BOOT, [])
    evs.append(builder.on_record(r.decode(r.encode_exit(11, 11, 400, 0, 10, 200)), "n", BOOT, []))
    return [e for e in evs if e is not None]


def test_defaults_are_tetragons_no_cap_ns_or_credentials() -> None:
    evs = _run(EventBuilder(ProcessCache(), ancestors_for=frozenset({"base"})))
    assert len(evs) == 3
    for ev in evs:
        for p in _procs(ev):
            assert not CRED_FIELDS & set(p) and "ns" not in p, sorted(p)
        line = protojson.dumps(codec.decode("event", codec.encode("event", ev)))
        assert '"cap"' not in line and '"ns"' not in line and "process_credentials" not in line
    assert not Config().enable_process_cred and not Config().enable_process_ns


@pytest.mark.parametrize(("cred", "ns"), [(True, False), (False, True), (True, True)])
def test_each_flag_adds_its_fields_to_process_parent_and_exit(cred: bool, ns: bool) -> None:
    evs = _run(EventBuilder(ProcessCache(), process_cred=cred, process_ns=ns))
    exec_child, exit_child = evs[1]["process_exec"], evs[2]["process_exit"]
    for p in (exec_child["process"], exec_child["parent"], exit_child["process"], exit_child["parent"]):
        assert ("cap" in p) is cred and ("process_credentials" in p) is cred
        assert ("ns" in p) is ns
    if cred:  # the setuid exec: binary_properties (Tetragon: only with --enable-process-cred)
        child = exec_child["process"]
        assert child["binary_properties"]["privileges_changed"] == ["PRIVILEGES_RAISED_EXEC_FILE_SETUID"]
        assert child["cap"] == {"permitted_mask": 0x1FFFFFFFFFF, "effective_mask": 0x3000,
                                "inheritable_mask": 0x20}
        doc = protojson.to_protojson(codec.decode("event", codec.encode("event", evs[1])))
        assert doc["process_exec"]["process"]["cap"] == {
            "permitted": capabilities.EVENT_NAMES, "effective": ["CAP_NET_ADMIN", "CAP_NET_RAW"],
            "inheritable": ["CAP_KILL"]}
    else:
        assert "binary_properties" not in exec_child["process"]


def _named(ev: dict[str, Any]) -> dict[str, Any]:
    """The event as the enricher wrote it before the masks: name lists."""
    old = copy.deepcopy(ev)
    for p in _procs(old):
        for cap in (p.get("cap"), (p.get("process_credentials") or {}).get("caps")):
            if cap:
                for s in capabilities.SETS:
                    m = cap.pop(s + "_mask")
                    cap[s] = capabilities.names(m)
    return old


def _masked(i: int) -> dict[str, Any]:
    ev = exec_event(pid=100 + i)
    p = ev["process_exec"]["process"]
    p["cap"] = capabilities.masks(MASKS[i], MASKS[-1 - i], MASKS[(i + 2) % len(MASKS)])
    p["process_credentials"] = {"uid": 0, "securebits": [],
                                "caps": capabilities.masks(MASKS[-1 - i], MASKS[i], 0)}
    ev["process_exec"]["parent"]["cap"] = capabilities.masks(MASKS[i], 0, 0)
    return ev


def _grpc(ev: dict[str, Any]) -> Any:
    try:
        return grpc_api.to_message(protojson.to_protojson(ev))
    except grpc_api.NotInApi as exc:
        return str(exc)


@pytest.mark.parametrize("i", range(len(MASKS)))
def test_edges_render_masks_exactly_as_the_name_lists_they_replace(i: int) -> None:
    """JSON line, protojson reference renderer, fluentd record, gRPC message and compact line of
    an event with masks are those of the same event with name lists (today's JSON)."""
    new = codec.decode("event", codec.encode("event", _masked(i)))
    old = codec.decode("event", codec.encode("event", _named(_masked(i))))
    assert new != old  # masks on the bus, names not
    assert protojson.dumps(new) == protojson.dumps(old)
    assert protojson._event_renderers()[0](new) == protojson._event_renderers()[0](old) == protojson.to_protojson(old)
    assert fluentd.pack_events([new], "tp") == fluentd.pack_events([old], "tp")
    assert _grpc(new) == _grpc(old)  # an unnamed bit (CAP_41) has no enum value: both skipped
    for color in (False, True):
        r_ = compact.Compact(color=color)
        assert r_.render(protojson.to_protojson(new)) == r_.render(protojson.to_protojson(old))
    assert "_mask" not in protojson.dumps(new)


def test_mask_names_bits_in_order_and_a_signed_long_carries_bit_63() -> None:
    assert capabilities.names(0b111) == ["CAP_CHOWN", "DAC_OVERRIDE", "CAP_DAC_READ_SEARCH"]
    assert capabilities.names(1 << 41) == ["CAP_41"]
    assert capabilities.to_long(1 << 63) == -(1 << 63)
    assert capabilities.names(capabilities.to_long(1 << 63)) == ["CAP_63"]
    assert capabilities.set_names({"effective": ["CAP_KILL"]}, "effective") == ["CAP_KILL"]
    assert capabilities.set_names({"effective": ["CAP_KILL"], "effective_mask": 0}, "effective") == []


def _v2_message(ev: dict[str, Any]) -> bytes:
    old = json.loads((HISTORY / "event.v2.avsc").read_text())
    parsed = fastavro.parse_schema(old, _force=True)
    fp = struct.pack("<Q", codec.crc64_avro(fastavro.schema.to_parsing_canonical_form(parsed).encode()))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, ev)
    return codec.SINGLE_OBJECT_MAGIC + fp + buf.getvalue()


def test_events_written_before_the_masks_decode_and_render_the_same() -> None:
    """An event on the bus from an enricher before this change (schema v2, name lists) is read
    by the current reader (masks null) and exported as it was."""
    old = _named(_masked(1))
    got = codec.decode("event", _v2_message(old))
    p = got["process_exec"]["process"]
    assert p["cap"]["permitted_mask"] is None
    assert p["cap"]["permitted"] == old["process_exec"]["process"]["cap"]["permitted"]
    assert protojson.dumps(got) == protojson.dumps(_masked(1))


def test_an_old_reader_reads_new_events_with_the_writer_schema() -> None:
    """v2 reader, current writer schema (as from the registry): the masks are dropped by schema
    resolution, the name lists take their default (empty): old readers see no capabilities."""
    v2 = fastavro.parse_schema(json.loads((HISTORY / "event.v2.avsc").read_text()), _force=True)
    body = codec.encode("event", _masked(1))[10:]
    got = fastavro.schemaless_reader(io.BytesIO(body), codec.schema("event").parsed, v2)
    assert got["process_exec"]["process"]["cap"] == {"permitted": [], "effective": [], "inheritable": []}
    assert got["process_exec"]["process"]["pid"] == 101
