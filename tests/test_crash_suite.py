"""CI run of tests/crash_suite.py: kill -9 and restart the collector, the enricher, the JSON
and the fluentd exporter, and stop the broker for 35 s (``TETRAPIPE_CRASH_OUTAGE`` changes it):
longer than the collector's 3 s send timeout, so the spool carries the outage, and than the
clients' 30 s request timeout, so every stage meets refused requests. Meanwhile events with known
identities are generated. Every event must be in the JSON export and at the fluentd receiver;
only the collector-restart window may miss events, and that loss is printed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from crash_suite import Suite, print_report


@pytest.mark.kernel
@pytest.mark.timeout(300)
def test_crash_suite(bpf_ok: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outage = float(os.environ.get("TETRAPIPE_CRASH_OUTAGE", "35"))
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
    assert not suite.dead, f"services died on their own: {suite.dead}"
    # the outage really went through the spool, and it was replayed (checked inside the suite)
    assert suite.spool_written > 0
    # the sequence audit agrees: nothing missing between collector and enricher, enricher and sink
    assert suite.audit["enricher raw batches missing"] == 0
    assert suite.audit["export-json events missing"] == 0
    assert suite.audit["export-fluentd events missing"] == 0
    assert suite.audit["collector spool drops"] == 0
    # outside the collector's restart, nothing may be missing at all
    assert sum(r.collector_restart_loss for r in results if r.fault != "collector") == 0


@pytest.mark.kernel
@pytest.mark.timeout(420)
def test_crash_suite_on_three_kafka_brokers(bpf_ok: None, kafka_cluster: object, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The same suite on a three-node Apache Kafka cluster (3 replicas, min.insync.replicas 2),
    with a policy event for every generated exec: kill -9 the collector and the enricher (a new
    policy id after the collector's restart, the catalog replayed by the new enricher), kill -9
    the leader of the raw and of the events partition, a follower, stop every node and start them
    again. (The exporters' kill -9 is in the run above: it does not depend on the broker.)"""
    from crash_suite import KAFKA_FAULTS

    faults = ["collector", "enricher", *KAFKA_FAULTS]
    suite = Suite(tmp_path, outage=0, rate=20, settle=60, rounds=1, faults=faults, log=True, kafka=kafka_cluster)
    results = suite.run()
    with capsys.disabled():
        print()
        print_report(results, suite.torn, suite.audit)
        print(f"generated execs without their policy event: {suite.policy_missing}; "
              f"policy events without their process (flags miss): {suite.policy_without_process}")
        print(f"services that exited on their own and were started again: {suite.self_restarts}")
    assert {r.fault for r in results} == {"warmup", *faults, "after"}
    # a stage may give its producer up (exit 75) only when every broker went down at once
    assert all("phase kafka-all" in r or "phase after" in r for r in suite.self_restarts), suite.self_restarts
    for r in results:
        assert r.generated > 0, r
        assert r.lost == 0, f"{r.fault}/{r.sink}: {r.lost} of {r.generated} events lost"
    assert suite.torn == 0
    assert not suite.dead, f"services died on their own: {suite.dead}"
    assert suite.policy_missing == {"json": 0, "fluentd": 0}
    assert suite.audit["enricher dead letters"] == 0
    assert suite.audit["enricher unknown-policy records"] == 0
    assert suite.audit["enricher raw batches missing"] == 0
    assert suite.audit["collector spool drops"] == 0
    assert sum(r.collector_restart_loss for r in results if r.fault != "collector") == 0
