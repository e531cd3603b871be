"""A fixed CPU budget for one benchmarked process: its own cgroup with a CFS quota
(``--cpu-quota 0.4`` = 0.4 of one core per process), so N processes get N times the budget of one
and a 2-core machine can show whether they scale without being bounded by the machine.

cgroup v2 where its ``cpu`` controller is available (``cpu.max``; ``+cpu`` is written to the
parent's ``cgroup.subtree_control``), else the cgroup v1 ``cpu`` hierarchy
(``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``): this machine's kernel has ``cpu`` bound to v1
(cgroup v2 only at /sys/fs/cgroup/unified, with hugetlb alone). Each cgroup has a unique name,
is made by the bench before its process starts, the process is put in it before it execs (so
its imports run under the quota too), and it is removed when the process is gone.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

PERIOD_US = 100_000  # the kernel's default CFS period
CGROUP_ROOT = Path("/sys/fs/cgroup")


def parse_quota(text: str, cores: int | None = None) -> float:
    """A per-process budget in cores, 0 < q <= the machine's cores; a clear error otherwise."""
    cores = cores or os.cpu_count() or 1
    try:
        q = float(text)
    except ValueError:
        raise ValueError(f"--cpu-quota {text!r}: not a number of cores (e.g. 0.4)") from None
    if not 0.01 <= q <= cores:  # the kernel's smallest quota is 1 ms per 100 ms period
        raise ValueError(f"--cpu-quota {text!r}: must be between 0.01 and {cores} (this machine's cores)")
    return q


def _v2_root(root: Path) -> Path | None:
    for d in (root, root / "unified"):
        ctl = d / "cgroup.controllers"
        if ctl.exists() and "cpu" in ctl.read_text().split():
            return d
    return None


def backend(root: Path = CGROUP_ROOT) -> tuple[str, Path]:
    """("v2", the v2 root) or ("v1", the v1 cpu hierarchy); SystemExit when neither is there."""
    v2 = _v2_root(root)
    if v2 is not None:
        return "v2", v2
    for name in ("cpu", "cpu,cpuacct"):
        if (root / name / "cpu.cfs_quota_us").exists():
            return "v1", root / name
    raise SystemExit(f"--cpu-quota: no cgroup cpu controller under {root} (neither v2 cpu.max nor v1 cpu)")


class CpuCgroup:
    """One cgroup limited to ``cores`` of CPU; ``wrap(cmd)`` runs a command inside it."""

    def __init__(self, cores: float, label: str, root: Path = CGROUP_ROOT) -> None:
        self.cores = cores
        self.kind, parent = backend(root)
        self.path = parent / f"tetrapipe-bench-{label}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        quota_us = max(int(round(cores * PERIOD_US)), 1000)
        if self.kind == "v2":
            self._enable_cpu(parent)
            self.path.mkdir()
            (self.path / "cpu.max").write_text(f"{quota_us} {PERIOD_US}\n")
        else:
            self.path.mkdir()
            (self.path / "cpu.cfs_period_us").write_text(f"{PERIOD_US}\n")
            (self.path / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
        self.setting = self._read_setting()

    @staticmethod
    def _enable_cpu(parent: Path) -> None:
        ctl = parent / "cgroup.subtree_control"
        if "cpu" not in ctl.read_text().split():
            ctl.write_text("+cpu\n")

    def _read_setting(self) -> str:
        if self.kind == "v2":
            return "cpu.max " + (self.path / "cpu.max").read_text().strip()
        q = (self.path / "cpu.cfs_quota_us").read_text().strip()
        p = (self.path / "cpu.cfs_period_us").read_text().strip()
        return f"cpu.cfs_quota_us {q} / cpu.cfs_period_us {p}"

    def wrap(self, cmd: list[str]) -> list[str]:
        """The command run by a shell that first moves itself into the cgroup, then execs it
        (same pid: the process measured is the one limited, from its first instruction)."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs"), *cmd]

    def throttled(self) -> dict[str, float]:
        """How often and how long the quota held the group back (cpu.stat)."""
        stat = dict(ln.split() for ln in (self.path / "cpu.stat").read_text().splitlines() if ln.strip())
        if self.kind == "v2":
            return {"periods": int(stat.get("nr_periods", 0)), "throttled": int(stat.get("nr_throttled", 0)),
                    "throttled_s": int(stat.get("throttled_usec", 0)) / 1e6}
        return {"periods": int(stat.get("nr_periods", 0)), "throttled": int(stat.get("nr_throttled", 0)),
                "throttled_s": int(stat.get("throttled_time", 0)) / 1e9}

    def remove(self, timeout: float = 10.0) -> None:
        """rmdir once its processes are gone (a process just reaped may linger a moment)."""
        until = time.monotonic() + timeout
        while True:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > until:
                    raise
                time.sleep(0.05)
