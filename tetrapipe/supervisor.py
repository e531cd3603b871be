"""``tetrapipe run``: everything on this host. Starts the embedded broker (unless --kafka), then the
collector, the enricher and the exporters as child processes (so one crashing or being killed does
not take the others down), restarts a child that dies, and shows live compact events."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from tetrapipe.broker import EmbeddedBroker
from tetrapipe.config import Config

log = logging.getLogger("tetrapipe.run")

# metrics ports of the children when run together: the configured metrics port (default 2112)
# plus this offset (each service alone uses --metrics-address as it is)
PORT_OFFSETS = {"collector": 0, "enricher": 1, "export-json": 2, "export-prometheus": 3,
                "export-fluentd": 4}
DEFAULT_METRICS_PORT = 2112
# the ports with the default --metrics-address (docker-compose.yml uses the same)
PORTS = {name: DEFAULT_METRICS_PORT + off for name, off in PORT_OFFSETS.items()}


def child_env(cfg: Config, metrics_port: int) -> dict[str, str]:
    env = dict(os.environ)
    for f in dataclasses.fields(Config):
        v = getattr(cfg, f.name)
        if isinstance(v, list):
            v = ",".join(v)
        elif isinstance(v, bool):
            v = "true" if v else "false"
        env["TETRAPIPE_" + f.name.upper()] = str(v)
    host = cfg.metrics_host_port[0] if cfg.metrics_host_port else "127.0.0.1"
    env["TETRAPIPE_METRICS_ADDRESS"] = f"{host}:{metrics_port}" if cfg.metrics_address else ""
    env.pop("TETRAPIPE_CONFIG", None)
    return env


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started: float = 0.0

    def start(self, log_dir: str | None) -> None:
        out = open(os.path.join(log_dir, f"{self.name}.log"), "ab") if log_dir else None  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "tetrapipe", *self.argv], env=self.env,
                                     stdout=out, stderr=out or None)
        self.started = time.monotonic()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Supervisor:
    cfg: Config
    exporters: list[str]
    log_dir: str | None = None
    children: list[Child] = field(default_factory=list)
    broker: EmbeddedBroker | None = None

    def start(self) -> None:
        if not self.cfg.kafka:
            self.broker = EmbeddedBroker(port=9092 if _free(9092) else 0,
                                         log_path=_log_path(self.log_dir, "broker")).start()
            self.cfg.kafka = self.broker.bootstrap
            log.info("embedded broker (memory only: stopping it loses its data) on %s", self.cfg.kafka)
        plan = [("collector", ["collector"]), ("enricher", ["enricher"])]
        plan += [(f"export-{e}", ["export", e]) for e in self.exporters]
        for name, argv in plan:
            base = self.cfg.metrics_host_port[1] if self.cfg.metrics_host_port else 0
            port = base + PORT_OFFSETS.get(name, 5) if base else 0
            c = Child(name, argv, child_env(self.cfg, port))
            c.start(self.log_dir)
            self.children.append(c)

    async def watch(self, stop: asyncio.Event) -> None:
        """Restart children that die (with a pause), until stop."""
        while not stop.is_set():
            for c in self.children:
                if c.proc and c.proc.poll() is not None:
                    code = c.proc.returncode
                    if time.monotonic() - c.started < 2 and c.restarts >= 3:
                        log.error("%s keeps failing (exit %s); see its log", c.name, code)
                        stop.set()
                        break
                    log.warning("%s exited with %s; restarting", c.name, code)
                    c.restarts += 1
                    c.start(self.log_dir)
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass

    def stop(self) -> None:
        for c in reversed(self.children):
            c.stop()
        if self.broker:
            self.broker.stop()


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _log_path(log_dir: str | None, name: str) -> os.PathLike[str] | None:
    from pathlib import Path

    return Path(log_dir) / f"{name}.log" if log_dir else None
