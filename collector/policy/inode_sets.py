"""Inode identity of file arguments (#12): Equal/Prefix on a `file`/`fd`/`path` argument (and the
files FollowFD follows) also match the file by (device, inode), so another name of the same inode
(a hard link, a bind mount of the file or its directory) does not walk around the name.

At load, each inode set of a policy (``Compiled.inode_sets``: set id, equal|prefix, paths) is
resolved under ``root`` (the collector's ``/``, or a process's ``/proc/<pid>/root``) into keys of
the program's ``inoset`` map (bpf/policy.h ``tp_inokey``; the device is the kernel's
``MKDEV(major, minor)`` = ``s_dev`` of the file system):
- Equal ``/etc/passwd``: the file's inode, flag SELF, with its generation where the file system
  reports one (ext4: a freed inode number reused by another file does not match);
- Prefix ``/tmp/forbidden/`` (a directory): the directory, flag UNDER (the kernel walks a file's
  d_parent chain at most TP_INO_DEPTH levels: any file below it, created before or after the
  load, under any mount of it), and the files below it, flag SELF (a hard link of one of them
  elsewhere), at most ``WALK_MAX`` files (a notice names what is left out);
- Prefix ``/etc/pass`` (not ending in ``/``): the entries of ``/etc`` whose names start ``pass``,
  SELF and UNDER, and the files below those that are directories.

The sets follow the names: the directories they come from are watched with inotify (at most
``WATCH_MAX`` per set); a create, rename or delete in one re-resolves the set in the watcher's
thread (a rename of a new file over ``/etc/passwd``, as useradd/vipw do, puts the new inode in
and the old one out). Until then (the race window: ``tests/test_bypass.py`` measures it, a few
ms) the new inode is matched by its name only. Not caught: a file system whose files do not
show the kernel's (s_dev, i_ino) to stat (btrfs subvolumes, overlayfs without xino: the
container files of a node); files in other mount namespaces unless ``root`` is theirs; a file
more than TP_INO_DEPTH levels below a Prefix directory and beyond ``WALK_MAX``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import logging
import os
import select
import stat
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("tetrapipe.collector.policy")

SELF, UNDER, GEN = 1, 2, 4  # TP_INO_SELF, TP_INO_UNDER, TP_INO_GEN in bpf/policy.h
_FS_IOC_GETVERSION = 0x80087601
WALK_MAX = 4096             # files below one Prefix directory put in by their own inode
WATCH_MAX = 256             # directories watched per set
_IN_MASK = 0x100 | 0x80 | 0x200 | 0x40 | 0x400 | 0x800   # CREATE MOVED_TO DELETE MOVED_FROM DELETE_SELF MOVE_SELF
_IN_NONBLOCK, _IN_CLOEXEC, _IN_IGNORED = 0o4000, 0o2000000, 0x8000
_EVENT = struct.Struct("iIII")


def kernel_dev(st_dev: int) -> int:
    """The kernel's dev_t (``s_dev``: major << 20 | minor) of a stat's st_dev."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


@dataclass
class Resolved:
    keys: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)   # (dev, ino) → (flags, gen)
    dirs: set[str] = field(default_factory=set)                       # directories to watch
    notices: list[str] = field(default_factory=list)


def _under(root: str, value: str) -> str:
    return os.path.join(root, value.lstrip("/")) if root not in ("", "/") else value


def generation(path: str, st: os.stat_result) -> int | None:
    """The inode's i_generation (FS_IOC_GETVERSION), or None where the file system has none to
    report (then a reused inode number matches until the set is refreshed: the race window)."""
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return struct.unpack_from("I", fcntl.ioctl(fd, _FS_IOC_GETVERSION, bytes(8)))[0]
    except OSError:
        return None
    finally:
        os.close(fd)


def _put(r: Resolved, path: str, flags: int) -> os.stat_result | None:
    try:
        st = os.stat(path)   # the kernel follows links (and /proc/<pid>/root): not os.path.realpath
    except (OSError, ValueError):   # ValueError: a NUL in the name, which names no file
        return None
    key = (kernel_dev(st.st_dev), st.st_ino)
    old_flags, gen = r.keys.get(key, (0, 0))
    if not old_flags:
        g = generation(path, st)
        if g is not None:
            old_flags, gen = GEN, g
    r.keys[key] = (old_flags | flags, gen)
    return st


def _walk(r: Resolved, top: str, value: str) -> None:
    """The files below directory ``top`` (SELF), at most WALK_MAX; its directories watched."""
    files = 0
    for dirpath, dirnames, filenames in os.walk(top):
        if len(r.dirs) < WATCH_MAX:
            r.dirs.add(dirpath)
        for n in filenames + dirnames:
            if files >= WALK_MAX:
                r.notices.append(f"{value}: more than {WALK_MAX} files below it; the rest are matched by "
                                 "name and by the directory's inode (any depth up to 64), not by their own "
                                 "inode: a hard link of one of them outside the directory walks around")
                return
            _put(r, os.path.join(dirpath, n), SELF)
            files += 1


def resolve(how: str, values: list[str], root: str = "/") -> Resolved:
    """The (device, inode) keys of the files ``values`` name (Equal) or start (Prefix)."""
    r = Resolved()
    for v in values:
        if not v.startswith("/"):
            continue    # a relative value names no file
        p = _under(root, v)
        if how == "equal":
            _put(r, p, SELF)
            r.dirs.add(os.path.dirname(p.rstrip("/")) or "/")
        elif v.endswith("/"):
            st = _put(r, p, UNDER)
            r.dirs.add(os.path.dirname(p.rstrip("/")) or "/")   # the directory replaced or made
            if st is not None and os.path.isdir(p):
                _walk(r, p.rstrip("/") or "/", v)
        else:
            parent, base = os.path.split(p)
            r.dirs.add(parent)
            try:
                names = [n for n in os.listdir(parent) if n.startswith(base)]
            except OSError:
                continue
            for n in names[:WALK_MAX]:
                q = os.path.join(parent, n)
                _put(r, q, SELF | UNDER)
                if os.path.isdir(q) and not os.path.islink(q):
                    _walk(r, q, v)
    return r


@dataclass
class _Set:
    policy: str
    owner: int                   # the loaded policy's id (a replacement of the same name has another)
    table: Any                   # the program's inoset map
    sid: int
    how: str
    values: list[str]
    root: str
    keys: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)   # (dev, ino) → (flags, gen)
    wds: set[int] = field(default_factory=set)


class InodeSets:
    """Every loaded policy's inode sets, written to their maps and kept current by one inotify
    thread. ``updates``: re-resolutions done; ``last_update``: monotonic ns of the last one."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.sets: list[_Set] = []
        self.lock = threading.Lock()
        self.updates = 0
        self.last_update = 0
        self._fd = -1
        self._wds: dict[int, set[int]] = {}    # wd → ids of the _Set objects that use it
        self._thread: threading.Thread | None = None
        self._stop_r, self._stop_w = -1, -1
        self._libc: Any = None

    # ---- load / unload ---------------------------------------------------------------------
    def add(self, policy: str, owner: int, table: Any, specs: list[tuple[int, str, list[str]]],
            root: str = "/") -> list[str]:
        """Resolve and write the policy's sets; notices for what they leave out."""
        notices: list[str] = []
        if not specs:
            return notices
        with self.lock:
            for sid, how, values in specs:
                s = _Set(policy, owner, table, sid, how, list(values), root)
                notices += self._refresh(s)
                self.sets.append(s)
            total = sum(len(s.keys) for s in self.sets if s.owner == owner)
            if total == 0:
                notices.append("no file named by its Equal/Prefix file filters exists at load: they match by "
                               "name until one is made in a watched directory")
        return notices

    def remove(self, owner: int) -> None:
        with self.lock:
            for s in [s for s in self.sets if s.owner == owner]:
                self.sets.remove(s)
                for wd in s.wds:
                    self._unwatch(wd, s)

    def close(self) -> None:
        with self.lock:
            self.sets.clear()
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(5)
            self._thread = None
        for fd in (self._fd, self._stop_r, self._stop_w):
            if fd >= 0:
                os.close(fd)
        self._fd = self._stop_r = self._stop_w = -1
        self._wds.clear()

    # ---- resolution ------------------------------------------------------------------------
    def _refresh(self, s: _Set) -> list[str]:
        r = resolve(s.how, s.values, s.root)
        new = dict(r.keys)
        room = self.capacity - sum(len(o.keys) for o in self.sets if o.owner == s.owner and o is not s)
        if len(new) > room:
            r.notices.append(f"the inode sets of the policy hold at most {self.capacity} files: "
                             f"{len(new) - room} of {s.values} are matched by name only")
            new = dict(list(new.items())[:max(room, 0)])
        tbl = s.table
        for (dev, ino) in [k for k in s.keys if k not in new]:
            key = tbl.Key()
            key.set, key.dev, key.ino = s.sid, dev, ino
            try:
                del tbl[key]
            except KeyError:
                pass
        for (dev, ino), (flags, gen) in new.items():
            if s.keys.get((dev, ino)) == (flags, gen):
                continue
            key = tbl.Key()
            key.set, key.dev, key.ino = s.sid, dev, ino
            val = tbl.Leaf()
            val.flags, val.gen = flags, gen
            tbl[key] = val
        s.keys = new
        self._watch_dirs(s, r.dirs)
        self.updates += 1
        self.last_update = time.monotonic_ns()
        return r.notices

    # ---- inotify ---------------------------------------------------------------------------
    def _start(self) -> bool:
        if self._fd >= 0:
            return True
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            log.warning("inode sets: inotify_init1 failed (errno %d): sets are not kept current", ctypes.get_errno())
            return False
        self._fd = fd
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="inode-sets", daemon=True)
        self._thread.start()
        return True

    def _watch_dirs(self, s: _Set, dirs: set[str]) -> None:
        if not dirs or not self._start():
            return
        want: set[int] = set()
        for d in sorted(dirs)[:WATCH_MAX]:
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(d), _IN_MASK)
            if wd >= 0:
                want.add(wd)
                self._wds.setdefault(wd, set()).add(id(s))
        for wd in s.wds - want:
            self._unwatch(wd, s)
        s.wds = want

    def _unwatch(self, wd: int, s: _Set) -> None:
        users = self._wds.get(wd)
        if users is None:
            return
        users.discard(id(s))
        if not users:
            del self._wds[wd]
            self._libc.inotify_rm_watch(self._fd, wd)

    def _run(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self._fd, self._stop_r], [], [])
            except (OSError, ValueError):
                return
            if self._stop_r in ready:
                return
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                return
            touched: set[int] = set()
            off = 0
            while off + _EVENT.size <= len(data):
                wd, mask, _cookie, n = _EVENT.unpack_from(data, off)
                off += _EVENT.size + n
                if not mask & _IN_IGNORED:
                    touched.add(wd)
            self._changed(touched)

    def _changed(self, wds: set[int]) -> None:
        with self.lock:
            ids = set().union(*(self._wds.get(wd, set()) for wd in wds)) if wds else set()
            for s in [s for s in self.sets if id(s) in ids]:
                try:
                    for n in self._refresh(s):
                        log.warning("policy %s: %s", s.policy, n)
                except Exception as exc:  # noqa: BLE001 - the watcher goes on; the set keeps its last keys
                    log.error("policy %s: inode set %d not refreshed: %s", s.policy, s.sid, exc)
