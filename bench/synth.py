"""Synthetic raw records shaped like the kernel's (bpf/records.h), for driving the enricher and the
exporters at rates the kernel of a 2-core VM cannot produce with real execs: per process a fork,
an exec and an exit record, children of one parent reported as a /proc record first."""

from __future__ import annotations

import time
from collections.abc import Iterator

from bpf import records

NS = tuple(0xF0000000 + i for i in range(10))  # namespace inums


def exec_record(pid: int, ppid: int, ktime: int, start_time: int, filename: bytes, args: bytes,
                cwd: bytes, kind: int = records.REC_EXEC) -> bytes:
    rec = records.ExecRecord(
        records.Header(kind, 1, 0, pid, pid, ktime), ppid, 0, start_time, 0, 4242,
        0, 0, 0, 0, 0, 0, 0, 0, 0xFFFFFFFF, 0, 0x1FFFFFFFFFF, 0x1FFFFFFFFFF, 0, NS, 0, pid,
        131077, 1, 0o100755, filename.rsplit(b"/", 1)[-1][:15], filename, args, cwd,
        b"bench.scope")
    return records.encode_exec(rec)


class ProcessStream:
    """Records of short-lived processes: fork, exec, exit each; 2 events per process."""

    def __init__(self, parent_pid: int = 30000, first_pid: int = 100000,
                 binary: bytes = b"/usr/bin/true") -> None:
        self.parent = parent_pid
        self.next_pid = first_pid
        self.binary = binary
        self.started = False

    def parent_record(self) -> bytes:
        t = time.monotonic_ns()
        return exec_record(self.parent, 1, t, t - 10**9, b"/usr/bin/bash", b"bash\0-c\0loop\0",
                           b"/root", records.REC_PROCFS)

    def processes(self, n: int, ktime: int | None = None) -> Iterator[bytes]:
        if not self.started:
            self.started = True
            yield self.parent_record()
        for _ in range(n):
            pid = self.next_pid
            self.next_pid += 1
            t = time.monotonic_ns() if ktime is None else ktime
            yield records.encode_fork(pid, t, self.parent, t)
            yield exec_record(pid, self.parent, t, t, self.binary,
                              self.binary + b"\0--bench\0a b\0", b"/tmp")
            yield records.encode_exit(pid, pid, t + 1000, 0, self.parent, t)
