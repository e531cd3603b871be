"""Write-loop slowdown caused by a loaded policy whose selectors match nothing.

    sudo .venv/bin/python bench/policy_write_overhead.py [--writes 200000] [--rounds 5]

A ``dd bs=1`` loop (one read(2) and one write(2) per byte, to a file under /tmp) is timed with
each policy below loaded alone through the collector's PolicyManager (real bcc programs).
The machine is shared and noisy, so rounds alternate between the policy enabled and the same
program disabled (still attached; it returns after one map lookup), and the medians are compared.
A run without any program, before and after, shows the cost of an attached tracepoint itself.
Figures are dd's CPU time (user + system) per write.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bpf import records  # noqa: E402
from collector import loader, procfs  # noqa: E402
from collector.drain import RecordQueue  # noqa: E402
from collector.policy.manager import PolicyManager  # noqa: E402

SEED = Path(__file__).resolve().parent.parent / "tests" / "data" / "seed" / "deny-tmp-forbidden-write.yaml"

HEAD = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  kprobes:
  - call: "sys_write"
    syscall: true
    args:
    - index: 0
      type: "fd"
    - index: 1
      type: "char_buf"
      sizeArgIndex: 3
    - index: 2
      type: "size_t"
    selectors:
"""
POLICIES = {
    "fd path Prefix, no match": HEAD + """    - matchArgs:
      - index: 0
        operator: "Prefix"
        values: ["/nonexistent/"]
      matchActions:
      - action: Sigkill
""",
    "matchPIDs, no match": HEAD + """    - matchPIDs:
      - operator: In
        values: [1]
      matchActions:
      - action: Sigkill
""",
    "matchBinaries, no match": HEAD + """    - matchBinaries:
      - operator: In
        values: ["/nonexistent/bin"]
      matchActions:
      - action: Sigkill
""",
}


def dd_ns_per_write(target: str, writes: int) -> float:
    """CPU time (user + system: BPF programs run in the syscall, so in system time) of dd per
    write; less disturbed by other load on a shared machine than wall time."""
    proc = subprocess.Popen(["dd", "if=/dev/zero", f"of={target}", "bs=1", f"count={writes}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"dd failed: {proc.returncode}")
    return (ru.ru_utime + ru.ru_stime) * 1e9 / writes


def measure(target: str, writes: int, rounds: int) -> float:
    return statistics.median(dd_ns_per_write(target, writes) for _ in range(rounds))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--writes", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (loads BPF programs)")
    loader.prepare()
    mgr = PolicyManager(RecordQueue(1_000_000, asyncio.new_event_loop()), procfs.host_namespaces())
    tmp = tempfile.mkdtemp(prefix="tp-bench-")
    target = os.path.join(tmp, "out")
    texts = {"seed deny-tmp-forbidden-write (other file)": SEED.read_text(), **POLICIES}
    base = measure(target, a.writes, a.rounds)
    print(f"dd bs=1 count={a.writes}, medians of {a.rounds} alternating rounds")
    print(f"{'no program attached':<46} {base:8.0f} ns CPU/write")
    for i, (label, text) in enumerate(texts.items()):
        text = text.replace("{name}", f"bench-{i}")
        (lp,) = mgr.load_text(text, label)
        on_off = {1: [], 0: []}
        try:
            for _ in range(a.rounds):
                for state in (0, 1):
                    lp.bpf["enabled"][ctypes.c_int(0)] = ctypes.c_uint32(state)
                    on_off[state].append(dd_ns_per_write(target, a.writes))
            events = sum(1 for raw in mgr.queue.take(10_000_000)
                         if isinstance(records.decode(raw), records.HookRecord))
            on, off = statistics.median(on_off[1]), statistics.median(on_off[0])
            print(f"{label:<46} enabled {on:7.0f} ns CPU/write, disabled {off:7.0f}: "
                  f"{100 * (on - off) / off:+6.1f} % (hook events: {events})")
        finally:
            mgr.delete(lp.name)
    again = measure(target, a.writes, a.rounds)
    print(f"{'no program attached (again)':<46} {again:8.0f} ns CPU/write")
    mgr.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
