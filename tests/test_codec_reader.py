"""The generated Avro reader (schemas/compiled_reader.py) behind codec.decode: for every message
the same value fastavro's reader gives (or the same CodecError, whatever the bytes: cut, garbage,
flipped, or odd encodings fastavro accepts and our writers never produce), fresh objects on every
decode although sub-records are memoised, and older writer schemas still resolved by fastavro."""

from __future__ import annotations

import io
import struct
from typing import Any

import fastavro
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from schemas import codec
from schemas.compiled_reader import compile_reader, read_long
from tests import json_events
from tests.test_codec_writer import _exec_rec, events, fastavro_bytes, outcome

PARSED = codec.schema("event").parsed
HEADER = codec.SINGLE_OBJECT_MAGIC + codec.schema("event").fingerprint
FAST = codec._reader("event")
SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))


def fastavro_decode(body: bytes) -> tuple[str, Any]:
    """What codec.decode did before the generated reader: fastavro, then the trailing-bytes check."""
    buf = io.BytesIO(body)
    try:
        rec = fastavro.schemaless_reader(buf, PARSED, PARSED)
    except Exception:  # noqa: BLE001  the refusal itself is compared
        return ("refused", "CodecError")
    if buf.tell() != len(body):
        return ("refused", "CodecError")
    return ("value", rec)


def codec_decode(body: bytes) -> tuple[str, Any]:
    try:
        return ("value", codec.decode("event", HEADER + body))
    except codec.CodecError:  # any other exception fails the test: the callers catch only this
        return ("refused", "CodecError")


def fast_agrees(body: bytes) -> bool:
    """The generated reader alone: it raises, or returns exactly fastavro's value and position."""
    try:
        value, end = FAST(body)
    except Exception:  # noqa: BLE001  left to fastavro
        return True
    buf = io.BytesIO(body)
    return value == fastavro.schemaless_reader(buf, PARSED, PARSED) and end == buf.tell()


@SETTINGS
@given(events(odd=False))
def test_generated_events_decode_as_fastavro(ev: dict[str, Any]) -> None:
    written = outcome(lambda e: codec.encode_body("event", e), ev)
    assume(written[0] == "bytes")  # a value the writers refuse (e.g. a surrogate) has no bytes
    body = written[1]
    want = fastavro_decode(body)
    assert want[0] == "value"
    assert codec_decode(body) == want
    assert FAST(body) == (want[1], len(body))  # read by the fast path, not handed to fastavro
    assert codec.decode("event", codec.encode("event", ev)) == want[1]


@SETTINGS
@given(events(odd=False), st.data())
def test_cut_flipped_and_grown_bodies_decode_or_refuse_as_fastavro(ev: dict[str, Any], data: st.DataObject) -> None:
    written = outcome(lambda e: codec.encode_body("event", e), ev)
    assume(written[0] == "bytes")
    raw = bytearray(written[1])
    op = data.draw(st.sampled_from(["cut", "flip", "grow", "insert"]))
    if op == "cut":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif op == "flip":
        for _ in range(data.draw(st.integers(1, 3))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= data.draw(st.integers(1, 255))
    elif op == "grow":
        raw += data.draw(st.binary(min_size=1, max_size=20))
    else:
        i = data.draw(st.integers(0, len(raw)))
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=12))
    body = bytes(raw)
    assert codec_decode(body) == fastavro_decode(body)
    assert fast_agrees(body)


@SETTINGS
@given(st.binary(max_size=400))
def test_garbage_decodes_or_refuses_as_fastavro(body: bytes) -> None:
    assert codec_decode(body) == fastavro_decode(body)
    assert fast_agrees(body)


# ---- encodings fastavro reads that our writers never produce: the fast path leaves them to it -----

def zz(n: int) -> bytes:
    """An Avro long."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def s(text: str) -> bytes:
    b = text.encode()
    return zz(len(b)) + b


TAIL = s("node") + zz(5) + s("") + b"\x00" + b"\x00\x00"  # node_name, time, cluster, labels, loader, uprobe


def test_odd_encodings_read_as_fastavro_reads_them() -> None:
    nulls = b"\x00" * 5
    cases = {
        "union index -1 (fastavro: the last branch)": nulls + b"\x01" + zz(7) + TAIL,
        "union index -2 (fastavro: the first branch, null)": nulls + b"\x03" + TAIL,
        "union index 2 (no such branch)": nulls + zz(2) + zz(7) + TAIL,
        "overlong varint for a union index": nulls + b"\x82\x00" + zz(7) + TAIL,
        "overlong varint zero for time": b"\x00" * 6 + s("node") + b"\x80\x80\x00" + s("") + b"\x00" * 3,
        "11-byte varint": b"\x00" * 6 + s("node") + b"\xff" * 10 + b"\x01" + s("") + b"\x00" * 3,
        "10-byte varint past 64 bits": b"\x00" * 6 + s("node") + b"\xff" * 9 + b"\x7f" + s("") + b"\x00" * 3,
        "map block with a byte size (negative count)":
            b"\x00" * 6 + s("node") + zz(5) + s("") + zz(-1) + zz(6) + s("a") + s("bc") + b"\x00" + b"\x00\x00",
        "map in two blocks": b"\x00" * 6 + s("node") + zz(5) + s("") + zz(1) + s("a") + s("b") + zz(1)
                             + s("c") + s("d") + b"\x00" + b"\x00\x00",
        "negative string length": b"\x00" * 6 + zz(-3) + b"abc" + zz(5) + s("") + b"\x00" * 3,
        "string cut by the end of the body": b"\x00" * 6 + zz(40) + b"abc",
        "bad UTF-8": b"\x00" * 6 + zz(1) + b"\xff" + zz(5) + s("") + b"\x00" * 3,
    }
    for what, body in cases.items():
        assert codec_decode(body) == fastavro_decode(body), what
        assert fast_agrees(body), what


def test_odd_arrays_and_booleans_read_as_fastavro() -> None:
    """Inside a Process: a boolean byte 2 (fastavro: True), capability names in two blocks and in a
    block with a byte size, the same names again through the memo."""
    ev = {"process_exec": {"process": {"exec_id": "x", "cap": {"permitted": ["CAP_CHOWN", "CAP_KILL"],
                                                                "effective": ["CAP_CHOWN", "CAP_KILL"]},
                                       "in_init_tree": True}}}
    body = fastavro_bytes(ev)
    plain = s("CAP_CHOWN") + s("CAP_KILL")
    whole = zz(2) + plain + b"\x00"
    assert body.count(whole) == 2
    variants = [body.replace(whole, zz(1) + s("CAP_CHOWN") + zz(1) + s("CAP_KILL") + b"\x00", 1),
                body.replace(whole, zz(-2) + zz(len(plain)) + plain + b"\x00", 1)]
    flag = body.rindex(b"\x02\x01")  # in_init_tree: union branch 1, True
    variants.append(body[:flag + 1] + b"\x02" + body[flag + 2:])
    for b in (body, *variants, body):
        assert codec_decode(b) == fastavro_decode(b)
        assert fast_agrees(b)


def test_read_long_matches_fastavro_on_every_length() -> None:
    for n in (0, -1, 63, -64, 64, 2**31, -(2**31) - 1, 2**62, 2**63 - 1, -(2**63)):
        enc = zz(n)
        assert read_long(enc + b"\x00", 0) == (n, len(enc))
        assert fastavro.schemaless_reader(io.BytesIO(enc), "long") == n


# ---- the seed and the enricher's events; fresh objects; other writer schemas ---------------------

def test_seed_and_enricher_events_decode_as_fastavro() -> None:
    from enricher.event_builder import EventBuilder
    from enricher.process_cache import ProcessCache

    b = EventBuilder(ProcessCache(), process_cred=True, process_ns=True)
    evs = [json_events.exec_event(), json_events.exit_event(), json_events.kprobe_event(),
           json_events.exec_event(namespace=None)]
    evs.append(b.on_record(_exec_rec(500, 1, 10, procfs=True), "n", 1_700_000_000_000_000_000, []))
    evs.append(b.on_record(_exec_rec(501, 500, 11, nspid=1), "n", 1_700_000_000_000_000_000, []))
    for _ in range(2):  # the second time every memoised sub-record is a hit
        for ev in evs:
            body = fastavro_bytes(ev)
            assert codec_decode(body) == fastavro_decode(body)
            assert FAST(body)[1] == len(body)


def test_decoded_events_share_no_objects() -> None:
    """Sub-records come from a memo on the second decode: changing one decoded event must not
    change the next one (fastavro gives fresh objects every time)."""
    from enricher.event_builder import EventBuilder
    from enricher.process_cache import ProcessCache

    builder = EventBuilder(ProcessCache(), process_cred=True, process_ns=True)
    ev = builder.on_record(_exec_rec(600, 1, 10, procfs=True), "n", 1, [])
    creds = ev["process_exec"]["process"]["process_credentials"]
    creds["caps"] = {"effective": ["CAP_CHOWN", "CAP_KILL", "CAP_SETUID"]}
    creds["securebits"] = ["SecBitNoRoot", "SecBitKeepCaps"]
    msg = codec.encode("event", ev)
    first = codec.decode("event", msg)
    want = codec.decode("event", msg)
    p = first["process_exec"]["process"]
    assert p["ns"] and p["process_credentials"] and p["cap"]["permitted_mask"]
    p["ns"]["mnt"]["inum"] = -5
    p["ns"]["uts"] = None
    p["cap"]["permitted"].append("CAP_MADE_UP")
    p["cap"]["effective_mask"] = 0
    p["process_credentials"]["caps"]["effective"].clear()
    p["process_credentials"]["securebits"].append("X")
    second = codec.decode("event", msg)
    assert second == want and second != first
    assert second == fastavro_decode(msg[10:])[1]


def test_confluent_framing_with_our_schema_and_an_older_one() -> None:
    """A registry's parsed copy of the current schema takes the generated reader (same result);
    an older version (schemas/history) is still resolved by fastavro to the current shape."""
    ev = json_events.exec_event()
    body = codec.encode_body("event", ev)
    registry = {1: fastavro.parse_schema(codec.schema("event").raw, _force=True)}
    old_raw = codec._load(codec.SCHEMA_DIR / "history" / "event.v1.avsc").raw
    registry[2] = fastavro.parse_schema(old_raw, _force=True)
    assert codec._is_current("event", registry[1]) and not codec._is_current("event", registry[2])
    msg = codec.CONFLUENT_MAGIC + struct.pack(">I", 1) + body
    assert codec.decode("event", msg, registry_lookup=registry.get) == fastavro_decode(body)[1]
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, registry[2], ev)
    old = codec.CONFLUENT_MAGIC + struct.pack(">I", 2) + buf.getvalue()
    got = codec.decode("event", old, registry_lookup=registry.get)
    assert got == fastavro.schemaless_reader(io.BytesIO(buf.getvalue()), registry[2], PARSED)
    assert got["process_loader"] is None and got["process_exec"]["process"]["binary"] == "/bin/bash"


def test_raw_batch_schema_compiles_and_reads_as_fastavro() -> None:
    parsed = codec.schema("raw_batch").parsed
    msg = {"node_name": "n", "boot_time_ns": 1, "layout_id": "l", "instance_id": "i", "seq": 3,
           "created_ns": 4, "host_ns": [4026531836, 1], "ringbuf_lost": 0, "record_count": 1,
           "records": b"\x00\x01\xff" * 50}
    body = codec.encode_body("raw_batch", msg)
    assert compile_reader(parsed)(body) == (fastavro.schemaless_reader(io.BytesIO(body), parsed), len(body))
    assert codec.decode("raw_batch", codec.encode("raw_batch", msg)) == msg
