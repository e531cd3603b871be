"""``tetrapipe export grpc`` on a unix socket (as Tetragon's ``unix:///var/run/tetragon/tetragon.sock``):
made 0600 whatever the umask, a stale socket file replaced, ``tetrapipe status`` and a GetEvents
stream over it, and a taken TCP address retried rather than fatal. Needs the broker, no kernel."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import grpc
from harness import REPO, Pipeline, wait_until
from sink_events import cfg_of, make_event, produce_sync

from exporters import grpc_api
from tetragon import events_pb2, sensors_pb2_grpc
from tetrapipe.broker import EmbeddedBroker, free_port


def test_unix_socket_status_and_stream(broker: EmbeddedBroker, tmp_path: Path) -> None:
    path = tmp_path / "tetragon.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # left behind by a killed server
    stale.close()
    p = Pipeline(broker.bootstrap, tmp_path)
    p.settings["server_address"] = f"unix://{path}"
    try:
        p.start("export-grpc", "export", "grpc")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        r = subprocess.run([sys.executable, "-m", "tetrapipe", "status", "--server-address", f"unix://{path}"],
                           capture_output=True, text=True, timeout=60, cwd=REPO, env=p.env())
        assert (r.returncode, r.stdout) == (0, "Health Status: running\n"), r.stderr
        channel = grpc.insecure_channel(f"unix://{path}")
        call = sensors_pb2_grpc.FineGuidanceSensorsStub(channel).GetEvents(events_pb2.GetEventsRequest(
            allow_list=[events_pb2.Filter(event_set=[events_pb2.PROCESS_EXIT])]))
        call.initial_metadata()
        events = [make_event(i, p.node_name, kind=k) for i, k in enumerate(["process_exec", "process_exit"] * 3)]
        produce_sync(cfg_of(p.base), events)
        got = []
        for msg in call:
            got.append(grpc_api.to_doc(msg))
            if len(got) == 3:
                break
        call.cancel()
        channel.close()
        assert [d["process_exit"]["process"]["arguments"] for d in got] == ["seq=1", "seq=3", "seq=5"]
    finally:
        p.stop()


def test_taken_address_is_retried_not_fatal(broker: EmbeddedBroker, tmp_path: Path) -> None:
    port = free_port()
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", port))
    holder.listen()
    p = Pipeline(broker.bootstrap, tmp_path)
    p.settings["server_address"] = f"127.0.0.1:{port}"
    try:
        svc = p.start("export-grpc", "export", "grpc", wait=False)
        wait_until(lambda: "trying again in 5 s" in svc.log(), 30, what="the retry line")
        assert svc.proc is not None and svc.proc.poll() is None  # still running
        holder.close()
        svc.wait_ready(30)
        r = subprocess.run([sys.executable, "-m", "tetrapipe", "status", "--server-address", f"127.0.0.1:{port}"],
                           capture_output=True, text=True, timeout=60, cwd=REPO, env=p.env())
        assert r.stdout == "Health Status: running\n", r.stderr
    finally:
        holder.close()
        p.stop()
