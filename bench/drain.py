"""Section 1: kernel → Kafka drain. The highest sustained event rate with zero loss, for exec
events (the real collector and bpf/process.c) and for syscall events (the real collector with a
monitor-mode TracingPolicy on openat matching the loop's file: syscalls:sys_enter_openat), side by
side with bpftrace printing one line per event on the same tracepoint, and the untraced loop.

Loss is counted end to end: operations the generator made minus records that reached Kafka (or
lines bpftrace printed), per step, so kernel drops, queue drops and producer failures all count.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import common
from bench.kafka_tools import count_raw_records
from bench.overhead import policy_engine_present
from bpf import records

AGENTS = ("none", "bpftrace", "tetrapipe")


def _rotate(seq: tuple[str, ...], n: int) -> list[str]:
    n %= len(seq)
    return list(seq[n:] + seq[:n])


class Steps:
    """Runs the loop at full speed, then at fractions of that rate (loss is known only after the
    agent stopped: Kafka and bpftrace's output are counted then, per step)."""

    def __init__(self, ctx: Any, mode: str, target_for: Any) -> None:
        self.ctx = ctx
        self.mode = mode
        self.target_for = target_for

    def run(self, tag: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        full_rate = 0.0
        for i, frac in enumerate((1.0, *self.ctx.size.rate_steps)):
            rate = 0.0 if i == 0 else max(1.0, full_rate * frac)
            target = self.target_for(f"{tag}-s{i}")
            run = common.run_load(self.ctx.binary, self.mode, target, self.ctx.size.seconds, rate)
            if i == 0:
                full_rate = run.rate
            out.append({"step": i, "target": target, "asked_rate": rate or None,
                        "ops": run.ops, "rate": run.rate, "pid": run.pid})
        return out


OPEN_POLICY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  kprobes:
  - call: "sys_openat"
    syscall: true
    args:
    - index: 0
      type: "int"
    - index: 1
      type: "string"
    selectors:
    - matchArgs:
      - index: 1
        operator: "Prefix"
        values: ["{prefix}"]
"""


def _openat_section(ctx: Any) -> dict[str, Any]:
    d = ctx.ws.sub("o")
    if not policy_engine_present():
        raise RuntimeError("the open() drain needs the policy engine (collector/policy)")
    agents = AGENTS
    res: dict[str, list[Any]] = {a: [] for a in agents}
    for rnd in range(ctx.size.rounds):
        for agent in _rotate(agents, rnd):
            tag = f"{agent[:2]}{rnd}"

            def target(name: str) -> str:
                p = d / name
                if not p.exists():
                    os.mknod(p)  # not open(): no openat of ours on the matched files
                return str(p)

            if agent == "none":
                run = common.run_load(ctx.binary, "open", target(f"{tag}-s0"), ctx.size.seconds)
                res["none"].append([{"ops": run.ops, "rate": run.rate}])
            elif agent == "bpftrace":
                if not common.bpftrace_path():
                    continue
                prefix = str(d / f"{tag}-")
                bt = common.Bpftrace(
                    'tracepoint:syscalls:sys_enter_openat '
                    f'/strncmp(str(args->filename), "{prefix}", {len(prefix)}) == 0/ '
                    '{ printf("%s\\n", str(args->filename)); }', d / f"{tag}.out").start()
                steps = Steps(ctx, "open", target).run(tag)
                time.sleep(1.0)  # let bpftrace print what it read last (the collector flushes at stop)
                out = bt.stop()
                lines = Counter(out.splitlines())
                for s in steps:
                    s["seen"] = lines.get(s["target"], 0)
                    s["lost"] = s["ops"] - s["seen"]
                res["bpftrace"].append({"steps": steps, "reported_lost": common.bpftrace_lost(out)})
            else:
                res["tetrapipe"].append(_policy_collector_steps(ctx, d, tag, target))
    return _summarise(res, "open() loop", "syscalls:sys_enter_openat")


def _policy_collector_steps(ctx: Any, d: Path, tag: str, target: Any) -> dict[str, Any]:
    """The real collector with a monitor-mode TracingPolicy on openat matching the step files;
    its hook records counted per generator process in the raw topic."""
    pol = d / f"{tag}-policy.yaml"
    pol.write_text(OPEN_POLICY.format(name=f"bench-open-{ctx.tag}-{tag}", prefix=str(d / f"{tag}-")))
    pipe = ctx.new_pipeline(d / tag, tracing_policy=str(pol))
    try:
        svc = pipe.start("collector", "collector")
        ctx.note_pid("collector (policy)", svc.proc.pid if svc.proc else 0)
        cpu0 = common.cpu_seconds(svc.proc.pid) if svc.proc else 0.0
        steps = Steps(ctx, "open", target).run(tag)
        cpu = (common.cpu_seconds(svc.proc.pid) if svc.proc else 0.0) - cpu0
        kernel_lost = svc.metric("tetrapipe_observer_ringbuf_events_lost_total")
        queue_lost = svc.metric("tetrapipe_observer_ringbuf_queue_events_lost_total")
        pipe.stop_services()
        pids = {s["pid"] for s in steps}
        by_pid: Counter[int] = Counter()

        def pred(rec: records.Record) -> bool:
            if isinstance(rec, records.HookRecord) and rec.header.pid in pids:
                by_pid[rec.header.pid] += 1
            return False
        asyncio.run(count_raw_records(pipe.bootstrap, pipe.base["raw_topic"], pred))
    finally:
        pipe.stop()
    for s in steps:
        s["seen"] = by_pid.get(s["pid"], 0)
        s["lost"] = s["ops"] - s["seen"]
    return {"steps": steps, "kernel_lost": kernel_lost, "queue_lost": queue_lost,
            "collector_cpu_s": cpu, "records": sum(s["seen"] for s in steps)}


def _exec_section(ctx: Any) -> dict[str, Any]:
    d = ctx.ws.sub("e")
    res: dict[str, list[Any]] = {a: [] for a in AGENTS}
    true_bin = shutil.which("true") or "/bin/true"
    for rnd in range(ctx.size.rounds):
        for agent in _rotate(AGENTS, rnd):
            tag = f"{agent[:2]}{rnd}"

            def target(name: str) -> str:
                p = d / name
                if not p.exists():
                    shutil.copy(true_bin, p)
                return str(p)

            if agent == "none":
                run = common.run_load(ctx.binary, "exec", target(f"{tag}-s0"), ctx.size.seconds)
                res["none"].append([{"ops": run.ops, "rate": run.rate}])
            elif agent == "bpftrace":
                if not common.bpftrace_path():
                    continue
                bt = common.Bpftrace('tracepoint:sched:sched_process_exec '
                                     '{ printf("%d %s\\n", pid, str(args->filename)); }',
                                     d / f"{tag}.out").start()
                steps = Steps(ctx, "exec", target).run(tag)
                time.sleep(1.0)  # let bpftrace print what it read last (the collector flushes at stop)
                out = bt.stop()
                names = Counter(line.partition(" ")[2] for line in out.splitlines())
                for s in steps:
                    s["seen"] = names.get(s["target"], 0)
                    s["lost"] = s["ops"] - s["seen"]
                res["bpftrace"].append({"steps": steps, "reported_lost": common.bpftrace_lost(out)})
            else:
                pipe = ctx.new_pipeline(d / tag)
                try:
                    svc = pipe.start("collector", "collector")
                    ctx.note_pid("collector", svc.proc.pid if svc.proc else 0)
                    cpu0 = common.cpu_seconds(svc.proc.pid) if svc.proc else 0.0
                    steps = Steps(ctx, "exec", target).run(tag)
                    cpu = (common.cpu_seconds(svc.proc.pid) if svc.proc else 0.0) - cpu0
                    kernel_lost = svc.metric("tetrapipe_observer_ringbuf_events_lost_total")
                    queue_lost = svc.metric("tetrapipe_observer_ringbuf_queue_events_lost_total")
                    pipe.stop_services()  # the collector flushes what it drained
                    counts = asyncio.run(_exec_filenames(pipe.bootstrap, pipe.base["raw_topic"],
                                                         {s["target"].encode() for s in steps}))
                finally:
                    pipe.stop()
                for s in steps:
                    s["seen"] = counts.get(s["target"].encode(), 0)
                    s["lost"] = s["ops"] - s["seen"]
                # the exec loop makes 3 records per op (fork, exec, exit): CPU per record
                res["tetrapipe"].append({"steps": steps, "kernel_lost": kernel_lost,
                                         "queue_lost": queue_lost, "collector_cpu_s": cpu,
                                         "records": 3 * sum(s["seen"] for s in steps)})
    return _summarise(res, "exec loop", "sched:sched_process_exec (+exit, fork)")


async def _exec_filenames(bootstrap: str, topic: str, wanted: set[bytes]) -> Counter[bytes]:
    counts: Counter[bytes] = Counter()

    def pred(rec: records.Record) -> bool:
        if isinstance(rec, records.ExecRecord) and rec.filename in wanted:
            counts[rec.filename] += 1
        return False
    await count_raw_records(bootstrap, topic, pred)
    return counts


def _best_zero_loss(steps: list[dict[str, Any]]) -> float | None:
    ok = [s["rate"] for s in steps if s.get("lost", 1) <= 0]
    return max(ok) if ok else None


def _summarise(res: dict[str, list[Any]], loop: str, tracepoint: str) -> dict[str, Any]:
    out: dict[str, Any] = {"loop": loop, "tracepoint": tracepoint, "raw": res}
    out["untraced_rate"] = common.spread([r[0]["rate"] for r in res["none"]])
    for agent in ("tetrapipe", "bpftrace"):
        rounds = res.get(agent, [])
        if not rounds:
            out[agent] = None
            continue
        full = [r["steps"][0] for r in rounds]
        out[agent] = {
            "full_speed_rate": common.spread([s["rate"] for s in full]),
            "full_speed_loss_pct": common.spread([100.0 * s["lost"] / s["ops"] if s["ops"] else 0.0
                                                  for s in full]),
            "zero_loss_rate": common.spread([_best_zero_loss(r["steps"]) or 0.0 for r in rounds]),
            "events_lost": sum(max(s["lost"], 0) for r in rounds for s in r["steps"]),
        }
        if agent == "tetrapipe":   # the collector's CPU per record drained (all steps of a round)
            out[agent]["collector_cpu_us_per_record"] = common.spread(
                [1e6 * r["collector_cpu_s"] / r["records"] for r in rounds if r.get("records")])
            out[agent]["kernel_lost"] = sum(r.get("kernel_lost") or 0 for r in rounds)
            out[agent]["queue_lost"] = sum(r.get("queue_lost") or 0 for r in rounds)
    return out


def run(ctx: Any) -> dict[str, Any]:
    return {"exec": _exec_section(ctx), "openat": _openat_section(ctx)}


__all__ = ["run", "Path"]
