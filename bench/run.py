"""The benchmark harness: one command, every figure side by side in one run, a table on stdout and
the same figures as JSON.

    sudo .venv/bin/python -m bench [--size tiny|small|full] [--json FILE] [--only drain,e2e,...]

Sections: footprint (start-up, RSS), drain (kernel → Kafka, beside bpftrace), e2e (enricher
throughput, latency), overhead (cost on an exec loop and a write loop, beside bpftrace).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import common
from tetrapipe.broker import EmbeddedBroker

SECTIONS = ("footprint", "drain", "e2e", "overhead")


@dataclass
class Context:
    size: common.Size
    ws: common.Workspace
    binary: Path
    bootstrap: str
    broker_pid: int
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    notes: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)

    def new_pipeline(self, tmp: Path, **settings: str) -> common.BenchPipeline:
        """Services of one measurement, on a broker of their own: the enricher and exporter
        consumer groups have fixed names, so pipelines sharing a broker would rebalance each other
        (and members of stopped pipelines hold up the next one's join on Tansu)."""
        tmp.mkdir(parents=True, exist_ok=True)
        broker = EmbeddedBroker(log_path=tmp / "tansu.log").start()
        p = common.BenchPipeline(broker.bootstrap, tmp, broker=broker)
        p.settings.update({"procfs_bootstrap": "false", "log_level": "warning", **settings})
        return p

    def pipeline_env(self, extra: dict[str, str]) -> dict[str, str]:
        """Settings for a process outside a pipeline (start-up probes): the shared broker."""
        p = common.Pipeline(self.bootstrap, self.ws.sub("env"))
        p.settings.update({"procfs_bootstrap": "false", "log_level": "warning"})
        return p.env(extra)

    def note_pid(self, name: str, pid: int) -> None:
        self.pids[name] = pid

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def machine() -> dict[str, Any]:
    def first(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "cpu_model": cpu,
            "python": platform.python_version(), "loadavg_at_start": os.getloadavg(),
            "python_loop_1e6_s_at_start": python_speed(),
            "bpftrace": common.bpftrace_version() or "not installed",
            "perf_cycles": perf_cycles_supported(), "git_commit": first(["git", "-C", str(common.REPO),
                                                                          "rev-parse", "--short", "HEAD"])}


def python_speed() -> float:
    """Seconds for 10^6 iterations of a bare Python loop here and now: a yardstick of how much CPU
    this shared VM gave us (an an idle modern core: about 0.05 s)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        s = 0
        for i in range(10**6):
            s += i
        best = min(best, time.perf_counter() - t0)
    return round(best, 4)


def perf_cycles_supported() -> bool:
    try:
        r = subprocess.run(["perf", "stat", "-x,", "-e", "cycles", "true"], capture_output=True,
                           text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and "not supported" not in r.stderr and "cycles" in r.stderr


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(common.SIZES), default="full")
    p.add_argument("--json", default=str(common.REPO / "bench" / "results" / "latest.json"),
                   help="where the figures go as JSON (default bench/results/latest.json)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    p.add_argument("--keep", action="store_true", help="keep the temporary files")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench: needs root (it loads BPF programs)")
    wanted = [s for s in args.only.split(",") if s]
    for s in wanted:
        if s not in SECTIONS:
            sys.exit(f"bench: unknown section {s!r} (choose from {', '.join(SECTIONS)})")

    from bench import drain, e2e, footprint, overhead, report

    modules = {"drain": drain, "e2e": e2e, "footprint": footprint, "overhead": overhead}
    ws = common.Workspace()
    started = time.time()
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "size": args.size, "machine": machine(), "sections": {}, "errors": {},
    }
    broker = EmbeddedBroker(log_path=ws.root / "tansu.log").start()
    try:
        ctx = Context(common.SIZES[args.size], ws, common.workload_binary(ws.build),
                      broker.bootstrap, broker.proc.pid if broker.proc else 0)
        if not common.bpftrace_path():
            ctx.note("bpftrace is not installed: peer figures are missing (apt-get install bpftrace)")
        if not results["machine"]["perf_cycles"]:
            ctx.note("perf stat cannot count cycles here (`perf stat -e cycles true`: not supported):"
                     " overhead is wall time and CPU time (user+sys) of the loop")
        for name in SECTIONS:
            if name not in wanted:
                continue
            t0 = time.monotonic()
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            try:
                results["sections"][name] = modules[name].run(ctx)
            except Exception as exc:  # one section failing must not lose the others' figures
                traceback.print_exc()
                results["errors"][name] = f"{type(exc).__name__}: {exc}"
            print(f"bench: {name} took {time.monotonic() - t0:.0f}s", file=sys.stderr, flush=True)
        results["notes"] = ctx.notes
        results["seconds"] = round(time.time() - started, 1)
        results["machine"]["loadavg_at_end"] = os.getloadavg()
        results["machine"]["python_loop_1e6_s_at_end"] = python_speed()
    finally:
        broker.stop()
        if not args.keep:
            ws.cleanup()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    print(report.table(results))
    print(f"\nfigures written to {args.json}")
    return 1 if results["errors"] else 0
