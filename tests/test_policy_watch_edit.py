"""A watched policy file edited into a broken version: the new version is parsed and compiled
before the old one is unloaded, so a typo keeps the old policy acting (its BPF programs loaded)
and the reason is listed; a good edit replaces it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from collector import loader, procfs
from collector.drain import RecordQueue
from collector.policy.manager import PolicyManager

GOOD = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: watch-edit
spec:
  kprobes:
  - call: sys_openat
    syscall: true
    args:
    - index: 1
      type: string
    selectors:
    - matchArgs:
      - index: 1
        operator: Prefix
        values: ["{prefix}"]
"""


def _write(path: Path, text: str, mtime: float) -> None:
    path.write_text(text)
    os.chmod(path, 0o644)
    os.utime(path, (mtime, mtime))


def test_broken_edit_keeps_old_policy_acting(bpf_ok: None, tmp_path: Path) -> None:
    d = tmp_path / "policies"
    d.mkdir()
    f = d / "p.yaml"
    _write(f, GOOD.format(prefix="/tmp/watch-edit-a/"), 1000.0)
    loader.prepare()
    mgr = PolicyManager(RecordQueue(100_000, asyncio.new_event_loop()), procfs.host_namespaces())
    try:
        mgr.scan_dir(str(d))
        first = mgr.loaded["watch-edit"]
        assert first.bpf is not None
        # a typo in the operator: refused before anything is unloaded
        _write(f, GOOD.format(prefix="/tmp/watch-edit-b/").replace("Prefix", "Prefx"), 2000.0)
        mgr.scan_dir(str(d))
        assert mgr.loaded.get("watch-edit") is first  # the very same programs keep acting
        assert "new version refused, the loaded one keeps acting" in mgr.errors[str(f)]
        assert "Prefx" in mgr.errors[str(f)] and "p.yaml:" in mgr.errors[str(f)]
        mgr.scan_dir(str(d))  # not retried until the file changes again
        assert mgr.loaded.get("watch-edit") is first
        # a good edit replaces it
        _write(f, GOOD.format(prefix="/tmp/watch-edit-c/"), 3000.0)
        mgr.scan_dir(str(d))
        second = mgr.loaded["watch-edit"]
        assert second is not first and str(f) not in mgr.errors
        assert any(b"/tmp/watch-edit-c/" in bytes(s) for s in second.compiled.strings)
    finally:
        mgr.stop()
