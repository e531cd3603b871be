"""The results table: every figure with its peer beside it and its noise (spread over rounds)."""

from __future__ import annotations

from typing import Any


def num(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    if abs(v) >= 10000:
        s = f"{v / 1000:.0f}k"
    elif abs(v) >= 1000:
        s = f"{v / 1000:.1f}k"
    elif abs(v) >= 10:
        s = f"{v:.0f}"
    else:
        s = f"{v:.2f}"
    return s + unit


def sp(d: dict[str, Any] | None, unit: str = "") -> str:
    """median (noise: (max-min)/median over n rounds)"""
    if not d or d.get("median") is None:
        return "-"
    s = num(d["median"], unit)
    if d.get("n", 0) > 1 and d.get("noise") is not None:
        s += f" ±{100 * d['noise'] / 2:.0f}%"
    return s


def _table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(line, rows)])


def _profiles(s: dict[str, Any], top: int = 6) -> list[str]:
    """Where the time goes: py-spy of the running services, cProfile of the Kafka-free loop."""
    out: list[str] = []
    e = s.get("e2e") or {}
    for r in (e.get("kafka_1_enricher") or [])[:1]:
        for name, prof in (r.get("py_spy") or {}).items():
            if prof and prof.get("own"):
                fns = ", ".join(f"{x['function']} {100 * x['share']:.0f}%" for x in prof["own"][:top])
                out.append(f"profile {name} (py-spy, 1-enricher run, own time of busy samples): {fns}")
    cpu = e.get("cpu") or {}
    for key in ("enricher_profile", "export_profile"):
        if cpu.get(key):
            fns = ", ".join(f"{x['function']} {100 * x['own_share']:.0f}%" for x in cpu[key][:top])
            out.append(f"profile {key.split('_')[0]} without Kafka (cProfile, own time): {fns}")
    return ["", *out] if out else []


def table(res: dict[str, Any]) -> str:
    m = res["machine"]
    out = [f"tetrapipe benchmarks — {res['date']} — {res['command']}",
           f"machine: Linux {m['kernel']}, {m['cpus']} CPUs ({m['cpu_model']}), load "
           f"{m['loadavg_at_start'][0]:.1f} at start; peer: {m['bpftrace']}; commit {m['git_commit']}",
           f"CPU yardstick (10^6 Python loop iterations, idle modern core ≈ 0.05 s): "
           f"{m.get('python_loop_1e6_s_at_start', 0):.3f} s at start, "
           f"{m.get('python_loop_1e6_s_at_end') or 0:.3f} s at end",
           "figures: median over rounds, ±half the (max-min)/median spread as noise", ""]
    s = res["sections"]
    rows: list[list[str]] = []
    if "drain" in s:
        for key in ("exec", "openat"):
            d = s["drain"][key]
            bt = d.get("bpftrace") or {}
            label = "collector + monitor-mode TracingPolicy" if key == "openat" else "collector"
            for tp in [d.get("tetrapipe") or {}]:
                what = f"drain {d['loop']} [{label}]"
                rows.append([f"{what}: loop rate at full speed (untraced {sp(d['untraced_rate'], '/s')})",
                             sp(tp.get("full_speed_rate"), "/s"), sp(bt.get("full_speed_rate"), "/s"),
                             "≥ bpftrace"])
                rows.append([f"{what}: % lost at full speed",
                             sp(tp.get("full_speed_loss_pct"), "%"), sp(bt.get("full_speed_loss_pct"), "%"), "0"])
                rows.append([f"{what}: highest rate with 0 lost",
                             sp(tp.get("zero_loss_rate"), "/s"), sp(bt.get("zero_loss_rate"), "/s"), "full speed"])
                rows.append([f"{what}: events lost, all steps (kernel ring buffer / drain queue)",
                             f"{num(tp.get('events_lost'))} ({num(tp.get('kernel_lost'))} / "
                             f"{num(tp.get('queue_lost'))})", num(bt.get("events_lost")), "0"])
                rows.append([f"{what}: collector CPU µs per record drained",
                             sp(tp.get("collector_cpu_us_per_record"), " µs"), "", ""])
    if "e2e" in s:
        e = s["e2e"]
        c = e["cpu"]
        rows.append(["enricher without Kafka (decode+build+Avro), events/s of CPU",
                     num(c["enricher_events_per_s_cpu"], "/s"), "", "≥ 30k"])
        rows.append(["JSON export without Kafka (Avro decode+protojson), events/s of CPU",
                     num(c["json_export_events_per_s_cpu"], "/s"), "", ""])
        rows.append(["through Kafka, 1 enricher process: events/s",
                     sp(e.get("enricher_rate_one"), "/s"), "", "≥ 30k"])
        rows.append(["through Kafka, 2 enricher processes (2 partitions): events/s",
                     sp(e.get("enricher_rate_two"), "/s"), "", ""])
        per = e.get("cpu_us_per_event_one") or {}
        if per:
            rows.append(["through Kafka, 1 enricher: CPU µs per event: "
                         + ", ".join(per), " / ".join(sp(v, "") for v in per.values()), "", ""])
        rows.append(["through Kafka, JSON sink (1 exporter) with 1 / 2 enrichers: events/s",
                     f"{sp(e.get('json_rate_one'), '/s')} / {sp(e.get('json_rate_two'), '/s')}", "", ""])
        for key in ("latency", "latency_low"):
            lat = e.get(key) or {}
            if not lat:
                continue
            rows.append([f"latency kernel→JSON line at {num(lat.get('target_events_per_s'))}/s asked "
                         f"({num(lat.get('exported_events_per_s'))}/s exported): p50 / p99",
                         f"{num(lat.get('kernel_p50_ms'), ' ms')} / {num(lat.get('kernel_p99_ms'), ' ms')}",
                         "", "p99 ≤ 500 ms" if key == "latency" else ""])
            rows.append(["  same run, injected raw batches (other nodes): p50 / p99",
                         f"{num(lat.get('injected_p50_ms'), ' ms')} / {num(lat.get('injected_p99_ms'), ' ms')}",
                         "", ""])
    if "overhead" in s:
        o = s["overhead"]["summary"]
        for agent, fig in o.items():
            if agent == "none":
                continue
            row = [f"overhead with {agent}: exec loop / write loop, wall-time ratio (CPU ratio)"]
            cells = []
            for mode in ("exec", "write"):
                cells.append(f"{sp(fig.get(f'{mode}_wall_ratio'), '×')} ({sp(fig.get(f'{mode}_cpu_ratio'), '×')})")
            val = " / ".join(cells)
            if agent == "bpftrace":
                rows.append([row[0], "", val, ""])
            else:
                rows.append([row[0], val, "", "≤ bpftrace"])
        for agent, fig in o.items():
            stages = {k.removeprefix("exec_cpu_us_per_event_"): v for k, v in fig.items()
                      if k.startswith("exec_cpu_us_per_event_")}
            if stages:
                rows.append([f"  {agent}, exec loop: CPU µs per event: " + ", ".join(stages)
                             + f" ({sp(fig.get('exec_events_per_op'))} events per exec)",
                             " / ".join(sp(v, "") for v in stages.values()), "", ""])
        none = o.get("none", {})
        rows.append(["  no-agent loop rates: exec / write",
                     f"{sp(none.get('exec_rate'), '/s')} / {sp(none.get('write_rate'), '/s')}", "", ""])
    if "footprint" in s:
        f = s["footprint"]
        bt = f.get("bpftrace") or {}
        for k in ("cold", "warm"):
            pr, sv = f[f"probe_{k}"], f[f"service_{k}"]
            rows.append([f"collector {k} start: headers / bcc compile+load / service ready",
                         f"{sp(pr['headers_s'], ' s')} / {sp(pr['compile_load_s'], ' s')} / {sp(sv['ready_s'], ' s')}",
                         sp(bt.get("ready_s"), " s") if k == "cold" else "", ""])
        rows.append(["collector RSS: service idle after start / bare loader peak while compiling",
                     f"{sp(f['service_warm']['idle_rss_mib'], ' MiB')} / {sp(f['probe_warm']['peak_rss_mib'], ' MiB')}",
                     sp(bt.get("rss_mib"), " MiB"), ""])
    if "e2e" in s and s["e2e"].get("latency"):
        lat = s["e2e"]["latency"]
        for name in lat.get("idle_rss_mib", {}):
            idle, busy = lat["idle_rss_mib"][name], lat["load_peak_rss_mib"].get(name)
            rows.append([f"RSS {name}: idle / under load ({num(lat.get('target_events_per_s'))} events/s)",
                         f"{num(idle, ' MiB')} / {num(busy, ' MiB')}", "", ""])
        for r in (s["e2e"].get("kafka_2_enrichers") or [])[:1]:
            for name, v in r.get("peak_rss_mib", {}).items():
                rows.append([f"RSS {name}: peak in the 2-enricher throughput run", num(v, " MiB"), "", ""])
    out.append(_table(["figure", "tetrapipe", "bpftrace (peer)", "goal"], rows))
    out.extend(_profiles(s))
    for n in res.get("notes", []):
        out.append(f"note: {n}")
    for k, v in res.get("errors", {}).items():
        out.append(f"ERROR in {k}: {v}")
    return "\n".join(out)
