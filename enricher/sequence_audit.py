"""Sequence audit: every raw batch carries (collector instance, seq). Gaps (batches never seen)
and duplicates (batches seen again) are counted per source; duplicates are skipped."""

from __future__ import annotations

from tetrapipe.metrics import SEQUENCE_DUPLICATES, SEQUENCE_GAPS


class SequenceAudit:
    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.next_seq: dict[str, int] = {}
        self.gaps: dict[str, int] = {}
        self.duplicates: dict[str, int] = {}

    def accept(self, source: str, seq: int) -> bool:
        """True when the batch is new; False for a duplicate (to be skipped)."""
        expected = self.next_seq.get(source)
        if expected is not None and seq < expected:
            self.duplicates[source] = self.duplicates.get(source, 0) + 1
            SEQUENCE_DUPLICATES.labels(stage=self.stage, source=source).inc()
            return False
        if expected is not None and seq > expected:
            missing = seq - expected
            self.gaps[source] = self.gaps.get(source, 0) + missing
            SEQUENCE_GAPS.labels(stage=self.stage, source=source).inc(missing)
        self.next_seq[source] = seq + 1
        return True
