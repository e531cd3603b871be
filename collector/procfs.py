"""/proc bootstrap: one PROCFS record per process already running when the collector starts, so
that every later exec has a known parent. Records use the kernel's exec layout (bpf/records.h);
kernel threads get their ``[comm]`` as binary. Parents come before children."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from bpf import records as r

CLK_TCK = os.sysconf("SC_CLK_TCK")
NS_PER_TICK = 1_000_000_000 // CLK_TCK


def cgroup2_root() -> Path:
    """Mount point of the cgroup v2 hierarchy (``/sys/fs/cgroup/unified`` on hybrid hosts)."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return Path(left.split()[4])
    except OSError:
        pass
    return Path("/sys/fs/cgroup")


# inode numbers the kernel gives its initial namespaces (include/linux/proc_ns.h)
INIT_NS_INUMS = {"ipc": 0xEFFFFFFF, "uts": 0xEFFFFFFE, "user": 0xEFFFFFFD, "pid": 0xEFFFFFFC,
                 "pid_for_children": 0xEFFFFFFC, "cgroup": 0xEFFFFFFB, "time": 0xEFFFFFFA,
                 "time_for_children": 0xEFFFFFFA}


def host_namespaces() -> list[int]:
    """The host's namespace inums in TP_NS_* order: pid 1's where readable, else the fixed
    initial inums, and this process's own for net and mnt (the collector runs in them)."""
    out = []
    for name in r.NS_NAMES:
        inum = 0
        for who in ("1", "self"):
            try:
                inum = os.stat(f"/proc/{who}/ns/{name}").st_ino
                break
            except OSError:
                continue
        if name in INIT_NS_INUMS and not _readable_ns1():
            inum = INIT_NS_INUMS[name]
        out.append(inum)
    return out


def _readable_ns1() -> bool:
    try:
        os.stat("/proc/1/ns/net")
        return True
    except OSError:
        return False


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in _read(f"/proc/{pid}/status").decode(errors="replace").splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def start_time_ns(pid: int) -> int:
    """Process start, ns since boot, from /proc/<pid>/stat field 22."""
    stat = _read(f"/proc/{pid}/stat")
    rest = stat[stat.rfind(b")") + 2:].split()
    return int(rest[19]) * NS_PER_TICK if len(rest) > 19 else 0


def _ns_inums(pid: int) -> tuple[int, ...]:
    out = []
    for name in r.NS_NAMES:
        try:
            out.append(os.stat(f"/proc/{pid}/ns/{name}").st_ino)
        except OSError:
            out.append(0)
    return tuple(out)


def cgroup_ancestors(cg_path: str) -> bytes:
    """Names of the cgroup's parent, grandparent, ... (as the kernel program sends them)."""
    parts = [p for p in cg_path.split("/") if p][:-1]
    return b"\0".join(p.encode() for p in reversed(parts[-r.CG_ANCESTORS:]))


def record_for(pid: int, cg_root: Path, init_user_ns: int) -> bytes | None:
    st = _status(pid)
    if not st.get("Pid"):
        return None
    ppid = int(st.get("PPid", "0") or 0)
    uids = [int(x) for x in st.get("Uid", "0 0 0 0").split()] + [0] * 4
    gids = [int(x) for x in st.get("Gid", "0 0 0 0").split()] + [0] * 4
    nspid = int(st.get("NSpid", str(pid)).split()[-1])
    start = start_time_ns(pid)
    comm = st.get("Name", "").encode()[:15]
    exe = ""
    flags = 0
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        flags |= r.F_NO_MM
    args = _read(f"/proc/{pid}/cmdline").rstrip(b"\0")
    kernel_thread = not exe and not args
    if kernel_thread:
        exe = f"[{comm.decode(errors='replace')}]"
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        cwd = ""
        flags |= r.F_ERR_CWD
    if cwd == "/":
        flags |= r.F_ROOT_CWD
    exe_ino = exe_nlink = exe_mode = 0
    if not kernel_thread:
        try:
            s = os.stat(f"/proc/{pid}/exe")
            exe_ino, exe_nlink, exe_mode = s.st_ino, s.st_nlink, s.st_mode & 0xFFFF
        except OSError:
            pass
    cg_path = ""
    for line in _read(f"/proc/{pid}/cgroup").decode(errors="replace").splitlines():
        if line.startswith("0::"):
            cg_path = line[3:]
    cg_id = 0
    if cg_path:
        try:
            cg_id = os.stat(str(cg_root) + cg_path).st_ino
        except OSError:
            pass
    auid_raw = _read(f"/proc/{pid}/loginuid").strip()
    ns = _ns_inums(pid)
    rec = r.ExecRecord(
        header=r.Header(r.REC_PROCFS, 1, 0, pid, pid, start),
        ppid=ppid, flags=flags, start_time=start, parent_start_time=start_time_ns(ppid) if ppid else 0,
        cgroup_id=cg_id, uid=uids[0], gid=gids[0], euid=uids[1], egid=gids[1], suid=uids[2],
        sgid=gids[2], fsuid=uids[3], fsgid=gids[3],
        auid=int(auid_raw) if auid_raw.isdigit() else 0xFFFFFFFF,
        securebits=0,
        cap_permitted=int(st.get("CapPrm", "0"), 16), cap_effective=int(st.get("CapEff", "0"), 16),
        cap_inheritable=int(st.get("CapInh", "0"), 16),
        ns=ns, user_ns_level=0 if ns[9] == init_user_ns else 1, nspid=nspid,
        exe_ino=exe_ino, exe_nlink=exe_nlink, exe_mode=exe_mode, comm=comm,
        filename=exe.encode(errors="surrogateescape"), args=args, cwd=cwd.encode(errors="surrogateescape"),
        cgroup_name=os.path.basename(cg_path).encode(),
        cgroup_ancestors=cgroup_ancestors(cg_path),
    )
    return r.encode_exec(rec)


def walk() -> Iterator[bytes]:
    """PROCFS records for every process, ordered by start time (parents first)."""
    cg_root = cgroup2_root()
    try:
        init_user_ns = os.stat("/proc/1/ns/user").st_ino
    except OSError:
        init_user_ns = INIT_NS_INUMS["user"]
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            pid = int(name)
            try:
                pids.append((start_time_ns(pid), pid))
            except (ValueError, IndexError):
                continue
    for _, pid in sorted(pids):
        rec = record_for(pid, cg_root, init_user_ns)
        if rec is not None:
            yield rec
