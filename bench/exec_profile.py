"""Where each stage's time goes during bench/overhead.py's exec loop: the same pipeline
(collector, enricher, JSON exporter, embedded broker), the loop at full speed, py-spy sampling
every Python stage at once. Prints the loop rate, CPU µs per event of each stage (broker
included) and each Python stage's own-time profile.

    sudo .venv/bin/python -m bench.exec_profile [--seconds 8] [--no-spy]
"""

from __future__ import annotations

import argparse
import shutil
import time

from bench import common
from bench.overhead import Agent
from bench.run import Context


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.exec_profile")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--no-spy", action="store_true", help="CPU per event only (py-spy costs CPU)")
    ap.add_argument("--top", type=int, default=14)
    a = ap.parse_args()
    ws = common.Workspace()
    try:
        ctx = Context(common.SIZES["small"], ws, common.workload_binary(ws.build), "", 0)
        exe = ws.sub("x") / "true-profile"
        shutil.copy(shutil.which("true") or "/bin/true", exe)
        agent = Agent(ctx, "tetrapipe")
        try:
            agent.start(0)
            ev0 = agent.settled_events()
            cpu0 = {n: common.cpu_seconds(p) for n, p in agent.pids.items()}
            spies = {} if a.no_spy else {
                n: common.PySpy(p, ws.sub("spy") / f"{n}.raw", rate=200).start()
                for n, p in agent.pids.items() if n != "broker"}
            time.sleep(0.5)
            run = common.run_load(ctx.binary, "exec", str(exe), a.seconds)
            profs = {n: s.stop(top=a.top) for n, s in spies.items()}
            ev = agent.settled_events() - ev0
            print(f"exec loop {run.rate:.0f}/s for {run.seconds:.1f} s; {ev:.0f} events "
                  f"({ev / max(run.ops, 1):.2f} per exec)")
            for n, p in agent.pids.items():
                print(f"  {n:12s} {1e6 * (common.cpu_seconds(p) - cpu0[n]) / max(ev, 1):6.1f} µs CPU per event")
            for n, prof in profs.items():
                if not prof or not prof.get("own"):
                    print(f"{n}: no profile")
                    continue
                print(f"\n{n}: {prof['busy_samples']} busy, {prof['idle_samples']} idle samples; own:")
                for x in prof["own"]:
                    print(f"  {100 * x['share']:5.1f} %  {x['function']}")
                print("  inclusive:")
                for x in prof["inclusive"]:
                    print(f"  {100 * x['share']:5.1f} %  {x['function']}")
        finally:
            agent.stop()
    finally:
        ws.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
