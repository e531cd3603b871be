"""What every benchmark section shares: the load generator, the bpftrace peer, services of the
real pipeline (tests/harness.py), RSS sampling and small statistics."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from fluent_receiver import FluentReceiver  # noqa: E402
from harness import Pipeline, Service, wait_until  # noqa: E402

__all__ = ["FluentReceiver", "Pipeline", "Service", "wait_until"]


@dataclass
class BenchPipeline(Pipeline):
    """A harness pipeline that owns its broker: ``stop_services()`` stops the services (their
    topics stay readable), ``stop()`` stops the services and then the broker."""

    broker: Any = None

    @property
    def broker_pid(self) -> int:
        return self.broker.proc.pid if self.broker and self.broker.proc else 0

    def stop_services(self) -> None:
        super().stop()

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            if self.broker is not None:
                self.broker.stop()

WORKLOAD_C = Path(__file__).with_name("workload.c")


@dataclass(frozen=True)
class Size:
    """How big a run is: ``tiny`` for the smoke test, ``full`` for figures."""

    name: str
    seconds: float          # one workload run
    rounds: int             # interleaved repetitions of each comparison
    rate_steps: tuple[float, ...]  # fractions of full speed run after the full-speed step
    e2e_events: int         # events pushed through the pipeline for the throughput figure
    cpu_events: int         # events for the Kafka-free enricher figure
    latency_rate: int       # events/s for the latency figure
    latency_seconds: float
    latency_low_rate: int   # events/s for a second latency figure, below the pipeline's capacity


SIZES = {
    "tiny": Size("tiny", 0.3, 1, (0.5,), 400, 400, 500, 1.0, 100),
    "small": Size("small", 1.0, 2, (0.5, 0.25), 3000, 3000, 5000, 5.0, 50),
    "full": Size("full", 2.0, 3, (0.5, 0.25, 0.1), 10000, 10000, 5000, 10.0, 50),
}


# ---- load generator -------------------------------------------------------------------------

def workload_binary(build_dir: Path) -> Path:
    """bench/workload.c compiled with the system C compiler (cached by source hash)."""
    src = WORKLOAD_C.read_bytes()
    out = build_dir / f"workload-{hashlib.sha256(src).hexdigest()[:12]}"
    if not out.exists():
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise RuntimeError("the load generator needs a C compiler (apt-get install gcc)")
        tmp = out.with_suffix(".tmp")
        subprocess.run([cc, "-O2", "-o", str(tmp), str(WORKLOAD_C)], check=True)
        tmp.rename(out)
    return out


@dataclass
class LoadRun:
    mode: str
    ops: int
    seconds: float
    pid: int
    cpu_seconds: float   # user + sys of the generator (and its children, for exec)

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0


def run_load(binary: Path, mode: str, path: str, seconds: float, rate: float = 0,
             max_ops: int = 10**12) -> LoadRun:
    proc = subprocess.Popen([str(binary), mode, path, str(max_ops), str(seconds), str(rate)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(proc.pid, 0)
    out = proc.stdout.read().decode() if proc.stdout else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise RuntimeError(f"workload {mode} failed ({proc.returncode}): {err}")
    ops, ns, pid = out.split()
    return LoadRun(mode, int(ops), int(ns) / 1e9, int(pid), ru.ru_utime + ru.ru_stime)


# ---- the peer: bpftrace -----------------------------------------------------------------------

def bpftrace_path() -> str | None:
    return shutil.which("bpftrace")


def bpftrace_version() -> str:
    path = bpftrace_path()
    if not path:
        return ""
    r = subprocess.run([path, "--version"], capture_output=True, text=True)
    return r.stdout.strip()


@dataclass
class Bpftrace:
    """``bpftrace -e SCRIPT`` writing its output to a file; stop() with SIGINT."""

    script: str
    out_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Bpftrace:
        path = bpftrace_path()
        if not path:
            raise RuntimeError("bpftrace is not installed (apt-get install bpftrace)")
        self._out = open(self.out_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([path, "-e", self.script], stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True)

        def attached() -> bool:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"bpftrace exited: {self.out_path.read_text()[-2000:]}")
            return "Attaching" in self.out_path.read_text(errors="replace")
        wait_until(attached, timeout, 0.05, "bpftrace attached")
        time.sleep(0.3)  # "Attaching" is printed just before the probes are attached
        return self

    def stop(self) -> str:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.out_path.read_text(errors="replace")

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0


LOST_RE = re.compile(r"Lost (\d+) events")


def bpftrace_lost(output: str) -> int:
    return sum(int(m) for m in LOST_RE.findall(output))


# ---- processes --------------------------------------------------------------------------------

def stop_processes(procs: list[subprocess.Popen[Any]], logs: list[Any] | tuple[()] = (), timeout: float = 20) -> None:
    """Ask every process to stop (SIGTERM), then wait for each up to ``timeout`` s and kill what
    is still running; close their log files."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    for log in logs:
        log.close()


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a running process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class RssSampler:
    """Peak RSS of some processes, sampled in a thread while a load runs."""

    def __init__(self, pids: dict[str, int], interval: float = 0.2) -> None:
        self.pids = pids
        self.peak: dict[str, float] = dict.fromkeys(pids, 0.0)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], rss_mib(pid))
            self._stop.wait(0.2)

    def __enter__(self) -> RssSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


# ---- profiling a running service ----------------------------------------------------------------

def py_spy_path() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


class PySpy:
    """``py-spy record`` of a running process (sampling, from outside): where its time goes."""

    def __init__(self, pid: int, out: Path, rate: int = 100) -> None:
        self.pid = pid
        self.out = out
        self.rate = rate
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PySpy:
        path = py_spy_path()
        if path:
            self.proc = subprocess.Popen([path, "record", "--pid", str(self.pid), "--rate", str(self.rate),
                                          "--format", "raw", "--output", str(self.out), "--nonblocking"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def stop(self, top: int = 12) -> dict[str, Any] | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return summarise_stacks(self.out, top)


def summarise_stacks(path: Path, top: int = 12) -> dict[str, Any] | None:
    """Own and inclusive sample shares of functions in py-spy's raw (collapsed) output; idle
    samples (the event loop waiting) are counted apart."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = idle = 0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        stack, _, n_s = line.rpartition(" ")
        if not stack or not n_s.isdigit():
            continue
        n = int(n_s)
        frames = [f.split(" (")[0] + _where(f) for f in stack.split(";")]
        if frames and any(w in frames[-1] for w in ("select", "poll", "epoll_wait", "_run_once")):
            idle += n
            continue
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
    if not total:
        return {"busy_samples": 0, "idle_samples": idle}

    def rows(d: dict[str, int]) -> list[dict[str, Any]]:
        return [{"function": k, "share": round(v / total, 3)}
                for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]
    return {"busy_samples": total, "idle_samples": idle, "own": rows(own),
            "inclusive": rows({k: v for k, v in incl.items() if v < total})}


def _where(frame: str) -> str:
    """`` (file.py)`` of a py-spy frame ``func (path/file.py:line)``."""
    if " (" not in frame:
        return ""
    loc = frame.rsplit(" (", 1)[1].rstrip(")")
    return f" ({Path(loc.rsplit(':', 1)[0]).name})"


# ---- statistics -------------------------------------------------------------------------------

def spread(values: list[float]) -> dict[str, Any]:
    """Median with min/max and relative spread ((max-min)/median): the noise of one figure."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0, "noise": None}
    med = statistics.median(vals)
    return {"median": med, "min": min(vals), "max": max(vals), "n": len(vals),
            "noise": (max(vals) - min(vals)) / med if med else None}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


@dataclass
class Workspace:
    """Temporary files of one bench run, and a reused build directory."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tetrapipe-bench-")))

    def sub(self, name: str) -> Path:
        p = self.root / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def build(self) -> Path:
        p = Path(tempfile.gettempdir()) / "tetrapipe-bench-build"
        p.mkdir(exist_ok=True)
        return p

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
