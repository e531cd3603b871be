"""Coverage-guided fuzzing (atheris/libFuzzer) of the decoders that read outside bytes.

    .venv/bin/python tests/fuzz_atheris.py records -runs=200000      # or -max_total_time=600
    targets: records, framing, raw_batch, event, all

A target fails only if a decoder raises something other than its own error type (the services
turn those into dead letters and counters) or crashes the interpreter. tests/test_fuzz_decoders.py
runs each target briefly in CI.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports():
    from bpf import records
    from enricher.raw_decoder import BadInput, decode_batch
    from exporters import protojson
    from schemas import codec


def fuzz_records(data: bytes) -> None:
    try:
        records.decode(data)
    except records.RecordError:
        pass


def fuzz_framing(data: bytes) -> None:
    try:
        out = codec.split_records(data)
    except codec.CodecError:
        return
    assert codec.frame_records(out) == data


def fuzz_raw_batch(data: bytes) -> None:
    # half the inputs get our header, so the fuzzer reaches the Avro body and the records
    if data[:1] and data[0] & 1:
        data = codec.SINGLE_OBJECT_MAGIC + codec.schema("raw_batch").fingerprint + data[1:]
    try:
        batch = decode_batch(data)
    except BadInput:
        return
    for raw in batch.raw_records:
        fuzz_records(raw)


def fuzz_event(data: bytes) -> None:
    if data[:1] and data[0] & 1:
        data = codec.SINGLE_OBJECT_MAGIC + codec.schema("event").fingerprint + data[1:]
    try:
        ev = codec.decode("event", data)
    except codec.CodecError:
        return
    protojson.dumps(ev)  # what decodes must also render for the JSON export


TARGETS = {"records": fuzz_records, "framing": fuzz_framing, "raw_batch": fuzz_raw_batch,
           "event": fuzz_event}


def fuzz_all(data: bytes) -> None:
    if not data:
        return
    fn = list(TARGETS.values())[data[0] % len(TARGETS)]
    fn(data[1:])


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in (*TARGETS, "all"):
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)},all}} [libFuzzer options]")
    target = fuzz_all if sys.argv[1] == "all" else TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
