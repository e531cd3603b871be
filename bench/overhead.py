"""Section 3: overhead on the workload. An exec loop and a write loop, each for a fixed time, with
no agent, with bpftrace counting on the same tracepoints, with tetrapipe doing process monitoring
(collector + enricher + JSON exporter), and with that plus a monitor-mode TracingPolicy on write
that matches nothing / every write. Reported as cost per operation
relative to the no-agent run of the same round (wall time and the loop's CPU time; perf cycles
are not countable on this VM)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from bench import common

BPFTRACE_COUNT = ("tracepoint:sched:sched_process_exec, tracepoint:sched:sched_process_exit, "
                  "tracepoint:sched:sched_process_fork, tracepoint:syscalls:sys_enter_write "
                  "{ @[probe] = count(); }")

_POLICY_HEAD = """apiVersion: cilium.io/v1alpha1
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
    - index: 2
      type: "size_t"
"""
# monitor mode (no action): the first never matches, the second emits an event for every write
POLICY_NOTHING = _POLICY_HEAD.format(name="bench-write-matches-nothing") + """    selectors:
    - matchArgs:
      - index: 0
        operator: "Prefix"
        values: ["/nonexistent/"]
"""
POLICY_EVERYTHING = _POLICY_HEAD.format(name="bench-write-matches-everything")


def policy_engine_present() -> bool:
    """True when this branch's collector loads TracingPolicies (the `policy` branch merged)."""
    col = common.REPO / "collector"
    return any(col.glob("polic*.py")) or (col / "policy").is_dir()


class Agent:
    def __init__(self, ctx: Any, name: str) -> None:
        self.ctx = ctx
        self.name = name
        self.stoppers: list[Any] = []
        self.pids: dict[str, int] = {}      # the pipeline's processes, for CPU per event
        self.enricher: Any = None

    def start(self, rnd: int) -> None:
        d = self.ctx.ws.sub(f"oh/{self.name}-{rnd}")
        if self.name == "bpftrace":
            bt = common.Bpftrace(BPFTRACE_COUNT, d / "bt.out").start()
            self.stoppers.append(bt.stop)
        elif self.name.startswith("tetrapipe"):
            extra: dict[str, str] = {}
            if self.name != "tetrapipe":
                pol = d / "policy.yaml"
                pol.write_text(POLICY_NOTHING if self.name.endswith("nothing") else POLICY_EVERYTHING)
                extra["tracing_policy"] = str(pol)
            pipe = self.ctx.new_pipeline(d, **extra)
            self.stoppers.append(pipe.stop)
            self.enricher = pipe.start("enricher", "enricher")
            exp = pipe.start("export-json", "export", "json")
            col = pipe.start("collector", "collector")
            self.pids = {"collector": col.proc.pid, "enricher": self.enricher.proc.pid,
                         "export-json": exp.proc.pid, "broker": pipe.broker_pid}

    def events(self) -> float:
        return self.enricher.metric("tetrapipe_enricher_events_total") if self.enricher else 0.0

    def settled_events(self, timeout: float = 2.0) -> float:
        """The enricher's event count once it stopped growing (the pipeline caught up), or after
        ``timeout`` (a policy matching every write on the machine never stops growing)."""
        last, t_end = -1.0, time.monotonic() + timeout
        while time.monotonic() < t_end:
            n = self.events()
            if n == last:
                return n
            last = n
            time.sleep(0.25)
        return last

    def stop(self) -> None:
        while self.stoppers:
            self.stoppers.pop()()


def run(ctx: Any) -> dict[str, Any]:
    d = ctx.ws.sub("oh")
    exe = d / "true-overhead"
    shutil.copy(shutil.which("true") or "/bin/true", exe)
    wfile = d / "write-target"
    agents = ["none", "tetrapipe"]
    if common.bpftrace_path():
        agents.insert(1, "bpftrace")
    if policy_engine_present():
        agents += ["tetrapipe+policy-nothing", "tetrapipe+policy-everything"]
    else:
        ctx.note("overhead: the policy engine (collector/policy) is not on this branch: the "
                 "'policy matches nothing/everything' rows are missing")
    rows: dict[str, dict[str, list[float]]] = {a: {} for a in agents}
    raw: list[dict[str, Any]] = []
    for rnd in range(ctx.size.rounds):
        base: dict[str, tuple[float, float]] = {}
        order = agents[rnd % len(agents):] + agents[:rnd % len(agents)]
        if order[0] != "none":  # the baseline goes first each round, the agents rotate
            order.remove("none")
            order.insert(0, "none")
        for name in order:
            agent = Agent(ctx, name)
            try:
                agent.start(rnd)
                for mode, target in (("exec", str(exe)), ("write", str(wfile))):
                    stage = mode == "exec" and bool(agent.pids)
                    if stage:
                        ev0 = agent.settled_events()
                        cpu0 = {n: common.cpu_seconds(p) for n, p in agent.pids.items()}
                    r = common.run_load(ctx.binary, mode, target, ctx.size.seconds)
                    if stage:   # CPU µs per event of each stage, the exec loop's events
                        ev = agent.settled_events() - ev0
                        for n, p in agent.pids.items():
                            if ev > 0:
                                rows[name].setdefault(f"exec_cpu_us_per_event_{n}", []).append(
                                    1e6 * (common.cpu_seconds(p) - cpu0[n]) / ev)
                        rows[name].setdefault("exec_events_per_op", []).append(ev / r.ops if r.ops else 0)
                    per_op = (r.seconds / r.ops, r.cpu_seconds / r.ops) if r.ops else (0.0, 0.0)
                    raw.append({"round": rnd, "agent": name, "mode": mode, "ops": r.ops,
                                "rate": r.rate, "cpu_s": r.cpu_seconds})
                    if name == "none":
                        base[mode] = per_op
                    elif mode in base and base[mode][0]:
                        rows[name].setdefault(f"{mode}_wall_ratio", []).append(per_op[0] / base[mode][0])
                        if base[mode][1]:
                            rows[name].setdefault(f"{mode}_cpu_ratio", []).append(per_op[1] / base[mode][1])
                    rows[name].setdefault(f"{mode}_rate", []).append(r.rate)
            except Exception as exc:  # an agent that cannot start is reported, the rest go on
                raw.append({"round": rnd, "agent": name, "error": f"{type(exc).__name__}: {exc}"})
            finally:
                agent.stop()
    return {"agents": agents, "raw": raw,
            "summary": {a: {k: common.spread(v) for k, v in m.items()} for a, m in rows.items()}}


__all__ = ["run", "Path"]
