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
                "export-fluentd": 4}
DEFAULT_METRICS_PORT = 2112
# the ports with the default --metrics-address (docker-compose.yml uses the same)
PORTS = {name: DEFAULT_METRICS_PORT + off for name, off in PORT_OFFSETS.items()}

# restart policy (docs/ARCHITECTURE.md "Supervision"): a child that dies is started again after
# a backoff doubling from BACKOFF_MIN_S to BACKOFF_MAX_S per failure in a row; a child that ran
# HEALTHY_S counts as healthy and its backoff starts over. One child failing never stops another.
# Exit status 78 (EX_CONFIG, sysexits.h): "fatal configuration or kernel error, do not retry":
# such a child is started again at most EX_CONFIG_RETRIES times, then left stopped, its reason
# (the last line of its log) shown; the other children keep running.
EX_CONFIG = 78
EX_CONFIG_RETRIES = 2
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
HEALTHY_S = 60.0


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
    failures: int = 0            # deaths in a row without a healthy run between them
    config_failures: int = 0     # exits with EX_CONFIG in a row
    next_start: float = 0.0      # when a dead child is started again (monotonic)
    given_up: str = ""           # the reason it is left stopped
    command: list[str] = field(default_factory=list)  # instead of python -m tetrapipe argv (tests)
    log_dir: str | None = None

    def start(self, log_dir: str | None) -> None:
        self.log_dir = log_dir
        out = open(os.path.join(log_dir, f"{self.name}.log"), "ab") if log_dir else None  # noqa: SIM115
        cmd = self.command or [sys.executable, "-m", "tetrapipe", *self.argv]
        self.proc = subprocess.Popen([*self.wrap, *cmd], env=self.env, stdout=out, stderr=out or None)
        self.started = time.monotonic()

    def last_line(self) -> str:
        """The last non-empty line of the child's log: its one-line reason."""
        if not self.log_dir:
            return "(its output is above)"
        try:
            with open(os.path.join(self.log_dir, f"{self.name}.log"), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 8192))
                lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return "(no log)"
        return lines[-1].strip()[:500] if lines else "(empty log)"

    def died(self, now: float) -> str:
        """Decide about a child found dead: schedule its restart or give up on it. Returns the
        log line to write."""
        assert self.proc is not None
        code = self.proc.returncode
        if now - self.started >= HEALTHY_S:
            self.failures = 0
            self.config_failures = 0
        self.failures += 1
        if code == EX_CONFIG:
            self.config_failures += 1
            if self.config_failures > EX_CONFIG_RETRIES:
                self.given_up = self.last_line()
                return (f"{self.name} exited with {EX_CONFIG} (fatal configuration or kernel error) "
                        f"{self.config_failures} times: left stopped: {self.given_up}")
        else:
            self.config_failures = 0
        delay = min(BACKOFF_MIN_S * 2 ** (self.failures - 1), BACKOFF_MAX_S)
        self.next_start = now + delay
        return f"{self.name} exited with {code}; restarting in {delay:.1f}s"

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

    async def watch(self, stop: asyncio.Event, interval: float = 0.25) -> None:
        """Restart children that die, with backoff, until stop (restart policy above)."""
        while not stop.is_set():
            self.check(time.monotonic())
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass

    def check(self, now: float) -> None:
        for c in self.children:
            if c.given_up or c.proc is None:
                continue
            if c.proc.poll() is None:
                continue
            if c.next_start <= c.started:  # just found dead
                msg = c.died(now)
                (log.error if c.given_up else log.warning)("%s", msg)
                if c.given_up:
                    continue
            if now >= c.next_start:
                c.restarts += 1
                c.start(self.log_dir)

    def status(self) -> dict[str, str]:
        """Per child: running, restarting, or stopped with its reason."""
        out = {}
        for c in self.children:
            if c.given_up:
                out[c.name] = f"stopped: {c.given_up}"
            elif c.proc is not None and c.proc.poll() is None:
                out[c.name] = "running"
            else:
                out[c.name] = "restarting"
        return out

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
