"""``tetrapipe run``: everything on this host. Starts the embedded broker (unless --kafka), then the
collector, the enricher and the exporters as child processes (so one crashing or being killed does
not take the others down), restarts a child that dies, and shows live compact events.

Only the collector needs root. With ``--user NAME`` the enricher and the exporters run as NAME
(its uid and primary gid, no supplementary groups) with every capability dropped (inheritable,
bounding and ambient sets) and no_new_privs, via util-linux ``setpriv``; the directories they write
(the JSON export file's and the fluentd buffer) are created and given to NAME beforehand.

Before anything starts, ``prepare`` makes every directory the services use by default when it is
missing (tetrapipe/dirs.py: log, state, cache, control socket and export folders) and checks the
metrics ports are free, so that a problem is one line (ValueError) instead of children failing."""

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
from tetrapipe.dirs import DirError, ensure_dir
from tetrapipe.redaction import parse_redaction_filters

log = logging.getLogger("tetrapipe.run")

# metrics ports of the children when run together: the configured metrics port (default 2112)
# plus this offset (each service alone uses --metrics-address as it is)
PORT_OFFSETS = {"collector": 0, "enricher": 1, "export-json": 2, "export-prometheus": 3,
                "export-fluentd": 4, "export-grpc": 5}
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
    port: int = 0  # its /metrics and /healthz port (0 = off)
    failures: int = 0            # deaths in a row without a healthy run between them
    config_failures: int = 0     # exits with EX_CONFIG in a row
    next_start: float = 0.0      # when a dead child is started again (monotonic)
    given_up: str = ""           # the reason it is left stopped
    command: list[str] = field(default_factory=list)  # instead of python -m tetrapipe argv (tests)
    log_dir: str | None = None

    def start(self, log_dir: str | None) -> None:
        self.log_dir = log_dir
        if log_dir:
            ensure_dir(log_dir, 0o755, "service logs, --log-dir", check_writable=False)
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
        try:
            self._make_dirs()
        except DirError as exc:
            raise ValueError(str(exc)) from None
        if self.user:
            self.unprivileged = unprivileged_wrap(self.user, self.cfg, self.exporters)
        taken = [f"{port} ({name})" for name, port in self.metrics_ports().items() if port and not _bindable(
            self.cfg.metrics_host_port[0] if self.cfg.metrics_host_port else "", port)]
        if taken:
            raise ValueError(f"metrics port {', '.join(taken)} in use by another process: give another base "
                             f"port with --metrics-address HOST:PORT (the services use PORT+0..4), or "
                             f"--metrics-address '' for none")

    def _make_dirs(self) -> None:
        """The default directories (tetrapipe/dirs.py), made when missing; the children make their
        own too, this only makes the problem one line before anything starts."""
        cfg = self.cfg
        if self.log_dir:
            ensure_dir(self.log_dir, 0o755, "service logs, --log-dir")
        ensure_dir(cfg.state_dir, 0o755, "spool and state, --state-dir")
        ensure_dir(cfg.cache_dir, 0o755, "generated kernel headers, --cache-dir")
        if cfg.control_socket:
            ensure_dir(os.path.dirname(os.path.abspath(cfg.control_socket)), 0o700,
                       "the collector's control socket, --control-socket")
        if "json" in self.exporters and cfg.export_filename:
            ensure_dir(os.path.dirname(os.path.abspath(cfg.export_filename)), 0o755,
                       "the JSON export file, --export-filename")

    def metrics_ports(self) -> dict[str, int]:
        """Each child's metrics port: the configured one plus its offset (0 = metrics off)."""
        base = self.cfg.metrics_host_port[1] if self.cfg.metrics_host_port else 0
        names = ["collector", "enricher", *(f"export-{e}" for e in self.exporters)]
        return {n: base + PORT_OFFSETS.get(n, 5) if base else 0 for n in names}

    def start(self) -> None:
        if self.user and not self.unprivileged:
            self.prepare()
        if not self.cfg.kafka:
            self.broker = EmbeddedBroker(port=9092 if _free(9092) else 0,
                                         log_path=_log_path(self.log_dir, "broker")).start()
            self.cfg.kafka = self.broker.bootstrap
        plan = [("collector", ["collector"]), ("enricher", ["enricher"])]
        plan += [(f"export-{e}", ["export", e]) for e in self.exporters]
        ports = self.metrics_ports()
        for name, argv in plan:
            port = ports[name]
            wrap = self.unprivileged if name != "collector" else []
            c = Child(name, argv, child_env(self.cfg, port), wrap=wrap, port=port)
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
                if not c.given_up:  # why it died: its own one-line reason
                    msg += f" (its last words: {c.last_line()})"
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

    owner = (pw.pw_uid, pw.pw_gid)
    try:
        if "json" in exporters and cfg.export_filename:
            ensure_dir(Path(cfg.export_filename).parent, 0o755, f"the JSON export file, written by {user}",
                       owner=owner)
        if "fluentd" in exporters:
            ensure_dir(Path(cfg.fluentd_buffer_dir or Path(cfg.state_dir) / "fluentd-buffer"), 0o700,
                       f"the fluentd buffer, written by {user}", owner=owner)
    except DirError as exc:
        raise ValueError(str(exc)) from None
    if "json" in exporters and cfg.export_filename and os.path.exists(cfg.export_filename):
        os.chown(cfg.export_filename, pw.pw_uid, pw.pw_gid)  # written by root before
    return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups",
            "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--no-new-privs",
            "--"]


def _bindable(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host or "0.0.0.0", port))
        except OSError:
            return False
    return True


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _log_path(log_dir: str | None, name: str) -> os.PathLike[str] | None:
    from pathlib import Path

    return Path(log_dir) / f"{name}.log" if log_dir else None
