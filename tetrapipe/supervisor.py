"""``tetrapipe run``: everything on this host. Starts the embedded broker (unless --kafka), then the
collector, the enricher and the exporters as child processes (so one crashing or being killed does
not take the others down), restarts a child that dies, and shows live compact events.

Only the collector needs root. With ``--user NAME`` the enricher and the exporters run as NAME
(its uid and primary gid, no supplementary groups) with every capability dropped (inheritable,
bounding and ambient sets) and no_new_privs, via util-linux ``setpriv``; the directories they write
(the JSON export file's and the fluentd buffer) are created and given to NAME beforehand."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import pwd
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from tetrapipe.broker import EmbeddedBroker
from tetrapipe.config import Config
from tetrapipe.redaction import parse_redaction_filters

log = logging.getLogger("tetrapipe.run")

# metrics ports of the children when run together: the configured metrics port (default 2112)
# plus this offset (each service alone uses --metrics-address as it is)
PORT_OFFSETS = {"collector": 0, "enricher": 1, "export-json": 2, "export-prometheus": 3,
                "export-fluentd": 4, "export-grpc": 5}
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
    wrap: list[str] = field(default_factory=list)  # e.g. setpriv ...: runs the child through it
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started: float = 0.0

    def start(self, log_dir: str | None) -> None:
        out = open(os.path.join(log_dir, f"{self.name}.log"), "ab") if log_dir else None  # noqa: SIM115
        self.proc = subprocess.Popen([*self.wrap, sys.executable, "-m", "tetrapipe", *self.argv],
                                     env=self.env, stdout=out, stderr=out or None)
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
    user: str | None = None  # run everything but the collector as this user, without capabilities
    children: list[Child] = field(default_factory=list)
    broker: EmbeddedBroker | None = None
    unprivileged: list[str] = field(default_factory=list)

    def prepare(self) -> None:
        """Checks what can be wrong before anything starts (raises ValueError with the reason)."""
        parse_redaction_filters(self.cfg.redaction_filters)  # the enricher would refuse them
        if self.user:
            self.unprivileged = unprivileged_wrap(self.user, self.cfg, self.exporters)

    def start(self) -> None:
        if self.user and not self.unprivileged:
            self.prepare()
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
            wrap = self.unprivileged if name != "collector" else []
            c = Child(name, argv, child_env(self.cfg, port), wrap=wrap)
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


def unprivileged_wrap(user: str, cfg: Config, exporters: list[str]) -> list[str]:
    """The setpriv prefix that runs a child as ``user`` with no capabilities, after giving that
    user the directories the enricher and exporters write. Raises ValueError for an unknown user
    or root."""
    try:
        pw = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
    except KeyError:
        raise ValueError(f"--user {user}: no such user") from None
    if pw.pw_uid == 0:
        raise ValueError(f"--user {user}: is root; name an unprivileged user")
    from pathlib import Path

    dirs = []
    if "json" in exporters and cfg.export_filename:
        dirs.append(Path(cfg.export_filename).parent)
    if "fluentd" in exporters:
        dirs.append(Path(cfg.fluentd_buffer_dir or Path(cfg.state_dir) / "fluentd-buffer"))
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, pw.pw_uid, pw.pw_gid)
    if "json" in exporters and cfg.export_filename and os.path.exists(cfg.export_filename):
        os.chown(cfg.export_filename, pw.pw_uid, pw.pw_gid)  # written by root before
    return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups",
            "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--no-new-privs",
            "--"]


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _log_path(log_dir: str | None, name: str) -> os.PathLike[str] | None:
    from pathlib import Path

    return Path(log_dir) / f"{name}.log" if log_dir else None
