"""The drain alone, in one process: CPU per record to take records out of a real BPF ring buffer
the way main did (bcc's per-record callback: ctypes.string_at + append, then the queue) and the
bulk way (collector/ringbuf.py: the C helper, and its pure-Python fallback), interleaved in
rounds on the same filled buffer. The buffer (4 MiB) is filled by a tracepoint program on
getpgid() calls of this process (tests/data/ringbuf_bulk.c), then drained; only the drain is
timed (process CPU time), so the figure holds on a loaded machine.

    sudo .venv/bin/python -m bench.drain_bulk [--records 40000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from collector import loader, ringbuf

REPO = Path(__file__).resolve().parent.parent
TAG = 1 << 30
_libc = ctypes.CDLL(None)


def _fill(n: int) -> None:
    for i in range(n):
        _libc.getpgid(TAG | 2 << 16 | (i & 0xFFFF))   # 61-byte records (size class 2)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.drain_bulk")
    ap.add_argument("--records", type=int, default=40000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    loader.prepare(Path(tempfile.mkdtemp(prefix="tetrapipe-drain-bulk-")) / "kernel-headers")
    text = (REPO / "tests" / "data" / "ringbuf_bulk.c").read_text()
    bpf = loader.load_program("ringbuf_bulk.c", {"TEST_PID": os.getpid(), "RB_PAGES": 1024}, text=text)
    got: list[bytes] = []

    def on_record(_ctx: object, data: int, size: int) -> int:   # as main's RingBufferDrain
        got.append(ctypes.string_at(data, size))
        return 0

    try:
        bpf["rb"].open_ring_buffer(on_record)
        rings = {"native": ringbuf.MappedRingBuffer(ringbuf.map_fd(bpf, "rb"), use_native=True),
                 "python": ringbuf.MappedRingBuffer(ringbuf.map_fd(bpf, "rb"), use_native=False)}
        assert rings["native"].native, "C helper not built: scripts/setup-native.sh"
        res: dict[str, list[float]] = {"bcc-callback": [], "native": [], "python": []}
        for _ in range(a.rounds):
            for way in res:
                _fill(a.records)
                got.clear()
                n = 0
                c0 = time.process_time()
                if way == "bcc-callback":
                    bpf.ring_buffer_consume()
                    n = len(got)
                else:
                    while (span := rings[way].drain()) is not None:
                        n += len(span)
                cpu = time.process_time() - c0
                if n != a.records:
                    raise RuntimeError(f"{way}: drained {n} of {a.records} records (lost? ring too small?)")
                res[way].append(1e6 * cpu / n)
        out = {w: {"median_us_per_record": statistics.median(v), "min": min(v), "max": max(v)}
               for w, v in res.items()}
        print(json.dumps({"records_per_round": a.records, "rounds": a.rounds,
                          "loadavg": os.getloadavg(), "cpu_us_per_record": out}, indent=1))
        for r in rings.values():
            r.close()
    finally:
        bpf.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
