"""`tetrapipe export prometheus` scraped by Debian's real Prometheus server: counts over the HTTP
API match the events put on the topic; the label filter bounds the label set; every query of the
Grafana dashboard returns data against a full pipeline (real BPF collector, enricher, the three
exporters); `promtool check metrics` passes on every service's /metrics."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import skip_or_fail
from fluent_receiver import FluentReceiver
from harness import Pipeline, wait_until
from prom_server import PrometheusServer, prometheus_binaries, promtool_check
from sink_events import cfg_of, make_event, produce_sync

from tetrapipe import kafka
from tetrapipe.broker import free_port

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "deploy/grafana/dashboards/tetrapipe.json"


@pytest.fixture
def prom_bins() -> None:
    if prometheus_binaries() is None:
        skip_or_fail("prometheus/promtool not installed (scripts/setup.sh installs Debian's prometheus)")


def _mixed_events(node: str) -> list[dict]:
    ev = [make_event(i, node, binary="/bin/a", namespace="ns1", pod="pod1", workload="w1") for i in range(30)]
    ev += [make_event(100 + i, node, kind="process_exit", binary="/bin/b") for i in range(20)]
    ev += [make_event(200 + i, node, kind="process_kprobe", binary="/bin/evil", namespace="ns1", pod="pod2",
                      workload="w2", policy="block-write", function="__x64_sys_write",
                      action="KPROBE_ACTION_SIGKILL") for i in range(10)]
    ev += [make_event(300 + i, node, kind="process_tracepoint", binary="/bin/cat", policy="trace-open",
                      function="syscalls:sys_enter_openat") for i in range(5)]
    return ev


def _start_prometheus(pipeline: Pipeline, names: list[str]) -> PrometheusServer:
    targets = {n: f"127.0.0.1:{pipeline.services[n].metrics_port}" for n in names}
    (pipeline.tmp / "prom").mkdir()
    prom = PrometheusServer(pipeline.tmp / "prom", targets).start()
    pipeline.services["prometheus"] = prom  # type: ignore[assignment]  # stopped with the pipeline
    wait_until(prom.targets_up, 30, what="prometheus scraping every target")
    return prom


def test_counts_over_the_prometheus_api(prom_bins: None, pipeline: Pipeline) -> None:
    svc = pipeline.start("export-prometheus", "export", "prometheus")
    prom = _start_prometheus(pipeline, ["export-prometheus"])
    node = pipeline.node_name
    produce_sync(cfg_of(pipeline.base), _mixed_events(node))
    wait_until(lambda: prom.value(f'sum(tetrapipe_events_total{{node_name="{node}"}})') == 65, 30,
               what="65 events counted by prometheus")
    by_type = {r["metric"]["type"]: float(r["value"][1]) for r in
               prom.query(f'sum by (type) (tetrapipe_events_total{{node_name="{node}"}})')}
    assert by_type == {"PROCESS_EXEC": 30, "PROCESS_EXIT": 20, "PROCESS_KPROBE": 10, "PROCESS_TRACEPOINT": 5}
    assert prom.value('tetrapipe_events_total{type="PROCESS_EXEC",binary="/bin/a",namespace="ns1",'
                      'pod="pod1",workload="w1"}') == 30
    assert prom.value('sum(tetrapipe_policy_events_total{policy="block-write",hook="kprobe:__x64_sys_write",'
                      'pod="pod2"})') == 10
    assert prom.value('sum(tetrapipe_policy_events_total{policy="trace-open",'
                      'hook="tracepoint:syscalls:sys_enter_openat"})') == 5
    assert prom.value('tetrapipe_policy_event_actions_total{action="KPROBE_ACTION_SIGKILL"}') == 10
    assert prom.value('sum(tetrapipe_syscalls_total{syscall="write"})') == 10
    assert prom.value('sum(tetrapipe_syscalls_total{syscall="openat",binary="/bin/cat"})') == 5
    assert prom.value('tetrapipe_events_exported_total{sink="prometheus"}') == 65
    code, out = promtool_check(svc.metrics())
    assert code == 0, out


def test_label_filter_bounds_labels(pipeline: Pipeline) -> None:
    svc = pipeline.start("export-prometheus", "export", "prometheus",
                         extra={"metrics_label_filter": "namespace,bogus"})
    produce_sync(cfg_of(pipeline.base), _mixed_events(pipeline.node_name))
    wait_until(lambda: svc.metric("tetrapipe_events_total") == 65, 30, what="65 events")
    series = [line for line in svc.metrics().splitlines() if line.startswith("tetrapipe_events_total{")]
    for line in series:
        labels = set(re.findall(r'(\w+)="', line))
        assert labels == {"type", "namespace", "node_name"}, line
    # binary/pod/workload are gone: one series per (type, namespace) instead of per binary and pod
    assert len(series) == 4
    policy = [line for line in svc.metrics().splitlines() if line.startswith("tetrapipe_policy_events_total{")]
    assert policy and all(set(re.findall(r'(\w+)="', x)) == {"policy", "hook", "namespace", "node_name"}
                          for x in policy)
    assert "ignoring unknown labels bogus" in svc.log()


def _dashboard_queries() -> list[tuple[str, str]]:
    doc = json.loads(DASHBOARD.read_text())
    out = []
    for p in doc["panels"]:
        for t in p.get("targets", []):
            expr = t["expr"].replace("$__rate_interval", "30s").replace("$__range", "10m")
            out.append((p["title"], expr))
    return out


def test_dashboard_queries_are_valid_promql(prom_bins: None, tmp_path: Path) -> None:
    """Every dashboard expression parses (promtool's rule checker runs the PromQL parser)."""
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"tetrapipe:dashboard_{i}", "expr": e} for i, (_, e) in enumerate(_dashboard_queries())]}]}
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps(rules))
    r = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


async def _inject_garbage_raw(cfg) -> None:  # noqa: ANN001
    await kafka.ensure_topics(cfg, [cfg.raw_topic])
    p = await kafka.start_producer(cfg)
    try:
        await p.send_and_wait(cfg.raw_topic, b"\xc3\x01not a raw batch", key=b"x")
    finally:
        await p.stop()


@pytest.mark.kernel
def test_every_dashboard_query_returns_data(bpf_ok: None, prom_bins: None, pipeline: Pipeline) -> None:
    fport = free_port()
    pipeline.start("enricher", "enricher")
    pipeline.start("export-json", "export", "json")
    pipeline.start("export-prometheus", "export", "prometheus")
    pipeline.start("export-fluentd", "export", "fluentd", extra={"fluentd_address": f"127.0.0.1:{fport}"})
    pipeline.start("collector", "collector")
    names = ["collector", "enricher", "export-json", "export-prometheus", "export-fluentd"]
    prom = _start_prometheus(pipeline, names)
    cfg = cfg_of(pipeline.base)
    asyncio.run(_inject_garbage_raw(cfg))  # a dead letter, as a broken producer would cause
    # policy events with pods, as a Kubernetes node with a Sigkill policy produces them
    produce_sync(cfg, _mixed_events(pipeline.node_name))
    for _ in range(5):
        subprocess.run(["/bin/true"], check=True)
    with FluentReceiver(fport):  # fluentd comes up late: errors first, then exports
        wait_until(lambda: pipeline.services["export-fluentd"].metric(
            "tetrapipe_events_exported_total", sink="fluentd") >= 65, 60, what="fluentd catching up")
        for name in names:
            code, out = promtool_check(pipeline.services[name].metrics())
            assert code == 0, f"{name}: {out}"
        missing: list[str] = []

        def all_have_data() -> bool:
            missing.clear()
            missing.extend(f"{title}: {expr}" for title, expr in _dashboard_queries() if not prom.query(expr))
            return not missing

        try:
            wait_until(all_have_data, 60, interval=1, what="data for every dashboard query")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; empty: {missing}") from None
    node = pipeline.node_name
    assert prom.value(f'sum(tetrapipe_events_total{{type="PROCESS_EXEC",node_name="{node}"}})') > 30
    assert prom.value('sum(tetrapipe_observer_ringbuf_events_received_total)') > 0
    assert prom.value('sum(tetrapipe_deadletter_messages_total)') >= 1
    assert prom.value('sum(tetrapipe_export_errors_total{sink="fluentd"})') > 0
