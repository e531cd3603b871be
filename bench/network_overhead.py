"""Per-connection overhead of the network sensor (bpf/network.c).

Runs a gcc-compiled loop of N loopback TCP connect → accept → close cycles, alternately without
and with the sensor loaded (the process program plus the network sensor, ring buffer drained by
a thread as the collector does), and prints the wall time per connection for both. With
``--bpf-stats`` it also turns on kernel.bpf_stats_enabled for the run (restored after) and prints
the kernel's own run time per invocation of each sensor program.

    sudo .venv/bin/python bench/network_overhead.py [--conns 20000] [--rounds 3] [--bpf-stats]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.sensor_bench import build_loop, our_run_time, prog_stats, run_loop, start_drain  # noqa: E402
from collector import loader  # noqa: E402
from collector.sensors import BPF_DIR, SENSORS, program_text  # noqa: E402

LOOP_C = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t al = sizeof(a);
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(l, (void *)&a, sizeof(a)) || listen(l, 128) || getsockname(l, (void *)&a, &al)) return 1;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < n; i++) {
        int c = socket(AF_INET, SOCK_STREAM, 0);
        struct linger lg = {1, 0};  /* RST on close: no TIME_WAIT pile-up over many runs */
        setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        if (connect(c, (void *)&a, sizeof(a))) return 2;
        int s = accept(l, 0, 0);
        if (s < 0) return 3;
        close(c);
        close(s);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.3f\n", ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n / 1000.0);
    return 0;
}
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bpf-stats", action="store_true")
    a = ap.parse_args()

    binary = build_loop(LOOP_C, "tp-netbench-")
    loader.prepare()
    net = [s for s in SENSORS if s.name == "network"]
    text = program_text((BPF_DIR / "process.c").read_text(), net)
    # our programs by name (others load programs on this shared machine during the run too)
    names = {f"tracepoint__{a}__{b}" for a, b in re.findall(r"^TRACEPOINT_PROBE\((\w+), (\w+)\)", text, re.M)}
    names |= {f"raw_tracepoint__{a}" for a in re.findall(r"^RAW_TRACEPOINT_PROBE\((\w+)\)", text, re.M)}
    received = 0

    def on_record(_ctx: object, _data: object, _size: int) -> int:
        nonlocal received
        received += 1
        return 0

    base: list[float] = []
    kernel: list[float] = []
    loaded: list[float] = []
    stats_path = Path("/proc/sys/kernel/bpf_stats_enabled")
    old_stats = stats_path.read_text().strip()
    run_loop(binary, 1000)  # warm up
    for _ in range(a.rounds):
        base.append(run_loop(binary, a.conns))
        ids_before = set(prog_stats()) if a.bpf_stats else set()
        bpf = loader.load_program("process.c", {"TP_RINGBUF_PAGES": 1024}, text=text)
        stop_drain = start_drain(bpf, on_record)
        if a.bpf_stats:
            stats_path.write_text("1")
            before = prog_stats()
        loaded.append(run_loop(binary, a.conns))
        if a.bpf_stats:
            after = prog_stats()
            stats_path.write_text(old_stats)
            total, rows = our_run_time(before, after, ids_before, names.__contains__)
            for name, runs, per_run in rows:
                print(f"  {name:<40} {runs:>8} runs {per_run:8.0f} ns/run")
            kernel.append(total / a.conns / 1000)
            print(f"  kernel time of our programs: {kernel[-1]:.2f} us/connection")
        stop_drain()
        bpf.cleanup()
        time.sleep(0.5)
    b, lo = statistics.median(base), statistics.median(loaded)
    print(f"connections per round: {a.conns}, rounds: {a.rounds}, records drained: {received}")
    print(f"without sensor: {b:.2f} us/connection (rounds {', '.join(f'{x:.2f}' for x in base)})")
    print(f"with sensor:    {lo:.2f} us/connection (rounds {', '.join(f'{x:.2f}' for x in loaded)})")
    print(f"overhead:       {lo - b:+.2f} us/connection ({(lo - b) / b * 100:+.1f}%), "
          f"one connection = connect + accept + 2 close (3 records)")
    if kernel:
        print(f"kernel time:    {statistics.median(kernel):.2f} us/connection (median; runs of the "
              f"sensor's programs, any process's connections during the round included)")


if __name__ == "__main__":
    main()
