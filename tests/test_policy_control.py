"""The control socket and its client without a kernel: a real unix socket server around a real
PolicyManager; requests that need no BPF load (refusals, list, delete of an unknown policy)."""

from __future__ import annotations

import argparse
import asyncio
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.drain import RecordQueue
from collector.policy import control
from collector.policy.manager import PolicyManager
from tetrapipe import control_client
from tetrapipe.config import Config

BROKEN = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: broken
spec:
  kprobes:
  - call: "sys_write"
    syscall: true
    selectors:
    - matchActions:
      - action: "Sigkil"
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "run" / "tetrapipe.sock")
    loop = asyncio.new_event_loop()
    mgr = PolicyManager(RecordQueue(100, loop), [0] * 10)
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        srv = loop.run_until_complete(control.serve(path, mgr))
        started.set()
        loop.run_forever()
        srv.close()
        loop.run_until_complete(srv.wait_closed())
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert started.wait(10)
    yield path
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)


def test_socket_is_private(server: str) -> None:
    assert stat.S_IMODE(os.stat(server).st_mode) == 0o600


def test_refused_add_list_and_unknown_delete(server: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    reply = control_client.request(server, {"op": "add", "yaml": BROKEN, "source": "b.yaml"})
    assert reply == {"ok": False, "error": 'b.yaml:11: spec.kprobes[0].selectors[0].matchActions[0].action: '
                                            'unknown action "Sigkil"'}
    assert control_client.request(server, {"op": "list"}) == {"ok": True, "policies": []}
    assert control_client.request(server, {"op": "delete", "name": "nope"})["error"] == \
        "no policy named 'nope' is loaded"
    assert "unknown op" in control_client.request(server, {"op": "frobnicate"})["error"]
    # the command line prints the reason and exits 1
    f = tmp_path / "broken.yaml"
    f.write_text(BROKEN)
    cfg = Config(control_socket=server)
    rc = control_client.main(cfg, argparse.Namespace(action="add", target=str(f), mode=None))
    assert rc == 1 and 'unknown action "Sigkil"' in capsys.readouterr().err


def test_client_without_collector(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = Config(control_socket=str(tmp_path / "none.sock"))
    assert control_client.main(cfg, argparse.Namespace(action="list", target=None, mode=None)) == 1
    assert "cannot reach the collector's control socket" in capsys.readouterr().err
