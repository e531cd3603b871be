"""The first lines ``tetrapipe run`` prints: where everything is (each service's metrics and
health URLs and log, the export file, the control socket, the broker, the state and cache
directories) and which kernel hook mechanisms this kernel offers; then when every service is
ready (each /healthz answers 200)."""

from __future__ import annotations

import asyncio
import os
import urllib.request
from typing import Any

from tetrapipe.supervisor import Supervisor

WHAT = {"export-prometheus": "event metrics", "export-fluentd": "fluentd forward"}


def kernel_features() -> Any:
    """collector.kernel_features.probe(), or None where it cannot run."""
    try:
        from collector import kernel_features

        return kernel_features.probe()
    except Exception:  # noqa: BLE001 - the report says "not probed" rather than stop the run
        return None


def _url(host: str, port: int, path: str) -> str:
    shown = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    return f"http://{shown}:{port}{path}"


def lines(sup: Supervisor, features: Any) -> list[str]:
    cfg = sup.cfg
    host = cfg.metrics_host_port[0] if cfg.metrics_host_port else ""
    out = ["tetrapipe run: every service on this host; Ctrl-C stops them all"]
    if sup.broker is not None:
        out.append(f"  broker             {cfg.kafka}  (embedded Tansu, memory only: stopping it loses its data)")
    else:
        out.append(f"  broker             {cfg.kafka}")
    for c in sup.children:
        where = f"{_url(host, c.port, '/metrics')}  {_url(host, c.port, '/healthz')}" if c.port else "metrics off"
        what = f"  ({WHAT[c.name]})" if c.name in WHAT else ""
        out.append(f"  {c.name:<18} {where}{what}")
    if "json" in sup.exporters:
        out.append(f"  export file        {cfg.export_filename}")
    if sup.log_dir:
        names = ",".join(["broker"] * (sup.broker is not None) + [c.name for c in sup.children])
        out.append(f"  logs               {os.path.join(sup.log_dir, '{' + names + '}.log')}")
    if "grpc" in sup.exporters:
        out.append(f"  gRPC API           {cfg.server_address}  (Tetragon's API: tetrapipe getevents "
                   f"--server-address, tetra clients)")
    out.append(f"  control socket     {cfg.control_socket}  (tetrapipe tracingpolicy ...)")
    out.append(f"  state, cache       {cfg.state_dir}, {cfg.cache_dir}")
    if features is None:
        out.append("  kernel             hook mechanisms not probed")
    else:
        lack = ", ".join(features.missing()) or "none"
        out.append(f"  kernel             {features.release}; hooks: {', '.join(features.available()) or 'none'}; "
                   f"missing: {lack}")
    return out


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 - our own loopback URL
            return r.status == 200
    except OSError:
        return False


async def wait_healthy(sup: Supervisor, stop: asyncio.Event, timeout: float) -> bool:
    """True once every child's /healthz answers 200 (children without metrics count as ready)."""
    host = sup.cfg.metrics_host_port[0] if sup.cfg.metrics_host_port else ""
    urls = [_url(host, c.port, "/healthz") for c in sup.children if c.port]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while urls and not stop.is_set() and loop.time() < deadline:
        checks = await asyncio.gather(*(asyncio.to_thread(_healthy, u) for u in urls))
        urls = [u for u, ok in zip(urls, checks, strict=True) if not ok]
        if urls:
            await asyncio.sleep(0.3)
    return not urls
