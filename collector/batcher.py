"""Frames raw records into RawBatch messages: node, boot time, layout id, instance id and a gap-free
sequence number, so consumers can audit that nothing went missing."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from schemas import codec


def boot_time_ns() -> int:
    """Wall-clock ns at which CLOCK_MONOTONIC (bpf_ktime_get_ns) was 0."""
    return time.time_ns() - time.monotonic_ns()


@dataclass
class Batcher:
    node_name: str
    layout_id: str
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    boot_time: int = field(default_factory=boot_time_ns)
    seq: int = 0
    host_ns: list[int] = field(default_factory=list)

    def frame(self, records: list[bytes], ringbuf_lost: int = 0) -> bytes:
        """One RawBatch message; the sequence number advances by one per call."""
        return self.frame_framed([codec.frame_records(records)], len(records), ringbuf_lost)

    def frame_framed(self, parts: list[bytes | memoryview], count: int, ringbuf_lost: int = 0) -> bytes:
        """The same from records already framed (RecordQueue.take_framed): joined, not walked."""
        msg = codec.encode("raw_batch", {
            "node_name": self.node_name,
            "boot_time_ns": self.boot_time,
            "layout_id": self.layout_id,
            "instance_id": self.instance_id,
            "seq": self.seq,
            "created_ns": time.time_ns(),
            "ringbuf_lost": ringbuf_lost,
            "host_ns": self.host_ns,
            "record_count": count,
            "records": b"".join(parts),
        })
        self.seq += 1
        return msg
