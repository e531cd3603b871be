"""What the per-operation sensor benches share (bench/network_overhead.py, bench/udp_overhead.py):
the gcc-built loop they time, the sensor's ring buffer drained by a thread as the collector does,
and the kernel's own run time of the programs they loaded (kernel.bpf_stats_enabled)."""

from __future__ import annotations

import json
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any


def build_loop(source: str, prefix: str) -> Path:
    """``source`` compiled with gcc -O2 in a new temporary directory; the binary's path."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    (work / "loop.c").write_text(source)
    subprocess.run(["gcc", "-O2", "-o", str(work / "loop"), str(work / "loop.c")], check=True)
    return work / "loop"


def run_loop(binary: Path, *args: str | int) -> float:
    """One run of the loop; it prints its time per operation."""
    out = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, check=True)
    return float(out.stdout)


def start_drain(bpf: Any, on_record: Callable[[Any, Any, int], int]) -> Callable[[], None]:
    """Drain the program's ``events`` ring buffer in a thread; returns what stops it."""
    bpf["events"].open_ring_buffer(on_record)
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            bpf.ring_buffer_poll(100)
            bpf.ring_buffer_consume()  # as collector/drain.py: sensors write without wakeups

    t = threading.Thread(target=drain, daemon=True)
    t.start()

    def halt() -> None:
        stop.set()
        t.join()
        bpf.ring_buffer_consume()
    return halt


def prog_stats() -> dict[str, tuple[int, int]]:
    """"id:name" → (run_time_ns, run_cnt) of every loaded BPF program."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True)
    return {f"{p['id']}:{p.get('name', '')}": (p.get("run_time_ns", 0), p.get("run_cnt", 0))
            for p in json.loads(out.stdout)}


def our_run_time(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]],
                 ids_before: set[str], ours: Callable[[str], bool]) -> tuple[int, list[tuple[str, int, float]]]:
    """Kernel run time (ns) between two prog_stats() of the programs loaded since ``ids_before``
    whose name ``ours`` accepts (others load programs on this shared machine too), and
    (name, runs, ns per run) of each that ran."""
    total, rows = 0, []
    for k, (ns, cnt) in sorted(after.items()):
        name = k.split(":", 1)[1]
        if k in ids_before or not ours(name):
            continue
        ns0, cnt0 = before.get(k, (0, 0))
        if cnt - cnt0 > 0:
            total += ns - ns0
            rows.append((name, cnt - cnt0, (ns - ns0) / (cnt - cnt0)))
    return total, rows
