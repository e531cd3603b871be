"""Test harness: the real services as subprocesses (``python -m tetrapipe ...``) against a real
broker, each test with its own topics, node name, files and metrics ports."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tetrapipe.broker import free_port

REPO = Path(__file__).resolve().parent.parent


def wait_until(pred: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1,
               what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port_block(n: int) -> int:
    """The first of ``n`` consecutive free loopback ports (``tetrapipe run`` gives its children
    the metrics port + 0..5). Taken below the kernel's ephemeral range (32768-60999), where a
    client socket's local port could otherwise take one of them between the check and the bind."""
    import random
    import socket

    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - n)
        try:
            for port in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {n} consecutive free ports found")


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test runner dies, so a killed run leaves no collector
    behind (one with a Sigkill policy loaded would go on killing processes machine-wide)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    metrics_port: int
    proc: subprocess.Popen[bytes] | None = None
    wrap: list[str] = field(default_factory=list)  # e.g. setpriv ... : runs the service through it

    def start(self) -> Service:
        out = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([*self.wrap, sys.executable, "-m", "tetrapipe", *self.argv],
                                     env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                     preexec_fn=_die_with_parent)
        return self

    def wait_ready(self, timeout: float = 60.0) -> Service:
        def ready() -> bool:
            if self.proc and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            return http_get(f"http://127.0.0.1:{self.metrics_port}/healthz")[0] == 200
        wait_until(ready, timeout, what=f"{self.name} ready")
        return self

    def metrics(self) -> str:
        return http_get(f"http://127.0.0.1:{self.metrics_port}/metrics")[1]

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            mname, _, lab = head.partition("{")
            if mname != name:
                continue
            if all(f'{k}="{v}"' in lab for k, v in labels.items()):
                total += float(value)
        return total

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@dataclass
class Pipeline:
    """Services of one test. ``settings`` become TETRAPIPE_* variables of every service."""

    bootstrap: str
    tmp: Path
    settings: dict[str, str] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.node_name = f"node-{tag}"
        self.base = {
            "kafka": self.bootstrap,
            "node_name": self.node_name,
            "raw_topic": f"t{tag}.raw",
            "events_topic": f"t{tag}.events",
            "deadletter_topic": f"t{tag}.deadletter",
            "state_topic": f"t{tag}.state",
            "enricher_group": f"t{tag}-enricher",  # tests share one broker: no shared group
            "export_filename": str(self.tmp / "events.log"),
            "export_file_max_backups": "0",  # keep every rotated file: tests read them all
            "control_socket": str(self.tmp / "tetrapipe.sock"),
            "state_dir": str(self.tmp / "state"),
            "cache_dir": "/var/cache/tetrapipe",
            "log_level": "info",
        }

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TETRAPIPE_")}
        for k, v in {**self.base, **self.settings, **(extra or {})}.items():
            env["TETRAPIPE_" + k.upper()] = str(v)
        env["PYTHONPATH"] = str(REPO)
        return env

    def start(self, name: str, *argv: str, extra: dict[str, str] | None = None,
              wait: bool = True, wrap: list[str] | None = None) -> Service:
        port = free_port()
        env = self.env({**(extra or {}), "metrics_address": f"127.0.0.1:{port}"})
        svc = Service(name, list(argv), env, self.tmp / f"{name}.log", port, wrap=list(wrap or [])).start()
        self.services[name] = svc
        if wait:
            svc.wait_ready()
        return svc

    def start_all(self, exporters: tuple[str, ...] = ("json",)) -> None:
        self.start("enricher", "enricher")
        for e in exporters:
            self.start(f"export-{e}", "export", e)
        self.start("collector", "collector")

    @property
    def export_file(self) -> Path:
        return Path(self.base["export_filename"])

    def export_text(self) -> str:
        """The whole JSON export: rotated backups (oldest first, gzip or plain), then the live file."""
        return export_text(self.export_file)

    def exported(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.export_text().splitlines() if line.strip()]

    def stop(self) -> None:
        for svc in reversed(list(self.services.values())):
            svc.stop()


def export_text(path: Path) -> str:
    """An export file with its rotated backups (``events-<UTC time>.log[.gz]``), oldest first."""
    parts = []
    for backup in sorted(path.parent.glob(f"{path.stem}-*{path.suffix}*")):
        if backup.name.endswith(".tmp"):
            continue
        data = backup.read_bytes()
        parts.append((gzip.decompress(data) if backup.name.endswith(".gz") else data).decode(errors="replace"))
    try:
        live = path.read_text(errors="replace")
    except FileNotFoundError:
        live = ""
    if not live.endswith("\n"):  # the exporter is writing the last line right now
        live = live[: live.rfind("\n") + 1]
    parts.append(live)
    return "".join(parts)


def body(ev: dict[str, Any]) -> dict[str, Any]:
    return next(v for k, v in ev.items() if k.startswith(("process_", "rate_limit")))


class LoopThread:
    """Runs ``runner.run(stop_event)`` (a policy source, the pod watch: anything the collector runs
    on its loop) on its own event loop thread; ``.source`` is the runner."""

    def __init__(self, runner: Any) -> None:
        import asyncio
        import threading

        self.source = runner
        self.loop = asyncio.new_event_loop()
        self.stop_ev: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.ready = threading.Event()

    def _run(self) -> None:
        import asyncio

        async def main() -> None:
            self.stop_ev = asyncio.Event()
            self.ready.set()
            await self.source.run(self.stop_ev)
        self.loop.run_until_complete(main())

    def start(self) -> LoopThread:
        self.thread.start()
        self.ready.wait(10)
        return self

    def stop(self) -> None:
        if self.stop_ev is not None:
            self.loop.call_soon_threadsafe(self.stop_ev.set)
        self.thread.join(15)
