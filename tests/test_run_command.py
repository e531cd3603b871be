"""`tetrapipe run` as a user runs it: embedded broker, all services, live compact lines for
commands run in another shell, JSON export written; Ctrl-C stops everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from harness import REPO, free_port_block, http_get, wait_until


@pytest.mark.kernel
def test_run_shows_commands_live(bpf_ok: None, tmp_path: Path) -> None:
    base_port = free_port_block(6)  # +5: the gRPC API server's metrics
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETRAPIPE_")}
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-m", "tetrapipe", "run", "--log-dir", str(tmp_path),
           "--export-filename", str(tmp_path / "events.log"), "--metrics-address",
           f"127.0.0.1:{base_port}", "--state-dir", str(tmp_path / "state"),
           "--control-socket", str(tmp_path / "tetrapipe.sock"),
           "--server-address", f"unix://{tmp_path}/tetragon.sock"]  # the gRPC API (default exporter)
    run = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO,
                           start_new_session=True)
    lines: list[tuple[float, str]] = []

    def reader() -> None:
        assert run.stdout is not None
        for raw in run.stdout:
            lines.append((time.monotonic(), raw.decode(errors="replace").rstrip("\n")))

    threading.Thread(target=reader, daemon=True).start()
    try:
        wait_until(lambda: http_get(f"http://127.0.0.1:{base_port}/healthz")[0] == 200, 90,
                   what="collector ready")
        wait_until(lambda: http_get(f"http://127.0.0.1:{base_port + 2}/healthz")[0] == 200, 30,
                   what="json exporter ready")
        time.sleep(1.0)  # the live view joins the topic at its end
        marker = f"tp-{uuid.uuid4().hex[:10]}"
        subprocess.run(["/bin/sh", "-c", f"/bin/echo {marker} > /dev/null"], check=True)
        started = time.monotonic()
        wait_until(lambda: any(marker in text and text.startswith("💥 exit") for _, text in lines), 30,
                   what=f"compact lines for {marker}")
        mine = [(t, text) for t, text in lines if marker in text]
        assert any(text.startswith("🚀 process") and f"/bin/echo {marker}" in text for _, text in mine)
        exit_line = next(text for _, text in mine if text.startswith("💥 exit"))
        # root holds CAP_SYS_ADMIN: Tetragon's compact view adds a capability trailer after the status
        assert exit_line.split("🛑")[0].rstrip().endswith(f"{marker} 0")
        print(f"\ncompact line latency: {mine[0][0] - started:.3f}s")
        wait_until(lambda: marker in (tmp_path / "events.log").read_text(errors="replace"), 10,
                   what="event in the JSON export")
    finally:
        os.killpg(run.pid, signal.SIGINT)
        try:
            run.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert run.returncode == 0, "\n".join(t for _, t in lines[-30:])
    # every child is gone: their metrics servers no longer answer
    for port in (base_port, base_port + 1, base_port + 2):
        assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 0


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def _children(pid: int) -> list[int]:
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(k) for k in kids]


@pytest.mark.kernel
def test_run_with_user_keeps_root_only_in_the_collector(bpf_ok: None, tmp_path: Path) -> None:
    """`tetrapipe run --user nobody`: the enricher and exporters run as nobody with no capabilities
    and the events still reach the JSON export (written by nobody); an unknown user is refused
    with one line before anything starts."""
    import pwd
    import shutil
    import tempfile

    nobody = pwd.getpwnam("nobody")
    export_dir = Path(tempfile.mkdtemp(prefix="tetrapipe-run-user-"))
    export_dir.chmod(0o755)
    base_port = free_port_block(6)  # +5: the gRPC API server's metrics
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETRAPIPE_")}
    env["PYTHONPATH"] = str(REPO)
    common = [sys.executable, "-m", "tetrapipe", "run", "--quiet", "--log-dir", str(tmp_path),
              "--export-filename", str(export_dir / "events.log"), "--metrics-address",
              f"127.0.0.1:{base_port}", "--state-dir", str(tmp_path / "state"),
              "--control-socket", str(tmp_path / "tetrapipe.sock"), "--exporters", "json,prometheus"]
    bad = subprocess.run([*common, "--user", "no-such-user-here"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0
    assert "--user no-such-user-here: no such user" in bad.stderr
    assert "Traceback" not in bad.stderr

    run = subprocess.Popen([*common, "--user", "nobody"], env=env, cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: http_get(f"http://127.0.0.1:{base_port}/healthz")[0] == 200, 90,
                   what="collector ready")
        for off in (1, 2, 3):
            wait_until(lambda off=off: http_get(f"http://127.0.0.1:{base_port + off}/healthz")[0] == 200,
                       30, what=f"child on port {base_port + off} ready")
        kids = {}
        for pid in _children(run.pid):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"tetrapipe" in argv:
                kids[argv[argv.index(b"tetrapipe") + 1].decode()] = pid
        assert {"collector", "enricher", "export"} <= set(kids), kids
        assert _status(kids["collector"])["Uid"].split()[0] == "0"
        assert int(_status(kids["collector"])["CapEff"], 16) != 0
        services = [pid for pid in _children(run.pid)
                    if b"tetrapipe" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
        unprivileged = [pid for pid in services if pid != kids["collector"]]
        assert len(unprivileged) == 3  # enricher, json and prometheus exporters (not the broker)
        for pid in unprivileged:
            st = _status(pid)
            assert st["Uid"].split() == [str(nobody.pw_uid)] * 4, st["Uid"]
            assert st["Gid"].split() == [str(nobody.pw_gid)] * 4, st["Gid"]
            assert st["Groups"] == ""
            for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
                assert int(st[cap], 16) == 0, (cap, st[cap])
            assert st["NoNewPrivs"] == "1"
        marker = f"tpu-{uuid.uuid4().hex[:10]}"
        subprocess.run(["/bin/echo", marker], check=True, stdout=subprocess.DEVNULL)
        export = export_dir / "events.log"
        wait_until(lambda: export.exists() and marker in export.read_text(errors="replace"), 60,
                   what="event in the JSON export written by nobody")
        assert export.stat().st_uid == nobody.pw_uid
    finally:
        os.killpg(run.pid, signal.SIGINT)
        try:
            run.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        shutil.rmtree(export_dir, ignore_errors=True)
    assert run.returncode == 0
