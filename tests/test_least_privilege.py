"""Least privilege: only the collector needs root. The enricher and the JSON, fluentd and
Prometheus exporters run as ``nobody`` with no capabilities at all (empty bounding set,
no_new_privs, via setpriv) next to a root collector, against the real broker, and every event
of a real process still reaches each sink, the enricher writing Avro with the compiled writer
(built for nobody's interpreter by scripts/setup-native.sh). The collector itself, started the
same way, refuses clearly."""

from __future__ import annotations

import json
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
    # the enricher as nobody runs another interpreter than root's: its compiled Avro writer is the
    # one setup built for it, root-owned (tests below: the fallback)
    enricher = pipeline.services["enricher"].proc
    assert enricher is not None
    maps = Path(f"/proc/{enricher.pid}/maps").read_text()
    assert "/var/cache/tetrapipe-build/native/avro_write-" in maps, "the enricher run as nobody writes Avro in Python"
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


NATIVE_PROBE = """
import json
from schemas import codec, native_writer
m = native_writer.module()
fill = {"string": "n", "long": 7, "int": 3, "bytes": b"x", "boolean": True}
rec = {f["name"]: fill[f["type"]] if isinstance(f["type"], str) else [1, 2]
       for f in codec.schema("raw_batch").parsed["fields"]}
print(json.dumps({"module": getattr(m, "__file__", None), "native": codec._native("raw_batch") is not None,
                  "body": codec.encode_body("raw_batch", rec).hex(),
                  "fastavro": codec.encode_body_fastavro("raw_batch", rec).hex()}))
"""


@pytest.mark.parametrize("off", [False, True], ids=["compiled", "no-extensions"])
def test_nobody_loads_the_compiled_writer_setup_built(off: bool) -> None:
    """Run as nobody (another interpreter than root's here): the compiled Avro writer is loaded from
    the root-owned cache setup filled for it; with TETRAPIPE_NO_EXTENSIONS the Python writer writes
    the same bytes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETRAPIPE_")}
    env.update(PYTHONPATH=str(REPO), **({"TETRAPIPE_NO_EXTENSIONS": "1"} if off else {}))
    r = subprocess.run([*UNPRIVILEGED, sys.executable, "-c", NATIVE_PROBE], env=env, capture_output=True,
                       text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["body"] == out["fastavro"]
    if off:
        assert out["module"] is None and not out["native"], out
        return
    path = Path(out["module"] or "")
    assert out["native"] and path.parent == Path("/var/cache/tetrapipe-build/native"), (out, r.stderr[-2000:])
    assert path.stat().st_uid == 0 and not path.stat().st_mode & 0o022
