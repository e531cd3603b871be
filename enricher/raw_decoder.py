"""Raw batch decoding: RawBatch envelope → layout check → records. Anything that does not fit
raises BadInput with a reason; the service sends it to the dead-letter topic."""

from __future__ import annotations

from dataclasses import dataclass, field

from bpf import records
from schemas import codec


class BadInput(ValueError):
    pass


@dataclass(slots=True)
class Batch:
    node_name: str
    boot_time_ns: int
    layout_id: str
    instance_id: str
    seq: int
    created_ns: int
    ringbuf_lost: int
    host_ns: list[int]
    raw_records: list[bytes] = field(repr=False)


LAYOUT_ID = records.layout_id()


def decode_batch(value: bytes) -> Batch:
    try:
        msg = codec.decode("raw_batch", value)
    except codec.CodecError as exc:
        raise BadInput(f"not a raw batch: {exc}") from exc
    if msg["layout_id"] != LAYOUT_ID:
        raise BadInput(f"unknown record layout {msg['layout_id']!r} (this enricher reads {LAYOUT_ID})")
    try:
        raw = codec.split_records(msg["records"])
    except codec.CodecError as exc:
        raise BadInput(f"broken record framing: {exc}") from exc
    if len(raw) != msg["record_count"]:
        raise BadInput(f"batch says {msg['record_count']} records, holds {len(raw)}")
    return Batch(msg["node_name"], msg["boot_time_ns"], msg["layout_id"], msg["instance_id"],
                 msg["seq"], msg["created_ns"], msg["ringbuf_lost"], list(msg.get("host_ns") or []),
                 raw)
