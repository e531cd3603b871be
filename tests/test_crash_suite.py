"""CI run of tests/crash_suite.py: kill -9 and restart the collector, the enricher, the JSON
and the fluentd exporter, and stop the broker for a while (15 s by default here, above the collector's 3 s send
timeout so the spool really carries the outage; ``TETRAPIPE_CRASH_OUTAGE`` changes it), while
events with known identities are generated. Every event must be in the JSON export and at the
fluentd receiver; only the
collector-restart window may miss events, and that loss is printed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from crash_suite import Suite, print_report


@pytest.mark.kernel
@pytest.mark.timeout(300)
def test_crash_suite(bpf_ok: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outage = float(os.environ.get("TETRAPIPE_CRASH_OUTAGE", "15"))
    suite = Suite(tmp_path, outage=outage, rate=20, settle=60, rounds=1,
                  faults=["collector", "enricher", "export-json", "export-fluentd", "broker"], log=True)
    results = suite.run()
    print_report(results, suite.torn, suite.audit)
    with capsys.disabled():
        print()
        print_report(results, suite.torn, suite.audit)
    assert {(r.fault, r.sink) for r in results} == {
        (f, s) for f in ("warmup", "collector", "enricher", "export-json", "export-fluentd", "broker",
                         "after") for s in ("json", "fluentd")}
    for r in results:
        assert r.generated > 0, r
        assert r.lost == 0, f"{r.fault}/{r.sink}: {r.lost} of {r.generated} events lost"
    assert suite.torn == 0
    # the outage really went through the spool, and it was replayed (checked inside the suite)
    assert suite.spool_written > 0
    # the sequence audit agrees: nothing missing between collector and enricher, enricher and sink
    assert suite.audit["enricher raw batches missing"] == 0
    assert suite.audit["export-json events missing"] == 0
    assert suite.audit["export-fluentd events missing"] == 0
    assert suite.audit["collector spool drops"] == 0
    # outside the collector's restart, nothing may be missing at all
    assert sum(r.collector_restart_loss for r in results if r.fault != "collector") == 0
