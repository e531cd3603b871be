"""Roads around enforcement that no policy hook judges, counted (issue #12, README "Enforcement").

The loaded policies name protected objects: files (Equal/Postfix values of a resolved `fd`/`file`
argument), directories (Prefix values) and, for policies that judge connects, outbound
destinations. ``bpf/uncaught.c`` reports when one of them is reached by a road the policy does
not see: a protected file truncated by name or at the open (O_TRUNC, creat), renamed over, written
or opened through io_uring, opened under another mount (bind mount) or another name of its inode
(hard link); a connect made through io_uring or a 32-bit call. Each report is classified here
into (road, policy), counted in ``tetrapipe_enforcement_uncaught_total`` and logged as a WARNING
line naming the process and the file: an operator sees the road taken, though nothing stopped it.

Limits (README): a protected directory is found up to 16 ancestors up; names up to 31 bytes;
a hard link is found through the inode's other cached names (4 at most); rename is judged on the
new name as given (normalised, symlinks not followed) relative to its dirfd or the cwd; paths in a
file system other than the root's are compared by their tail.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import posixpath
import socket
import struct
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter

log = logging.getLogger("tetrapipe.policy")

UNCAUGHT = Counter("tetrapipe_enforcement_uncaught",
                   "A protected object reached by a road the policy does not judge (README Enforcement)",
                   ["road", "policy"])
REPORTS_LOST = Counter("tetrapipe_enforcement_uncaught_reports_lost",
                       "Reports of uncaught roads the kernel could not queue (ring buffer full)")

WRITE_CALLS = {"write", "pwrite64", "writev", "pwritev", "pwritev2", "ftruncate", "fallocate", "sendfile64",
               "sendfile", "splice", "copy_file_range", "mmap", "vfs_write", "security_file_permission",
               "security_path_truncate"}
RESOLVED_TYPES = {"fd", "file", "path", "dentry"}
CONNECT_CALLS = {"tcp_connect", "connect", "security_socket_connect"}

# syscall numbers whose effect on a protected file no write-type hook judges → road
ROADS64 = {76: "truncate(path)", 2: "O_TRUNC/creat at the open", 257: "O_TRUNC/creat at the open",
           85: "O_TRUNC/creat at the open", 437: "O_TRUNC/creat at the open", 86: "hard link",
           265: "hard link", 82: "rename over", 264: "rename over", 316: "rename over", 426: "io_uring fixed file"}
ROADS32 = {92: "truncate(path)", 193: "truncate(path)", 5: "O_TRUNC/creat at the open",
           8: "O_TRUNC/creat at the open", 295: "O_TRUNC/creat at the open", 437: "O_TRUNC/creat at the open",
           9: "hard link", 303: "hard link", 38: "rename over", 302: "rename over", 353: "rename over",
           426: "io_uring fixed file"}
UC_DIRTY, UC_OPEN, UC_RENAME, UC_CONNECT = 1, 2, 3, 4
# io_uring requests on fds are judged by the policies (collector/policy/uring.py); a protected inode
# dirtied by io_uring without such a request was written through a registered (fixed) file
URING_FIXED = "io_uring fixed file"
# an io-wq worker of a killed process ran a request queued before the kill (README: kernels without
# BPF LSM/fmod_ret cannot refuse it; collector/policy/doom.py does where they can)
URING_DYING = "io_uring in flight at the kill"
VIA_URING, VIA_ALIAS, VIA_COMPAT, VIA_DYING = 1, 2, 4, 8
PATH_MAX = 4096
HEAD = struct.Struct("<4Iq Q 4I 2I")


@dataclass
class Protected:
    policy: str
    write: bool                          # judges writes (else opens: reads)
    exact: set[str] = field(default_factory=set)
    prefixes: list[str] = field(default_factory=list)
    postfixes: list[str] = field(default_factory=list)
    connect: bool = False

    def matches(self, path: str, tail: bool = False) -> bool:
        """``tail``: ``path`` is a path inside some file system; compare it by its tail."""
        if not path:
            return False
        if any(path.endswith(p) for p in self.postfixes):
            return True
        if tail:
            return (any(path == e or path.endswith(e) for e in self.exact)
                    or any(p in path + "/" or path.startswith(p) for p in self.prefixes))
        return path in self.exact or any(path.startswith(p) for p in self.prefixes)


def protected_of(name: str, hooks: Iterable[Any]) -> Protected | None:
    """What a policy protects, from its hooks' resolved path filters and connect hooks."""
    hooks = list(hooks)
    calls = {h.call.removeprefix("sys_").removeprefix("__x64_sys_") for h in hooks}
    prot = Protected(name, write=bool(calls & WRITE_CALLS), connect=bool(calls & CONNECT_CALLS))
    for h in hooks:
        for s in h.selectors:
            for f in s.match_args:
                a = h.arg(f.index)
                if a is None or a.type not in RESOLVED_TYPES:
                    continue
                for v in f.values:
                    if f.operator == "Equal" and v.startswith("/"):
                        prot.exact.add(posixpath.normpath(v))
                    elif f.operator == "Prefix" and v.startswith("/"):
                        prot.prefixes.append(v if v.endswith("/") else v + "/")
                    elif f.operator == "Postfix" and v.startswith("/") and "/" not in v[1:]:
                        prot.postfixes.append(v)
    if not (prot.exact or prot.prefixes or prot.postfixes or prot.connect):
        return None
    return prot


def _kdev(st_dev: int) -> int:
    return (os.major(st_dev) << 20) | os.minor(st_dev)


@dataclass
class Report:
    pid: int
    policy: str
    road: str
    what: str                    # the file or destination


class Watcher:
    """The uncaught-road program, loaded while some policy protects something."""

    def __init__(self, load_program: Any) -> None:
        self._load_program = load_program
        self.bpf: Any = None
        self.prot: list[Protected] = []
        self.recent: deque[Report] = deque(maxlen=4096)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost_seen = 0
        self._connect = False
        # TETRAPIPE_COUNT_UNCAUGHT=0: never loaded (the test suite sets it: a compile per manager)
        self.enabled = os.environ.get("TETRAPIPE_COUNT_UNCAUGHT", "1") != "0"

    # ---- lifecycle ---------------------------------------------------------------------------
    def update(self, prot: list[Protected]) -> None:
        """The protected objects of the loaded policies: load, refill or unload the program."""
        self.prot = prot
        if not prot or not self.enabled:
            self.close()
            return
        connect = any(p.connect for p in prot)
        if self.bpf is not None and connect != self._connect:
            self.close()   # the 32-bit connect probe (raw_syscalls: every syscall) only when needed
        if self.bpf is None:
            self._connect = connect
            # 32-bit connects: the policies' tcp_connect serves them from raw_syscalls on x86-64
            compat = platform.machine() == "x86_64" and os.path.isdir("/sys/kernel/tracing/events/raw_syscalls")
            self.bpf = self._load_program("uncaught.c", {"UC_CONNECT_ROADS": int(connect and not compat)})
            self.bpf["uc_events"].open_ring_buffer(self._on_event)
            nrs = self.bpf["uc_nrs"]
            for nr in ROADS64:
                nrs[ctypes.c_int(nr)] = ctypes.c_uint8(1)
            for nr in ROADS32:
                nrs[ctypes.c_int(nr + 512)] = ctypes.c_uint8(1)
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="uncaught-drain", daemon=True)
            self._thread.start()
        self._fill()

    def _fill(self) -> None:
        names, dirs = self.bpf["uc_names"], self.bpf["uc_dirs"]
        names.clear()
        dirs.clear()
        for p in self.prot:
            bit = 1 if p.write else 2
            for path in [*p.exact, *p.postfixes]:
                base = posixpath.basename(path).encode()
                if not base or len(base) > 31:
                    continue
                k = names.Key()
                k.s = base
                old = names.get(k)
                names[k] = ctypes.c_uint32((old.value if old is not None else 0) | bit)
            for d in p.prefixes:
                try:
                    st = os.stat(d)
                except OSError:
                    continue
                k = dirs.Key()
                k.dev, k.ino = _kdev(st.st_dev), st.st_ino
                dirs[k] = ctypes.c_uint32(1)

    def close(self) -> None:
        if self.bpf is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.bpf.ring_buffer_consume()
        self.bpf.cleanup()
        self.bpf = None
        self._lost_seen = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.bpf.ring_buffer_poll(100)
                self._count_lost()
            except Exception:  # noqa: BLE001 - closing under the poll
                if self._stop.is_set():
                    return
                log.exception("uncaught-road drain")

    def _count_lost(self) -> None:
        total = int(sum(self.bpf["uc_drops"][ctypes.c_int(0)]))
        if total > self._lost_seen:
            REPORTS_LOST.inc(total - self._lost_seen)
            self._lost_seen = total

    # ---- reports -------------------------------------------------------------------------------
    def _on_event(self, _ctx: Any, data: Any, size: int) -> None:
        raw = ctypes.string_at(data, size)
        try:
            for rep in self.classify(raw):
                self.recent.append(rep)
                UNCAUGHT.labels(road=rep.road, policy=rep.policy).inc()
                log.warning("enforcement: %s reached by a road it does not judge: %s (pid %d, %s); counted in "
                            "tetrapipe_enforcement_uncaught_total", rep.policy, rep.road, rep.pid, rep.what)
        except Exception:  # noqa: BLE001 - a report must never stop the drain
            log.exception("uncaught-road report")

    def classify(self, raw: bytes) -> list[Report]:
        kind, pid, _tid, via, nr, _kt, fflags, _nlink, addr, port, inlen, fulllen = HEAD.unpack_from(raw)
        infs = raw[HEAD.size:HEAD.size + min(inlen, PATH_MAX)].decode(errors="replace")
        full = raw[HEAD.size + PATH_MAX:HEAD.size + PATH_MAX + min(fulllen, PATH_MAX)].decode(errors="replace")
        out: list[Report] = []
        if kind == UC_CONNECT:
            dest = f"{socket.inet_ntoa(struct.pack('<I', addr))}:{socket.ntohs(port)}"
            road = "32-bit connect/socketcall"   # io_uring CONNECT: served by the policies
            return [Report(pid, p.policy, road, dest) for p in self.prot if p.connect]
        for p in self.prot:
            if kind == UC_DIRTY and p.write and p.matches(infs, tail=True):
                road = URING_DYING if via & VIA_DYING else URING_FIXED if via & VIA_URING else \
                    (ROADS32 if via & VIA_COMPAT else ROADS64).get(nr)
                if road:
                    out.append(Report(pid, p.policy, road, infs))
            elif kind == UC_OPEN and p.matches(infs, tail=True) and (not p.write or fflags & 3):
                if via & VIA_ALIAS:
                    out.append(Report(pid, p.policy, "hard link", f"{full} (another name of {infs})"))
                elif not p.matches(full) and full != infs:   # the same name elsewhere is another file
                    out.append(Report(pid, p.policy, "bind mount", f"{full} (the file {infs})"))
            elif kind == UC_RENAME and p.write:
                path = posixpath.normpath(infs if infs.startswith("/") else posixpath.join(full or "/", infs))
                if p.matches(path):
                    out.append(Report(pid, p.policy, "rename over", path))
        return out
