"""Sequence audit of raw batches: (collector instance, seq) per batch; gaps, late batches and
duplicates counted per source, duplicates skipped. The logic lives in :mod:`tetrapipe.sequence`,
shared with the exporters' audit of events."""

from __future__ import annotations

from tetrapipe.sequence import SequenceAudit

__all__ = ["SequenceAudit"]
