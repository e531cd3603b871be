"""Section 4: footprint. Collector cold start (empty header cache: the include tree is generated
from BTF) and warm start (cached tree), split into header generation and bcc compile/load, and the
time until the collector service answers /healthz; bpftrace's start beside it. RSS of every
service at idle and under load is measured in the e2e section (same pipeline) and shown here."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from bench import common


def _probe(ctx: Any, cache: str) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-m", "bench.startup_probe", cache], capture_output=True,
                       text=True, cwd=common.REPO, env=ctx.pipeline_env({}), timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"startup probe failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _service_start(ctx: Any, cache: str, name: str) -> dict[str, Any]:
    pipe = ctx.new_pipeline(ctx.ws.sub(name), cache_dir=cache)
    try:
        t0 = time.monotonic()
        svc = pipe.start("collector", "collector", wait=False)
        svc.wait_ready(600)
        ready = time.monotonic() - t0
        time.sleep(1.0)
        return {"ready_s": ready, "idle_rss_mib": common.rss_mib(svc.proc.pid if svc.proc else 0)}
    finally:
        pipe.stop()


def _bpftrace_start(ctx: Any) -> dict[str, Any] | None:
    if not common.bpftrace_path():
        return None
    t0 = time.monotonic()
    bt = common.Bpftrace('tracepoint:sched:sched_process_exec { printf("%d\\n", pid); } '
                         'tracepoint:sched:sched_process_exit { @[pid] = count(); }',
                         ctx.ws.sub("fp") / f"bt-{time.monotonic_ns()}.out").start()
    ready = time.monotonic() - t0 - 0.3  # start() waits 0.3 s after "Attaching"
    rss = common.rss_mib(bt.pid)
    bt.stop()
    return {"ready_s": ready, "rss_mib": rss}


def run(ctx: Any) -> dict[str, Any]:
    out: dict[str, list[Any]] = {"probe_cold": [], "probe_warm": [], "service_cold": [],
                                 "service_warm": [], "bpftrace": []}
    warm_cache = str(ctx.ws.sub("cache-warm"))
    _probe(ctx, warm_cache)  # fill the warm cache
    for rnd in range(max(1, ctx.size.rounds - 1)):
        out["probe_cold"].append(_probe(ctx, str(ctx.ws.sub(f"cache-cold-p{rnd}"))))
        out["probe_warm"].append(_probe(ctx, warm_cache))
        out["service_cold"].append(_service_start(ctx, str(ctx.ws.sub(f"cache-cold-s{rnd}")), f"sc{rnd}"))
        out["service_warm"].append(_service_start(ctx, warm_cache, f"sw{rnd}"))
        bt = _bpftrace_start(ctx)
        if bt:
            out["bpftrace"].append(bt)
    summary: dict[str, Any] = {"raw": out}
    for k in ("probe_cold", "probe_warm"):
        summary[k] = {f: common.spread([r[f] for r in out[k]])
                      for f in ("headers_s", "compile_load_s", "peak_rss_mib", "rss_mib")}
    for k in ("service_cold", "service_warm"):
        summary[k] = {f: common.spread([r[f] for r in out[k]]) for f in ("ready_s", "idle_rss_mib")}
    summary["bpftrace"] = ({f: common.spread([r[f] for r in out["bpftrace"]]) for f in ("ready_s", "rss_mib")}
                           if out["bpftrace"] else None)
    return summary
