"""Sequence audit, the proof of "nothing lost": every producer numbers what it sends per stream,
every consumer checks the numbers.

- Raw batches carry (collector ``instance_id``, ``seq``) in the envelope; the enricher audits them.
- Events carry Kafka headers ``tetrapipe-producer`` (enricher instance, random per start),
  ``tetrapipe-seq`` (gap-free per instance and partition of the events topic) and
  optionally ``tetrapipe-origin`` (``<collector instance>:<raw batch seq>``); every
  exporter audits them per (source, partition).

A number above the expected one opens a gap (``tetrapipe_sequence_gaps_total``); a number that
fills an open gap later is accepted and counted as late (``tetrapipe_sequence_late_total``); one
seen before is a duplicate (``tetrapipe_sequence_duplicates_total``) and is skipped. What is still
missing is the gauge ``tetrapipe_sequence_missing``: the loss.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Iterable

from tetrapipe.metrics import SEQUENCE_DUPLICATES, SEQUENCE_GAPS, SEQUENCE_LATE, SEQUENCE_MISSING

SOURCE_HEADER = "tetrapipe-producer"
SEQ_HEADER = "tetrapipe-seq"
ORIGIN_HEADER = "tetrapipe-origin"

MISSING_KEPT = 100_000  # open gaps remembered per stream; older ones stay counted as missing


class SequenceAudit:
    """Per stream (any hashable key; ``label`` names it in metrics): gaps, late fills, duplicates."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.next_seq: dict[object, int] = {}
        self.missing: dict[object, OrderedDict[int, None]] = {}
        self.gaps: dict[object, int] = {}
        self.late: dict[object, int] = {}
        self.duplicates: dict[object, int] = {}

    def accept(self, source: object, seq: int, label: str | None = None) -> bool:
        """True when ``seq`` is new on stream ``source``; False for a duplicate (skip it)."""
        label = str(source) if label is None else label
        expected = self.next_seq.get(source)
        if expected is None or seq == expected:
            self.next_seq[source] = seq + 1
            return True
        if seq > expected:
            missing = self.missing.setdefault(source, OrderedDict())
            n = seq - expected
            for s in range(max(expected, seq - MISSING_KEPT), seq):
                missing[s] = None
            while len(missing) > MISSING_KEPT:
                missing.popitem(last=False)
            self.gaps[source] = self.gaps.get(source, 0) + n
            SEQUENCE_GAPS.labels(stage=self.stage, source=label).inc(n)
            SEQUENCE_MISSING.labels(stage=self.stage, source=label).inc(n)
            self.next_seq[source] = seq + 1
            return True
        missing = self.missing.get(source)
        if missing is not None and seq in missing:
            del missing[seq]
            self.late[source] = self.late.get(source, 0) + 1
            SEQUENCE_LATE.labels(stage=self.stage, source=label).inc()
            SEQUENCE_MISSING.labels(stage=self.stage, source=label).dec()
            return True
        self.duplicates[source] = self.duplicates.get(source, 0) + 1
        SEQUENCE_DUPLICATES.labels(stage=self.stage, source=label).inc()
        return False

    def missing_now(self, source: object) -> int:
        return self.gaps.get(source, 0) - self.late.get(source, 0)


class Stamper:
    """The numbering side for events: one instance id per process, a counter per partition."""

    def __init__(self) -> None:
        self.instance = uuid.uuid4().hex
        self._next: dict[int, int] = {}
        self._source = (SOURCE_HEADER, self.instance.encode())
        self._origin = ("", (ORIGIN_HEADER, b""))  # the last origin's header: a batch's events share it

    def stamp(self, partition: int, origin: str = "") -> list[tuple[str, bytes]]:
        n = self._next.get(partition, 0)
        self._next[partition] = n + 1
        headers = [self._source, (SEQ_HEADER, str(n).encode())]
        if origin:
            if self._origin[0] != origin:
                self._origin = (origin, (ORIGIN_HEADER, origin.encode()))
            headers.append(self._origin[1])
        return headers


def read_stamp(headers: Iterable[tuple[str, bytes]] | None) -> tuple[str, int] | None:
    """(source, seq) from message headers; None when the message carries no valid stamp."""
    source = seq = None
    for k, v in headers or ():
        if k == SOURCE_HEADER:
            source = v.decode("ascii", "replace")
        elif k == SEQ_HEADER:
            try:
                seq = int(v)
            except (TypeError, ValueError):
                return None
    if not source or seq is None or seq < 0:
        return None
    return source, seq
