"""Load-time warnings for selectors an attacker walks around (issue #12, README "Enforcement").

A ``string``/``path`` argument of a syscall hook is the name the process passed, read from its
memory at the syscall's entry, not the file the kernel resolved. Comparing it with Equal, Prefix
(or their Not forms, or Postfix) judges a string the attacker chose: the warning says what evades
it and what to judge instead.
"""

from __future__ import annotations

import re

from collector.policy.mechanism import Source
from collector.policy.model import Hook

PATH_FIELD = re.compile(r"(file|path|name|dir)", re.I)   # filename, pathname, oldname, newname, ...
RAW_OPS = {"Equal", "NotEqual", "Prefix", "NotPrefix", "Postfix", "NotPostfix", "In", "NotIn"}
EVADES = ("a relative name (cd first), '..', '//', '/./', a symlink, a hard link or a bind mount of the "
          "file, an openat dirfd, the same call under another syscall (openat2, creat, open, io_uring), "
          "a name on a page not yet in memory (read as empty here: Not* operators then match), and a "
          "thread rewriting the string between this read and the kernel's")
INSTEAD = ("judge the file instead: an `fd` argument of the write/read-type syscalls (resolved to the "
           "open file's path in the kernel), or fd_install with FollowFD (the path resolved at the "
           "open's exit)")


def raw_path_warnings(hook: Hook, src: Source) -> list[str]:
    """One notice per matchArgs filter that compares a raw user path string."""
    if src.kind not in ("syscall", "syscall_ret"):
        return []
    out = []
    for s in hook.selectors:
        for f in s.match_args:
            arg = hook.arg(f.index)
            if arg is None or arg.type not in ("string", "path") or f.operator not in RAW_OPS:
                continue
            if f.index >= len(src.fields):
                continue
            fld = src.fields[f.index]
            if not fld.is_pointer or not PATH_FIELD.search(fld.name):
                continue
            out.append(f"{f.path}: WARNING: {f.operator} compares the path string the process passed "
                       f"({fld.name}, read from its memory at the syscall's entry), not the file the kernel "
                       f"opens; evaded by {EVADES}; {INSTEAD}")
    return out


# the syscalls that put bytes into an open file, as the shipped etc-passwd-shadow-writes.yaml hooks them
WRITE_FAMILY = ("write", "pwrite64", "writev", "pwritev", "pwritev2", "sendfile64", "splice",
                "copy_file_range", "mmap")
# hooks that judge every write whatever the syscall (the permission check on the open file)
ANY_WRITE = {"security_file_permission", "file_permission", "vfs_write", "rw_verify_area"}
_SYSCALL_PREFIX = re.compile(r"^(__x64_sys_|__ia32_sys_|__ia32_compat_sys_|__se_sys_|ksys_|sys_)")
UNHOOKED_WRITES = "not hooked by this policy: writes through them are not judged"


def unhooked_writes(hooks: list[tuple[str, str]]) -> list[str]:
    """``hooks``: (policy path, function name) of each compiled hook. A policy that judges write(2)
    but not its siblings lets the same bytes reach the file through them (the seed policy hooks
    write only, as Tetragon's example does): one notice naming them, on the write hook."""
    names = {_SYSCALL_PREFIX.sub("", fn): path for path, fn in hooks}
    if "write" not in names or names.keys() & ANY_WRITE:
        return []
    missing = [c for c in WRITE_FAMILY if c not in names]
    if not missing:
        return []
    return [f"{names['write']}: {', '.join(missing)} {UNHOOKED_WRITES} (the file's open is still reported by "
            "FollowFD; hook them as examples/policies/etc-passwd-shadow-writes.yaml does, or judge "
            "security_file_permission where the kernel has kprobes)"]
