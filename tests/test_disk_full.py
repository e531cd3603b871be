"""A full disk under the JSON export: the exporter says so in one log line per retry (no
traceback), counts it, keeps the batch uncommitted and keeps running; once there is room again
every event is written, none lost. The disk is a 256 KiB tmpfs in a mount namespace of its own,
filled up before the events come."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness import REPO, free_port_block, http_get, wait_until
from sink_events import cfg_of, make_event, produce_sync

from tetrapipe.broker import EmbeddedBroker


def test_json_export_on_a_full_disk(broker: EmbeddedBroker, tmp_path: Path) -> None:
    topics = {"kafka": broker.bootstrap, "events_topic": f"diskfull-{os.getpid()}-{time.time_ns()}",
              "deadletter_topic": "diskfull-dead", "raw_topic": "diskfull-raw"}
    disk = tmp_path / "disk"
    disk.mkdir()
    port = free_port_block(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETRAPIPE_")}
    env.update(PYTHONPATH=str(REPO), TETRAPIPE_KAFKA=broker.bootstrap, TETRAPIPE_EVENTS_TOPIC=topics["events_topic"],
               TETRAPIPE_DEADLETTER_TOPIC=topics["deadletter_topic"], TETRAPIPE_METRICS_ADDRESS=f"127.0.0.1:{port}")
    script = (f'mount -t tmpfs -o size=256k tmpfs {disk} && exec {sys.executable} -m tetrapipe export json '
              f'--export-filename {disk}/out/events.log')
    log = tmp_path / "export.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200, 60, what="exporter ready")
        inside = Path(f"/proc/{proc.pid}/root") / str(disk).lstrip("/")
        assert (inside / "out").is_dir()  # the export folder was made on the small disk
        filler = inside / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass  # full
        finally:
            os.close(fd)
        produce_sync(cfg_of(topics), [make_event(i, "diskfull") for i in range(40)])
        wait_until(lambda: "No space left on device" in log.read_text(errors="replace"), 30,
                   what="the exporter reporting the full disk")
        assert proc.poll() is None
        filler.unlink()  # room again
        export = inside / "out" / "events.log"
        wait_until(lambda: export.exists() and export.read_text().count("\n") >= 40, 60,
                   what="every event written once there is room")
        seqs = {int(json.loads(line)["process_exec"]["process"]["arguments"].split("=")[1])
                for line in export.read_text().splitlines()}
        assert seqs == set(range(40))
        metrics = http_get(f"http://127.0.0.1:{port}/metrics")[1]
        errors = [x for x in metrics.splitlines() if x.startswith('tetrapipe_export_errors_total{sink="json"}')]
        assert errors and float(errors[0].split()[-1]) >= 1, errors
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    full = [line for line in text.splitlines() if "No space left on device" in line]
    assert full and all(len(line) < 400 for line in full)
    assert proc.returncode == 0, text[-2000:]
