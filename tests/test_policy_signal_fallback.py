"""A Sigkill the kernel could not send (bpf_send_signal failed, e.g. -EBUSY) is sent by the
collector, counted and logged (collector/policy/doom.py, hookfn.py): never dropped silently.

bpf_send_signal's -EBUSY cannot be provoked on demand (it needs the CPU's deferred-signal slot
taken by another signal at that instant), so the test fills the real ``sig_failed`` map of a
compiled seed policy program as the kernel would (tgid → signal) and checks that the manager's
periodic pass kills the process, empties the map and moves the counter; and that the generated C
keeps bpf_send_signal's result, flags the record and writes the map.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import bpf_unavailable_reason, skip_or_fail
from prometheus_client import REGISTRY

from collector import kernel_features, loader
from collector.policy import compiler, doom, parser

SEED = Path(__file__).parent / "data" / "seed" / "deny-tmp-forbidden-write.yaml"


def _compiled(features: kernel_features.KernelFeatures | None = None) -> compiler.Compiled:
    (p,) = parser.parse_text(SEED.read_text(), str(SEED))
    return compiler.compile_policy(p, 4242, [0] * 10, features)


def test_sigkill_keeps_the_send_result_and_refuses_in_flight_where_the_kernel_can() -> None:
    here = _compiled()   # this kernel: tracepoints only, no LSM/fmod_ret: the signal alone
    assert here.sig_failed and "sigerr = bpf_send_signal(9);" in here.text
    assert "sig_failed.update(&stg, &sg);" in here.text and "TP_HOOK_SIGNAL_FAILED" in here.text
    assert "doomed" not in here.text and not any(f == "file_permission" for _, f in here.kattach)
    lsm = _compiled(kernel_features.with_features(kernel_features.NONE, bpf_lsm=True, btf=True))
    assert ("lsm", "file_permission") in lsm.kattach and "doomed.update(&tg, &st);" in lsm.text
    fmod = _compiled(kernel_features.with_features(kernel_features.NONE, fmod_ret=True, btf=True))
    assert ("fmod_ret", "security_file_permission") in fmod.kattach
    assert any("refused (-EPERM)" in n for n in lsm.notices)


def _fallbacks(policy: str) -> float:
    return REGISTRY.get_sample_value("tetrapipe_tracingpolicy_signal_fallbacks_total",
                                     {"policy": policy, "signal": "9"}) or 0.0


@pytest.mark.kernel
def test_a_signal_the_kernel_could_not_send_is_sent_by_the_collector(tmp_path: Path) -> None:
    if why := bpf_unavailable_reason():
        skip_or_fail(why)
    loader.prepare(tmp_path / "kernel-headers")
    comp = _compiled()
    bpf = loader.load_program("seed (signal fallback test)", text=comp.text)
    victim = subprocess.Popen(["sleep", "60"])
    try:
        table = bpf["sig_failed"]
        table[ctypes.c_uint32(victim.pid)] = ctypes.c_uint32(signal.SIGKILL)
        before = _fallbacks("fallback-test")
        doom.send_failed_signals("fallback-test", table)
        assert victim.wait(timeout=10) == -signal.SIGKILL
        assert len(list(table.items())) == 0
        assert _fallbacks("fallback-test") == before + 1
        doom.send_failed_signals("fallback-test", table)   # nothing left: nothing sent twice
        assert _fallbacks("fallback-test") == before + 1
    finally:
        if victim.poll() is None:
            victim.kill()
        bpf.cleanup()
