"""The compiled Avro writer (schemas/native/avro_write.c via schemas/native_writer.py): byte-identical
to the pure-Python generated writer (what TETRAPIPE_NO_EXTENSIONS=1 uses) for the same input, on
the enricher's real events and on values generated from the schema (derandomized: the same
examples every run); what it refuses goes on to the Python writer and fastavro
(tests/test_codec_writer.py checks codec.encode_body, now on this path, against fastavro)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from bench.synth import ProcessStream
from bpf import records
from collector.batcher import Batcher
from enricher.raw_decoder import decode_batch
from enricher.service import Enricher
from schemas import codec, native_writer
from tests.conftest import skip_or_fail
from tests.test_codec_writer import events, fastavro_bytes, outcome, processes
from tetrapipe.config import Config

PARSED = codec.schema("event").parsed
PY = codec._compiled("event")  # the pure-Python generated writer
NATIVE = native_writer.writer(PARSED)
FIXED = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@pytest.fixture(autouse=True)
def _built() -> None:
    if NATIVE is None:
        skip_or_fail("compiled Avro writer not built (no cc or no Python.h, or TETRAPIPE_NO_EXTENSIONS set)")


@pytest.mark.parametrize("cred_ns", [False, True], ids=["lean", "cred+ns"])
def test_enricher_events_byte_identical(cred_ns: bool) -> None:
    """The synthetic fork/exec/exit stream through the real enricher: every event written by the
    compiled writer is the Python writer's bytes, which are fastavro's."""
    enr = Enricher(Config(node_name="native-test", enable_process_cred=cred_ns, enable_process_ns=cred_ns))
    b = Batcher("native-test", records.layout_id())
    evs: list[dict[str, Any]] = []
    recs = list(ProcessStream().processes(300))
    for i in range(0, len(recs), 100):
        got, bad = enr.handle_batch(decode_batch(b.frame(recs[i:i + 100])))
        assert bad == []
        evs.extend(got)
    assert len(evs) == 601
    for ev in evs:
        ev.pop("_origin", None)
        assert NATIVE(ev) == PY(ev) == fastavro_bytes(ev)
    assert (codec.encode_body("event", evs[1]) == NATIVE(evs[1]))


@FIXED
@given(events(odd=False))
def test_generated_events_byte_identical(ev: dict[str, Any]) -> None:
    py, nat = outcome(PY, ev), outcome(NATIVE, ev)
    assert nat == py or (nat[0] == "refused" and py[0] == "refused")


@FIXED
@given(events(odd=True))
def test_odd_values_written_alike_or_refused(ev: dict[str, Any]) -> None:
    """Values of wrong types anywhere: the compiled writer writes only what the Python writer
    writes, the same bytes; whatever it refuses goes on to the Python writer and fastavro."""
    nat = outcome(NATIVE, ev)
    if nat[0] == "bytes":
        assert nat == outcome(PY, ev)


@FIXED
@given(processes(odd=True))
def test_odd_processes_written_alike_or_refused(p: dict[str, Any]) -> None:
    ev = {"process_exec": {"process": p, "parent": p}}
    nat = outcome(NATIVE, ev)
    if nat[0] == "bytes":
        assert nat == outcome(PY, ev)


def test_refusals() -> None:
    ok = {"process_exec": {"process": {"exec_id": "x", "pid": 1}}}
    assert NATIVE(ok) == PY(ok)
    for bad in ({"process_exec": {"process": {"exec_id": 1}}},      # wrong type
                {"process_exec": {"process": {"pid": True}}},       # bool for a long
                {"process_exec": {"process": {"pid": 2**63}}},      # out of range
                {"process_exec": {"process": {"exec_id": "\udc80"}}},  # not encodable as UTF-8
                {"process_exec": {"process": {"-type": "x"}}},      # fastavro's branch naming
                {"node_labels": {1: "a"}},                          # map key not a str
                {"process_exec": ("io.tetrapipe.v1.ProcessExec", {})}):
        with pytest.raises(ValueError):
            NATIVE(bad)
        assert outcome(lambda e: codec.encode_body("event", e), bad) == outcome(
            lambda e: codec.encode_body_fastavro("event", e), bad)


def test_switch_turns_it_off() -> None:
    """TETRAPIPE_NO_EXTENSIONS=1: codec has no compiled writer; events are the same bytes."""
    code = ("from schemas import codec; ev = {'process_exec': {'process': {'exec_id': 'x', 'pid': 70000}}}; "
            "print(codec._native('event') is None, codec.encode_body('event', ev).hex())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
                         env={**os.environ, "TETRAPIPE_NO_EXTENSIONS": "1"}).stdout.split()
    assert out[0] == "True"
    assert bytes.fromhex(out[1]) == NATIVE({"process_exec": {"process": {"exec_id": "x", "pid": 70000}}})
