"""The embedded broker goes with the process that started it: a killed `tetrapipe run` or test run
leaves no memory-only broker holding its port."""

from __future__ import annotations

import socket
import subprocess
import sys

from harness import REPO, wait_until

STARTER = ("import sys, time; sys.path.insert(0, %r); from tetrapipe.broker import EmbeddedBroker; "
           "b = EmbeddedBroker().start(); print(b.port, flush=True); time.sleep(120)")


def _open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_broker_stops_when_its_starter_is_killed() -> None:
    p = subprocess.Popen([sys.executable, "-c", STARTER % str(REPO)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        port = int(p.stdout.readline())
        assert _open(port)
        p.kill()  # SIGKILL: no cleanup code of the starter runs
        p.wait()
        wait_until(lambda: not _open(port), timeout=10, what="the broker's port to close")
    finally:
        if p.poll() is None:
            p.kill()

