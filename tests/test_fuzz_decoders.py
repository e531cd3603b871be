"""Property tests (hypothesis) of everything that reads bytes from outside: the raw-record
decoder (bpf/records.py), the record framing inside a batch (schemas/codec.py), the Avro decoder
(both schemas) and the enricher's batch decoder. Whatever the bytes, each raises only its own
error type (which the services turn into a dead letter + counter) or returns a value; valid
input round-trips. tests/fuzz_atheris.py runs the same targets coverage-guided."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpf import records
from collector.batcher import Batcher
from enricher.raw_decoder import BadInput, decode_batch
from schemas import codec

FAST = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

cstr = st.binary(max_size=300).map(lambda b: b.replace(b"\0", b"x"))


@st.composite
def exec_records(draw: st.DrawFn) -> records.ExecRecord:
    u32 = st.integers(0, 2**32 - 1)
    u64 = st.integers(0, 2**64 - 1)
    pid = draw(u32)
    return records.ExecRecord(
        records.Header(draw(st.sampled_from([records.REC_EXEC, records.REC_PROCFS])), 1, 0, pid,
                       pid, draw(u64)),
        ppid=draw(u32), flags=draw(u32), start_time=draw(u64), parent_start_time=draw(u64),
        cgroup_id=draw(u64), uid=draw(u32), gid=draw(u32), euid=draw(u32), egid=draw(u32),
        suid=draw(u32), sgid=draw(u32), fsuid=draw(u32), fsgid=draw(u32), auid=draw(u32),
        securebits=draw(u32), cap_permitted=draw(u64), cap_effective=draw(u64),
        cap_inheritable=draw(u64), ns=tuple(draw(st.lists(u32, min_size=10, max_size=10))),
        user_ns_level=draw(u32), nspid=draw(u32), exe_ino=draw(u64), exe_nlink=draw(u32),
        exe_mode=draw(u32), comm=draw(st.binary(max_size=16).map(lambda b: b.split(b"\0")[0])),
        filename=draw(st.binary(max_size=5000)), args=draw(st.binary(max_size=5000)),
        cwd=draw(st.binary(max_size=300)), cgroup_name=draw(cstr))


def decode_any_record(data: bytes) -> None:
    try:
        records.decode(data)
    except records.RecordError:
        pass


@FAST
@given(st.binary(max_size=2000))
def test_record_decoder_takes_any_bytes(data: bytes) -> None:
    decode_any_record(data)


@FAST
@given(st.integers(0, 7), st.integers(0, 3), st.binary(max_size=600))
def test_record_decoder_with_plausible_header(kind: int, version: int, body: bytes) -> None:
    """Right size in the header, any kind/version/body: reaches the per-kind decoders."""
    size = records.HEADER.size + len(body)
    data = records.HEADER.pack(kind, version, size & 0xFFFFFFFF, 1, 1, 1) + body
    decode_any_record(data)


@FAST
@given(exec_records())
def test_exec_record_round_trip(rec: records.ExecRecord) -> None:
    data = records.encode_exec(rec)
    got = records.decode(data)
    assert isinstance(got, records.ExecRecord)
    assert got.filename == rec.filename[: records.PATH_MAX - 1]
    assert got.args == rec.args[: records.ARGS_MAX - 1]
    assert got.cwd == rec.cwd[: records.PATH_MAX - 1]
    assert got.header.pid == rec.header.pid and got.ns == rec.ns


@FAST
@given(exec_records(), st.data())
def test_exec_record_mutations(rec: records.ExecRecord, data: st.DataObject) -> None:
    """Flip, cut or grow a valid record: a RecordError or a record, never anything else."""
    raw = bytearray(records.encode_exec(rec))
    op = data.draw(st.sampled_from(["flip", "cut", "grow", "lens"]))
    if op == "flip":
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
    elif op == "cut":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif op == "grow":
        raw += data.draw(st.binary(min_size=1, max_size=50))
    else:  # string lengths that lie (the last four u16 of the fixed part)
        off = records.HEADER.size + records.EXEC_FIXED.size - 8
        struct.pack_into("<HHHH", raw, off, *data.draw(st.lists(st.integers(0, 65535), min_size=4,
                                                                  max_size=4)))
    decode_any_record(bytes(raw))


@FAST
@given(st.lists(st.binary(max_size=300), max_size=40))
def test_framing_round_trip(recs: list[bytes]) -> None:
    assert codec.split_records(codec.frame_records(recs)) == recs


@FAST
@given(st.binary(max_size=1000))
def test_framing_takes_any_bytes(blob: bytes) -> None:
    try:
        out = codec.split_records(blob)
    except codec.CodecError:
        return
    assert codec.frame_records(out) == blob  # what splits cleanly is exactly its framing


def _avro_any(name: str, data: bytes) -> None:
    try:
        codec.decode(name, data)
    except codec.CodecError:
        pass


@FAST
@given(st.sampled_from(["raw_batch", "event"]), st.binary(max_size=400))
def test_avro_decoder_takes_any_bytes(name: str, body: bytes) -> None:
    _avro_any(name, body)
    _avro_any(name, codec.SINGLE_OBJECT_MAGIC + codec.schema(name).fingerprint + body)


@FAST
@given(st.lists(st.binary(max_size=200), max_size=10), st.integers(0, 2**40), st.data())
def test_batch_decoder_mutations(recs: list[bytes], lost: int, data: st.DataObject) -> None:
    msg = bytearray(Batcher("node", records.layout_id()).frame(recs, lost))
    assert decode_batch(bytes(msg)).raw_records == recs
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(msg) - 1))
        msg[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        msg = msg[: data.draw(st.integers(0, len(msg)))]
    try:
        batch = decode_batch(bytes(msg))
    except BadInput:
        return
    for raw in batch.raw_records:  # what passes the envelope goes on to the record decoder
        decode_any_record(raw)


def test_atheris_decoders_short_run(tmp_path: Path) -> None:
    """Coverage-guided run of every decoder target (a few seconds each); longer runs:
    tests/fuzz_atheris.py TARGET -max_total_time=SECONDS."""
    script = Path(__file__).with_name("fuzz_atheris.py")
    for target in ("records", "framing", "raw_batch", "event", "policy", "filters"):
        r = subprocess.run([sys.executable, str(script), target, "-runs=20000", "-max_total_time=3",
                            # libFuzzer's RSS check reads ru_maxrss, which Linux keeps across
                            # execve: a fuzz run forked from a big pytest process inherited its
                            # peak (1.2 GB) and "ran out of memory" at once. Bound allocations.
                            "-rss_limit_mb=0", "-malloc_limit_mb=1024"], capture_output=True, text=True, timeout=120,
                           cwd=tmp_path)
        assert r.returncode == 0, f"{target}:\n{r.stderr[-3000:]}"
        assert "Done" in r.stderr or "DONE" in r.stderr, r.stderr[-2000:]


@FAST
@given(st.text(), st.text(), st.sampled_from(["process_exec", "process_exit"]))
def test_compact_view_is_one_line_without_control_characters(binary: str, args: str, kind: str) -> None:
    """Event data on the terminal (the live view, getevents -o compact): one line, no control
    character that could move the cursor, rewrite the title or fake another event."""
    from exporters import compact

    line = compact.render({kind: {"process": {"binary": binary, "arguments": args}}, "node_name": "n"})
    assert line and not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in line), repr(line)
