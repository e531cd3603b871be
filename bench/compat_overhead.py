"""Cost of serving 32-bit syscalls (raw_syscalls:sys_enter/exit with TS_COMPAT, issue #12) in a
policy program: a ``dd bs=1`` loop (one read and one write per byte, to a file outside the
policy's paths) timed with the seed policy loaded with and without the compat probes, rounds
interleaved, dd's CPU time (user + system) per write; and with no policy at all.

    sudo .venv/bin/python bench/compat_overhead.py [--writes 200000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector import loader, procfs  # noqa: E402
from collector.drain import RecordQueue  # noqa: E402
from collector.policy import compiler  # noqa: E402
from collector.policy.manager import PolicyManager  # noqa: E402

SEED = Path(__file__).resolve().parent.parent / "tests" / "data" / "seed" / "deny-tmp-forbidden-write.yaml"


def dd_us_per_write(writes: int, out: Path) -> float:
    pid = os.fork()
    if pid == 0:
        os.execvp("dd", ["dd", "if=/dev/zero", f"of={out}", "bs=1", f"count={writes}", "status=none"])
    _, _, ru = os.wait4(pid, 0)
    return (ru.ru_utime + ru.ru_stime) / writes * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--writes", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    loader.prepare()
    loop = asyncio.new_event_loop()
    q = RecordQueue(1_000_000, loop)
    text = SEED.read_text()
    results: dict[str, list[float]] = {"none": [], "seed, 64-bit only": [], "seed + 32-bit (raw_syscalls)": []}
    orig = compiler.ProgramGen.__init__

    def no_compat(self, *args, **kw) -> None:   # type: ignore[no-untyped-def]
        orig(self, *args, **kw)
        self.compat = False

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "out"
        for _ in range(a.rounds):
            results["none"].append(dd_us_per_write(a.writes, out))
            for label, patch in (("seed, 64-bit only", True), ("seed + 32-bit (raw_syscalls)", False)):
                compiler.ProgramGen.__init__ = no_compat if patch else orig  # type: ignore[method-assign]
                mgr = PolicyManager(q, procfs.host_namespaces())
                mgr.load_text(text, "seed.yaml")
                results[label].append(dd_us_per_write(a.writes, out))
                mgr.stop()
                q.take(1 << 30)
        compiler.ProgramGen.__init__ = orig  # type: ignore[method-assign]
    for label, v in results.items():
        print(f"{label:32s} median {statistics.median(v):.2f} us/write  (rounds: "
              + ", ".join(f"{x:.2f}" for x in v) + ")")


if __name__ == "__main__":
    main()
