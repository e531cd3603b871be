"""Per-datagram overhead of the UDP sensor (bpf/udp.c, collector/sensors/udp.py).

Runs a gcc-compiled loop of N loopback UDP sends, alternately without and with the sensor loaded
(the process program plus the UDP sensor with its cgroup/sendmsg4+6 programs linked to the cgroup
v2 root, ring buffer drained by a thread as the collector does), and prints the wall time per
send for both. Three kinds of send:
  connected    send() on a connected UDP socket (the tracepoint alone),
  unconnected  sendto() with a destination (cgroup/sendmsg4 stashes it, the tracepoint reads it),
  unix         write+read on an AF_UNIX stream pair: a send the sensor filters out at once (what
               every non-UDP send on the machine pays while the sensor is on).
With ``--bpf-stats`` it also turns on kernel.bpf_stats_enabled for the run (restored after) and
prints the kernel's own run time per invocation of each of the sensor's programs.

    sudo .venv/bin/python bench/udp_overhead.py [--sends 200000] [--rounds 3] [--bpf-stats]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.sensor_bench import build_loop, our_run_time, prog_stats, run_loop, start_drain  # noqa: E402
from collector import loader  # noqa: E402
from collector.sensors import BPF_DIR, SENSORS, program_text, setup  # noqa: E402

LOOP_C = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int n = atoi(argv[2]);
    const char *mode = argv[1];
    int r = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t al = sizeof(a);
    if (bind(r, (void *)&a, sizeof(a)) || getsockname(r, (void *)&a, &al)) return 1;
    int s = socket(AF_INET, SOCK_DGRAM, 0), u[2];
    if (!strcmp(mode, "connected") && connect(s, (void *)&a, sizeof(a))) return 2;
    if (!strcmp(mode, "unix") && socketpair(AF_UNIX, SOCK_STREAM, 0, u)) return 3;
    char buf[64] = "x";
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < n; i++) {
        if (!strcmp(mode, "connected")) {
            if (send(s, buf, 32, 0) < 0) return 4;
        } else if (!strcmp(mode, "unconnected")) {
            if (sendto(s, buf, 32, 0, (void *)&a, sizeof(a)) < 0) return 5;
        } else {
            if (write(u[0], buf, 1) != 1 || read(u[1], buf, 1) != 1) return 6;
        }
        /* the receiver never reads: once its buffer is full, loopback drops the datagrams and
         * send() still succeeds; only the send path is measured */
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.4f\n", ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n / 1000.0);
    return 0;
}
"""
MODES = ("connected", "unconnected", "unix")
OUR_PROGS = ("tracepoint__sock__sock_send_length", "tp_udp_sendmsg4", "tp_udp_sendmsg6")


def ours(name: str) -> bool:
    """bpftool names programs by their first 15 characters."""
    return any(p[:15] == name[:15] for p in OUR_PROGS)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sends", type=int, default=200000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bpf-stats", action="store_true")
    a = ap.parse_args()

    binary = build_loop(LOOP_C, "tp-udpbench-")
    loader.prepare()
    udp = [s for s in SENSORS if s.name == "udp"]
    text = program_text((BPF_DIR / "process.c").read_text(), udp)
    received = 0

    def on_record(_ctx: object, _data: object, _size: int) -> int:
        nonlocal received
        received += 1
        return 0

    base: dict[str, list[float]] = {m: [] for m in MODES}
    loaded: dict[str, list[float]] = {m: [] for m in MODES}
    kernel: dict[str, list[float]] = {m: [] for m in MODES}
    stats_path = Path("/proc/sys/kernel/bpf_stats_enabled")
    old_stats = stats_path.read_text().strip()
    for m in MODES:
        run_loop(binary, m, 10000)  # warm up
    for _ in range(a.rounds):
        for m in MODES:
            base[m].append(run_loop(binary, m, a.sends))
        ids_before = set(prog_stats()) if a.bpf_stats else set()
        bpf = loader.load_program("process.c", {"TP_RINGBUF_PAGES": 1024}, text=text)
        setup(bpf, udp)  # links the cgroup/sendmsg programs to the cgroup v2 root
        if not getattr(bpf, "tp_udp_links", None):
            sys.exit("cgroup/sendmsg4+6 did not attach: see the log above")
        stop_drain = start_drain(bpf, on_record)
        for m in MODES:
            if a.bpf_stats:
                stats_path.write_text("1")
                before = prog_stats()
            loaded[m].append(run_loop(binary, m, a.sends))
            if a.bpf_stats:
                after = prog_stats()
                stats_path.write_text(old_stats)
                total, rows = our_run_time(before, after, ids_before, ours)
                for name, runs, per_run in rows:
                    print(f"  {m:<11} {name:<36} {runs:>8} runs {per_run:8.0f} ns/run")
                kernel[m].append(total / a.sends)
        stop_drain()
        for link in bpf.tp_udp_links:
            os.close(link)
        bpf.cleanup()
        time.sleep(0.5)
    print(f"sends per round and kind: {a.sends}, rounds: {a.rounds}, records drained: {received}")
    for m in MODES:
        b, lo = statistics.median(base[m]), statistics.median(loaded[m])
        line = (f"{m:<11} without {b:7.3f} us/send, with {lo:7.3f} us/send, overhead "
                f"{(lo - b) * 1000:+6.0f} ns/send ({(lo - b) / b * 100:+.1f}%)")
        if kernel[m]:
            line += f", kernel time of our programs {statistics.median(kernel[m]):.0f} ns/send"
        print(line)
        print(f"            rounds without {', '.join(f'{x:.3f}' for x in base[m])}; "
              f"with {', '.join(f'{x:.3f}' for x in loaded[m])}")


if __name__ == "__main__":
    main()
