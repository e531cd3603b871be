"""Sequence audit: the numbers that prove "nothing lost". Unit properties (hypothesis) of the
audit, then the real JSON exporter auditing stamped events from a real broker: a gap is counted
and stays missing, a late event fills it, a duplicate is counted and not written twice."""

from __future__ import annotations

import asyncio
import random

from harness import Pipeline, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import codec
from tetrapipe import kafka
from tetrapipe.config import Config
from tetrapipe.sequence import SEQ_HEADER, SOURCE_HEADER, SequenceAudit, Stamper, read_stamp


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 60), max_size=200), st.randoms())
def test_audit_accepts_each_number_once_whatever_the_order(seqs: list[int], rnd: random.Random) -> None:
    rnd.shuffle(seqs)
    audit = SequenceAudit("test")
    accepted = [s for s in seqs if audit.accept("src", s)]
    if not seqs:
        return
    # the first number seen starts the stream (a consumer may join mid-stream): anything below
    # it was handled before; everything else is accepted exactly once, whatever the order
    start = seqs[0]
    new = {s for s in seqs if s >= start}
    assert sorted(accepted) == sorted(new)
    assert audit.duplicates.get("src", 0) == len(seqs) - len(new)
    if seqs:
        # what is still missing = numbers between the first and the highest never seen
        expected_missing = len(set(range(start, max(seqs) + 1)) - set(seqs))
        assert audit.missing_now("src") == expected_missing
        assert len(audit.missing.get("src", {})) == expected_missing


def test_stamp_round_trip() -> None:
    s = Stamper()
    h = s.stamp(3, "abc:7")
    assert read_stamp(h) == (s.instance, 0)
    assert read_stamp(s.stamp(3)) == (s.instance, 1)
    assert read_stamp(s.stamp(0)) == (s.instance, 0)  # per partition
    assert read_stamp([(SOURCE_HEADER, b"x"), (SEQ_HEADER, b"nan")]) is None
    assert read_stamp(None) is None and read_stamp([(SEQ_HEADER, b"1")]) is None


def _event(n: int) -> dict:
    return {"process_exec": {"process": {"exec_id": f"id-{n}", "pid": 1000 + n, "binary": f"/bin/b{n}"}},
            "node_name": "n", "time": 1_767_225_600_000_000_000}


async def _send(cfg: Config, items: list[tuple[int, bytes, int]]) -> None:
    await kafka.ensure_topics(cfg, [cfg.events_topic])
    p = await kafka.start_producer(cfg)
    try:
        for n, source, seq in items:
            await p.send_and_wait(cfg.events_topic, codec.encode("event", _event(n)), key=b"k",
                                  partition=0,
                                  headers=[(SOURCE_HEADER, source), (SEQ_HEADER, str(seq).encode())])
    finally:
        await p.stop()


def test_exporter_counts_gaps_late_and_duplicates(pipeline: Pipeline) -> None:
    exporter = pipeline.start("export-json", "export", "json")
    b = pipeline.base
    cfg = Config(kafka=b["kafka"], events_topic=b["events_topic"])
    src = b"enricher-a"
    # seq 0,1, then 4 (gap of 2 and 3), 1 again (duplicate), 2 late, then 5
    asyncio.run(_send(cfg, [(0, src, 0), (1, src, 1), (4, src, 4), (101, src, 1), (2, src, 2),
                            (5, src, 5)]))

    def binaries() -> list[str]:
        return [e["process_exec"]["process"]["binary"] for e in pipeline.exported()]

    wait_until(lambda: "/bin/b5" in binaries(), what="events exported")
    assert binaries() == ["/bin/b0", "/bin/b1", "/bin/b4", "/bin/b2", "/bin/b5"]  # b101 skipped
    m = exporter.metric
    assert m("tetrapipe_sequence_gaps_total", stage="export-json", source="enricher-a") == 2
    assert m("tetrapipe_sequence_late_total", stage="export-json", source="enricher-a") == 1
    assert m("tetrapipe_sequence_duplicates_total", stage="export-json", source="enricher-a") == 1
    assert m("tetrapipe_sequence_missing", stage="export-json", source="enricher-a") == 1  # seq 3
