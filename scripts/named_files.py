"""Put in place the files Tetragon's policy library names but a Debian install does not have,
**only inside the calling process's own mount namespace** (for scripts/count-policies.py
``--with-named-files``, whose child runs under ``unshare --mount --propagation private``).

- ``/lib64/libc.so.6`` (uprobe-binaries.yaml): the system's libc bound there (Debian's is
  ``/lib/x86_64-linux-gnu/libc.so.6``);
- ``/home/jolsa/tetragon/contrib/tester-progs/usdt`` and ``.../usdt-override`` (usdt.yaml,
  usdt-set.yaml: Tetragon's tester programs): our own tester programs with the USDT probes those
  policies name (tests/data/usdt_tester.c, usdt_override_tester.c), built with gcc straight into
  the namespace's tmpfs.

A file that already exists is left as it is. A missing path is made by mounting a tmpfs over its
deepest existing directory and binding that directory's entries back into it (symlinks copied),
so everything else there stays visible; then the file is created in the tmpfs. mount(2) is called
directly (ctypes), not through mount(8): while /lib64 is being shadowed, its ELF interpreter link is
briefly missing and no dynamically linked program could start. Nothing here writes to a disk, and
the mounts vanish with the namespace.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
TESTERS = "/home/jolsa/tetragon/contrib/tester-progs"
LIBC_CANDIDATES = ("/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib64/libc.so.6")
MS_BIND = 4096
MS_REC = 16384


class NamedFilesError(RuntimeError):
    """A named file could not be put in place (or the namespace is not our own)."""


def named_files() -> dict[str, tuple[str, str]]:
    """Target path → ("build", C source) or ("bind", existing file)."""
    libc = next((c for c in LIBC_CANDIDATES if os.path.isfile(c)), "")
    out = {f"{TESTERS}/usdt": ("build", str(DATA / "usdt_tester.c")),
           f"{TESTERS}/usdt-override": ("build", str(DATA / "usdt_override_tester.c"))}
    if libc:
        out["/lib64/libc.so.6"] = ("bind", libc)
    return out


def place_all(parent_mnt_ns: str) -> dict[str, str]:
    """Every named file put in place; target → what was done. Refuses to mount anything unless this
    process's mount namespace differs from ``parent_mnt_ns`` (the counting parent's)."""
    own = os.readlink("/proc/self/ns/mnt")
    if own == parent_mnt_ns:
        raise NamedFilesError(f"not in a mount namespace of its own ({own}): refusing to mount")
    _mount("none", "/", None, MS_REC | (1 << 18))  # MS_PRIVATE, again: nothing propagates out
    done: dict[str, str] = {}
    shadowed: list[str] = []
    for target, (how, source) in named_files().items():
        if os.path.lexists(target):
            done[target] = "already present, left as it is"
            continue
        _make_room(target, shadowed)
        if how == "bind":
            Path(target).touch(mode=0o755)
            _mount(source, target, None, MS_BIND)
            done[target] = f"bound from {source}"
        else:
            gcc = shutil.which("gcc") or shutil.which("cc")
            if not gcc:
                raise NamedFilesError(f"no C compiler to build {source}")
            subprocess.run([gcc, "-pipe", "-O1", "-o", target, source], check=True)
            done[target] = f"built from {os.path.relpath(source, REPO)}"
    return done


def _make_room(target: str, shadowed: list[str]) -> None:
    """The directories of ``target`` made writable in this namespace: a tmpfs over the deepest
    existing one (its entries bound back; ``shadowed`` lists those done already), the missing ones
    created in it."""
    parent = os.path.dirname(target)
    existing = parent
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    real = os.path.realpath(existing)
    if any(real == s or real.startswith(s.rstrip("/") + "/") for s in shadowed):
        os.makedirs(parent, mode=0o755, exist_ok=True)
        return
    if real == "/":
        raise NamedFilesError(f"{target}: no directory of its path exists below / to lay a tmpfs over")
    shadowed.append(real)
    st = os.stat(real)
    fd = os.open(real, os.O_PATH | os.O_DIRECTORY)   # the original directory, still reachable under the tmpfs
    try:
        entries = sorted(os.listdir(real))
        _mount("tmpfs", real, "tmpfs", 0, f"mode={st.st_mode & 0o7777:o},uid={st.st_uid},gid={st.st_gid}")
        for name in entries:
            orig = f"/proc/self/fd/{fd}/{name}"
            new = os.path.join(real, name)
            if os.path.islink(orig):
                os.symlink(os.readlink(orig), new)
                continue
            if os.path.isdir(orig):
                os.mkdir(new)
            else:
                Path(new).touch()
            _mount(orig, new, None, MS_BIND | MS_REC)
    finally:
        os.close(fd)
    os.makedirs(parent, mode=0o755, exist_ok=True)


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                    ctypes.c_ulong(flags), data.encode() if data else None)
    if rc != 0:
        err = ctypes.get_errno()
        raise NamedFilesError(f"mount {source} on {target}: {os.strerror(err)}")
