"""collector/kernel_features.py: each mechanism is tried against the kernel, cheaply, and the
answer agrees with what the kernel shows by other means."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import skip_or_fail

from collector import kernel_features


def test_probe_is_cheap_and_agrees_with_the_kernel() -> None:
    if os.geteuid() != 0:
        skip_or_fail("probing BPF program loads needs root")
    t0 = time.monotonic()
    f = kernel_features.probe()
    took = time.monotonic() - t0
    assert took < 5, took
    assert set(f.available()) | set(f.missing()) == set(kernel_features.MECHANISMS)
    for m in f.missing():
        assert f.why.get(m), m  # every missing mechanism says why
    # kprobes are there exactly when the kernel has the kprobe PMU
    assert f.kprobes == Path("/sys/bus/event_source/devices/kprobe").exists()
    assert f.uprobes == Path("/sys/bus/event_source/devices/uprobe").exists()
    assert f.tracepoints  # every kernel tetrapipe runs on; the collector needs them
    assert not (f.override_return and not f.kprobes)
    assert not (f.bpf_lsm and "bpf" not in Path("/sys/kernel/security/lsm").read_text())
    assert f.summary().startswith(f"kernel {f.release}: ")


def test_probe_as_another_user_says_not_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to become nobody")
    code = "from collector import kernel_features as k; f = k.probe(); print(f.available(), set(f.why.values()))"
    r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[] {'not root'}"
