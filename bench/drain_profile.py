"""Where the collector's time goes while an open() loop floods a monitor-mode policy: the real
collector with the drain section's openat TracingPolicy, the loop at full speed, py-spy
sampling the collector. Prints the loop rate, the kernel ring-buffer loss and the profile.

    sudo .venv/bin/python -m bench.drain_profile [--seconds 4]
"""

from __future__ import annotations

import argparse
import os
import time

from bench import common, drain
from bench.run import Context
from tetrapipe.broker import EmbeddedBroker


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.drain_profile")
    ap.add_argument("--seconds", type=float, default=4.0)
    a = ap.parse_args()
    ws = common.Workspace()
    broker = EmbeddedBroker(log_path=ws.root / "tansu.log").start()
    try:
        ctx = Context(common.SIZES["tiny"], ws, common.workload_binary(ws.build), broker.bootstrap,
                      broker.proc.pid if broker.proc else 0)
        d = ws.sub("o")
        pol = d / "policy.yaml"
        pol.write_text(drain.OPEN_POLICY.format(name="bench-drain-profile", prefix=str(d / "x-")))
        target = d / "x-1"
        os.mknod(target)
        pipe = ctx.new_pipeline(d / "c", tracing_policy=str(pol))
        try:
            svc = pipe.start("collector", "collector")
            spy = common.PySpy(svc.proc.pid if svc.proc else 0, d / "collector.pyspy", rate=200).start()
            time.sleep(1)
            run = common.run_load(ctx.binary, "open", str(target), a.seconds)
            prof = spy.stop(top=15)
            lost = svc.metric("tetrapipe_observer_ringbuf_events_lost_total")
            print(f"open() loop {run.rate:.0f}/s for {run.seconds:.1f} s ({run.ops} opens); "
                  f"kernel ring-buffer loss {lost:.0f}")
            if not prof or not prof.get("own"):
                print("no profile (py-spy missing?)")
                return 1
            print(f"collector, {prof['busy_samples']} busy samples; own time:")
            for x in prof["own"]:
                print(f"  {100 * x['share']:5.1f} %  {x['function']}")
        finally:
            pipe.stop()
    finally:
        broker.stop()
        ws.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
