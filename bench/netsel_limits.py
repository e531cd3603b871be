"""Network selectors (collector/policy/netsel.py): what an address set of N CIDRs costs.

For N CIDRs in one DAddr filter (the policy's LPM trie) on ``sys_connect``'s sockaddr: the time to
compile, load and fill the policy, and the mean time of a UDP ``connect()`` on loopback while the
policy is loaded (the selector's view read + one LPM lookup per call; the address never matches,
so no event is made). N = 16,384 is the per-policy limit (``NET_ADDR_MAX``).

    sudo .venv/bin/python bench/netsel_limits.py [--sizes 1,1024,16384] [--calls 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector import loader, procfs  # noqa: E402
from collector.drain import RecordQueue  # noqa: E402
from collector.policy.manager import PolicyManager  # noqa: E402

POLICY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: netsel-bench}
spec:
  kprobes:
  - call: sys_connect
    syscall: true
    args: [{index: 1, type: sockaddr}]
    selectors:
    - matchArgs: [{index: 1, operator: DAddr, values: [CIDRS]}]
"""


def _connects(n: int) -> float:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    t0 = time.perf_counter()
    for i in range(n):
        s.connect(("127.0.0.1", 9 + (i & 1)))
    dt = time.perf_counter() - t0
    s.close()
    return dt / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,1024,16384")
    ap.add_argument("--calls", type=int, default=20000)
    args = ap.parse_args()
    loader.prepare()
    base = _connects(args.calls)
    print(f"no policy: connect() {base:.2f} us")
    for n in (int(x) for x in args.sizes.split(",")):
        cidrs = ", ".join(f'"10.{i >> 8 & 255}.{i & 255}.0/24"' for i in range(n))
        m = PolicyManager(RecordQueue(100_000, asyncio.new_event_loop()), procfs.host_namespaces())
        try:
            t0 = time.perf_counter()
            m.load_text(POLICY.replace("CIDRS", cidrs), "bench.yaml")
            load = time.perf_counter() - t0
            us = _connects(args.calls)
            print(f"{n:6d} CIDRs: load {load:.2f} s, connect() {us:.2f} us (+{us - base:.2f})")
        finally:
            m.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
