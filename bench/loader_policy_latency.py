"""Loader events turned on by a ``spec.loader`` policy: how long the sensor takes to load, and how
long a loader record takes from the kernel (its ktime) to the collector's record queue, with and
without holding it until the process program's drain has caught up (``order_after``: the exec
of a new process reaches the queue before its library loads).

As the collector does: the process program (bpf/process.c) drained by a thread, a PolicyManager
that loads the loader sensor for the policy. A gcc-compiled program dlopen()s a library N times
(one process each); for each of its loader records the queue's arrival time minus the record's
kernel time is taken (bpf_ktime_get_ns and time.monotonic_ns are the same clock).

    sudo .venv/bin/python bench/loader_policy_latency.py [--runs 40]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bpf import records  # noqa: E402
from collector import loader, procfs  # noqa: E402
from collector.drain import RecordQueue, RingBufferDrain  # noqa: E402
from collector.policy.manager import PolicyManager  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
POLICY = (REPO / "examples" / "policies" / "library-loads.yaml").read_text()
LIB_C = "int tp_answer(void) { return 42; }\n"
MAIN_C = r"""
#include <dlfcn.h>
int main(int argc, char **argv) { return dlopen(argv[1], RTLD_NOW) ? 0 : 1; }
"""


class TimedQueue(RecordQueue):
    """The collector's queue, noting when each loader record arrived."""

    def __init__(self, maxlen: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(maxlen, loop)
        self.arrivals: list[tuple[int, int, str]] = []   # (pid, delay ns, path)

    def offer(self, rec: bytes) -> bool:
        now = time.monotonic_ns()
        if len(rec) >= records.HEADER.size:
            kind, _, _, pid, _, ktime = records.HEADER.unpack_from(rec)
            if kind == records.REC_LOADER:
                lr = records.decode(rec)
                assert isinstance(lr, records.LoaderRecord)
                self.arrivals.append((pid, now - ktime, lr.path.decode()))
        return super().offer(rec)


def run(ordered: bool, runs: int, tmp: Path) -> tuple[float, list[int]]:
    loop = asyncio.new_event_loop()
    q = TimedQueue(1_000_000, loop)
    proc = loader.load_program("process.c", {"TP_RINGBUF_PAGES": 256})
    pdrain = RingBufferDrain(proc, q)
    pdrain.start()
    mgr = PolicyManager(q, procfs.host_namespaces())
    mgr.order_after = pdrain if ordered else None
    try:
        t0 = time.monotonic()
        mgr.load_text(POLICY, "library-loads.yaml")
        load_s = time.monotonic() - t0
        lib = tmp / "libtpbench.so"
        pids = set()
        for _ in range(runs):
            p = subprocess.Popen([str(tmp / "dlopener"), str(lib)])
            p.wait()
            pids.add(p.pid)
            time.sleep(0.05)
        time.sleep(0.5)
        delays = [d for pid, d, path in q.arrivals if pid in pids and path == str(lib)]
        return load_s, delays
    finally:
        mgr.stop()
        pdrain.stop()
        proc.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40)
    args = ap.parse_args()
    loader.prepare()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "lib.c").write_text(LIB_C)
        (tmp / "main.c").write_text(MAIN_C)
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", tmp / "libtpbench.so", tmp / "lib.c"], check=True)
        subprocess.run(["gcc", "-o", tmp / "dlopener", tmp / "main.c", "-ldl"], check=True)
        for ordered in (False, True):
            load_s, delays = run(ordered, args.runs, tmp)
            ms = sorted(x / 1e6 for x in delays)
            label = "held for the process drain" if ordered else "not held"
            if not ms:
                print(f"{label}: no loader records of the test library arrived")
                continue
            print(f"{label}: sensor loaded in {load_s:.2f}s; {len(ms)}/{args.runs} records; kernel → queue "
                  f"median {statistics.median(ms):.1f} ms, p90 {ms[int(len(ms) * 0.9) - 1]:.1f} ms, "
                  f"max {ms[-1]:.1f} ms")


if __name__ == "__main__":
    main()
