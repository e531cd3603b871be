"""Per-process event order (issue #12): a short-lived process that opens and writes a file under a
policy gets its records into the collector's queue (which goes to Kafka in that order, one
partition per node) in kernel-time order, its exit last. Before the fix, the exit came from the
process program's drain at once while the policy drain held the write record until the process
drain had passed its time: the write arrived after the exit (seen by hand, issue #12).

As the collector runs it: the process program (bpf/process.c) drained by one thread, a
PolicyManager whose drains are ordered after it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import bpf_unavailable_reason, skip_or_fail

from bpf import records

RUNS = 100
POLICY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: order-exit-last}
spec:
  kprobes:
  - call: sys_write
    syscall: true
    args: [{index: 0, type: fd}]
    selectors:
    - matchArgs: [{index: 0, operator: Prefix, values: ["%s/"]}]
"""


@pytest.mark.kernel
def test_short_lived_process_exit_after_its_policy_events(tmp_path: Path) -> None:
    reason = bpf_unavailable_reason()
    if reason:
        skip_or_fail(reason)
    from collector import loader, procfs
    from collector.drain import ORDER_POLL_MS, RecordQueue, RingBufferDrain
    from collector.policy.manager import PolicyManager

    os.chmod(tmp_path, 0o755)
    loader.prepare(tmp_path / "kernel-headers")
    loop = asyncio.new_event_loop()
    q = RecordQueue(1_000_000, loop)
    proc = loader.load_program("process.c", {"TP_RINGBUF_PAGES": 256})
    pdrain = RingBufferDrain(proc, q, poll_ms=ORDER_POLL_MS)
    pdrain.start()
    mgr = PolicyManager(q, procfs.host_namespaces())
    mgr.order_after = pdrain
    target = tmp_path / "out"
    try:
        (lp,) = mgr.load_text(POLICY % tmp_path, "order.yaml")
        pids = []
        for _ in range(RUNS):   # exec, open, write, exit: as short as a process gets
            p = subprocess.Popen(["/bin/sh", "-c", f"echo x >> {target}"])
            p.wait()
            pids.append(p.pid)
        time.sleep(2.5)         # past EXIT_HOLD_MAX_NS: everything is queued by now
        seen: dict[int, list[tuple[int, int]]] = {pid: [] for pid in pids}   # pid → [(kind, ktime)]
        for raw in q.take(1 << 30):
            rec = records.decode(raw)
            h = rec.header
            if h.pid in seen and h.kind in (records.REC_EXEC, records.REC_EXIT, records.REC_HOOK):
                if h.kind == records.REC_HOOK and records.decode_hook(rec).policy_id != lp.policy_id:
                    continue
                seen[h.pid].append((h.kind, h.ktime))
    finally:
        mgr.stop()
        pdrain.stop()
        proc.cleanup()
        loop.close()
    bad = []
    for pid, recs in seen.items():
        kinds = [k for k, _ in recs]
        if records.REC_HOOK not in kinds or kinds[-1] != records.REC_EXIT:
            bad.append((pid, kinds))
        elif [t for _, t in recs] != sorted(t for _, t in recs):
            bad.append((pid, recs))
    assert not bad, f"{len(bad)} of {RUNS} processes out of order (exec=1, exit=2, hook=5): {bad[:5]}"
