"""Keeps the benchmark harness (bench/) working: runs ``python -m bench --size tiny`` for real
(BPF programs, bpftrace, brokers, services) and checks that every section produced its figures.
No timing is asserted: figures on a shared 2-core VM are noise at this size."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def test_bench_tiny_run_prints_and_writes_every_section(bpf_ok: None, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "bench", "--size", "tiny", "--json", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"bench failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    res = json.loads(out.read_text())
    assert res["errors"] == {}
    assert set(res["sections"]) == {"footprint", "drain", "e2e", "overhead"}
    assert res["machine"]["kernel"] and res["date"] and res["command"].startswith("python -m bench")

    drain = res["sections"]["drain"]
    for key in ("exec", "openat"):
        tp = drain[key]["tetrapipe"]
        assert tp["full_speed_rate"]["n"] == 1 and tp["full_speed_rate"]["median"] > 0
        steps = drain[key]["raw"]["tetrapipe"][0]["steps"]
        assert all(s["ops"] > 0 and s["seen"] >= 0 for s in steps)
        # a BPF program that attached and a drain that shipped: something of ours reached Kafka
        assert sum(s["seen"] for s in steps) > 0
        assert tp["collector_cpu_us_per_record"]["n"] == 1   # the collector's CPU per record
        if shutil.which("bpftrace"):
            assert drain[key]["bpftrace"]["full_speed_rate"]["median"] > 0

    e2e = res["sections"]["e2e"]
    assert e2e["cpu"]["events"] > 0 and e2e["cpu"]["enricher_profile"]
    for r1 in e2e["kafka_1_enricher"] + e2e["kafka_2_enrichers"]:
        assert r1["enricher_complete"] and r1["json_complete"], r1
    lat = e2e["latency"]
    assert lat["kernel_events_seen"] > 0 and lat["kernel_p99_ms"] is not None
    assert lat["injected_p99_ms"] is not None
    assert all(v > 0 for v in lat["idle_rss_mib"].values())

    oh = res["sections"]["overhead"]
    assert not [x for x in oh["raw"] if "error" in x]
    assert oh["summary"]["tetrapipe"]["exec_wall_ratio"]["median"] > 0
    for stage in ("collector", "enricher", "export-json", "broker"):   # CPU per event, each stage
        assert oh["summary"]["tetrapipe"][f"exec_cpu_us_per_event_{stage}"]["n"] == 1

    fp = res["sections"]["footprint"]
    assert fp["probe_cold"]["headers_s"]["median"] > fp["probe_warm"]["headers_s"]["median"]
    assert fp["service_warm"]["ready_s"]["median"] > 0

    for line in ("drain exec loop", "drain open() loop", "through Kafka, 1 enricher", "latency kernel",
                 "overhead with tetrapipe", "collector cold start"):
        assert line in r.stdout, f"table lacks {line!r}:\n{r.stdout}"
