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
