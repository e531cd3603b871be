"""Least privilege: only the collector needs root. The enricher and the JSON, fluentd and
Prometheus exporters run as ``nobody`` with no capabilities at all (empty bounding set,
no_new_privs, via setpriv) next to a root collector, against the real broker, and every event
of a real process still reaches each sink. The collector itself, started the same way, refuses
clearly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fluent_receiver import FluentReceiver
from harness import REPO, Pipeline, wait_until

NOBODY = 65534
UNPRIVILEGED = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory the unprivileged services own (pytest's tmp dirs are root-only)."""
    d = Path(tempfile.mkdtemp(prefix="tetrapipe-nobody-"))
    os.chown(d, NOBODY, NOBODY)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.kernel
def test_enricher_and_exporters_run_unprivileged(bpf_ok: None, pipeline: Pipeline,
                                                 nobody_dir: Path) -> None:
    own = {"state_dir": str(nobody_dir / "state"), "export_filename": str(nobody_dir / "events.log")}
    with FluentReceiver() as rx:
        pipeline.start("enricher", "enricher", extra=own, wrap=UNPRIVILEGED)
        pipeline.start("export-json", "export", "json", extra=own, wrap=UNPRIVILEGED)
        pipeline.start("export-fluentd", "export", "fluentd", wrap=UNPRIVILEGED,
                       extra={**own, "fluentd_address": rx.address})
        pipeline.start("export-prometheus", "export", "prometheus", extra=own, wrap=UNPRIVILEGED)
        pipeline.start("collector", "collector")
        for name in ("enricher", "export-json", "export-fluentd", "export-prometheus"):
            proc = pipeline.services[name].proc
            assert proc is not None
            st = _status(proc.pid)
            assert st["Uid"].split() == [str(NOBODY)] * 4, (name, st["Uid"])
            assert st["Gid"].split() == [str(NOBODY)] * 4, (name, st["Gid"])
            assert st["Groups"] == "", (name, st["Groups"])
            for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
                assert int(st[cap], 16) == 0, (name, cap, st[cap])
            assert st["NoNewPrivs"] == "1"

        marker = f"lp-{uuid.uuid4().hex[:8]}"
        subprocess.run(["/bin/true", marker], check=True)
        export = nobody_dir / "events.log"

        def in_json() -> bool:
            return export.exists() and marker in export.read_text(errors="replace")

        wait_until(in_json, 30, what="the event in the JSON export written by nobody")
        assert export.stat().st_uid == NOBODY
        wait_until(lambda: any(r.record.get("process_exec", {}).get("process", {}).get("arguments") == marker
                               for r in rx.snapshot()), 30, what="the event at fluentd")
        prom = pipeline.services["export-prometheus"]
        wait_until(lambda: prom.metric("tetrapipe_events_total", binary="/bin/true") > 0, 30,
                   what="the event counted by the Prometheus exporter")
    for name in ("enricher", "export-json", "export-fluentd", "export-prometheus"):
        svc = pipeline.services[name]
        assert svc.proc is not None and svc.proc.poll() is None, f"{name}:\n{svc.log()}"
        assert "Permission denied" not in svc.log() and "Traceback" not in svc.log(), svc.log()


def test_collector_refuses_clearly_without_root(nobody_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETRAPIPE_")}
    env.update(PYTHONPATH=str(REPO), TETRAPIPE_KAFKA="127.0.0.1:1", TETRAPIPE_METRICS_ADDRESS="",
               TETRAPIPE_STATE_DIR=str(nobody_dir / "state"), TETRAPIPE_CACHE_DIR=str(nobody_dir / "cache"))
    r = subprocess.run([*UNPRIVILEGED, sys.executable, "-m", "tetrapipe", "collector"], env=env,
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode != 0
    assert "needs root" in r.stderr and "CAP_BPF" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
