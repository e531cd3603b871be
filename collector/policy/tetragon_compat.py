"""Tetragon's library as written, on the kernels our users run: rewrites of a parsed hook that keep
its meaning where the kernel or our engine serves it another way. Each rewrite leaves a notice.

- ``syscall_override``: an Override on a syscall whose ``__x64_sys_*`` wrapper the kernel does not
  let BPF change (Debian's 6.1/6.12: ``CONFIG_FUNCTION_ERROR_INJECTION`` unset, no kprobe override)
  is served on the LSM hook that syscall passes (``security_socket_create`` for socket, ...), the
  syscall's arguments mapped onto the hook's (strings naming files become the resolved dentry:
  relative paths, dirfds and ``..`` cannot walk around it, and io_uring/32-bit entries pass the same
  hook). Arguments the hook does not see are left out of the event; a selector on one is refused.
- ``tracepoint_indexes``: Tetragon numbers a tracepoint's arguments by its format fields, the
  ``common_*`` ones included (``raw_syscalls:sys_enter`` index 4 = ``id``); we number the fields
  after them. An index past our fields that is in Tetragon's range is read as Tetragon's.
- ``old_signature``: a kernel function whose arguments changed since the kernels a library file was
  written for (tty_54.yaml: ``tty_write(file, buf, count, ppos)`` before 5.11, ``(iocb, from)``
  since). Tetragon loads such a file with a warning (its BTF pre-validation "will continue with
  loading") and reads the registers by the old layout, garbage on the new call; here the old
  arguments are read where the new call has them (a file → the kiocb's file, a buffer → the
  iov_iter's data) and those the call no longer has are left out of the event, all said in the
  load answer; a selector on a left-out argument is refused.
- ``split_override_return``: a kprobe with an Override and ``return: true`` (Tetragon reports the
  overridden return value) becomes two hooks on the function: the enforcing one at the call (no
  event) and the reporting one at the return, with the same selectors.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING

from bpf.names import CAPABILITIES
from collector import btf_funcs
from collector.policy.argtypes import syscall_name, tracepoint_fields
from collector.policy.compat_x86 import X86_64
from collector.policy.model import Action, ArgSpec, Hook

if TYPE_CHECKING:
    from collector.policy.compiler import ProgramGen
    from collector.policy.yamldoc import Ctx

# syscall → (LSM hook, security_* function, {syscall arg index: (hook arg index, type read there)})
SYSCALL_LSM: dict[str, tuple[str, str, dict[int, tuple[int, str]]]] = {
    "socket": ("socket_create", "security_socket_create", {0: (0, "int"), 1: (1, "int"), 2: (2, "int")}),
    "symlinkat": ("path_symlink", "security_path_symlink", {0: (2, "string"), 2: (1, "dentry")}),
    "symlink": ("path_symlink", "security_path_symlink", {0: (2, "string"), 1: (1, "dentry")}),
    "linkat": ("path_link", "security_path_link", {1: (0, "dentry"), 3: (2, "dentry")}),
    "link": ("path_link", "security_path_link", {0: (0, "dentry"), 1: (2, "dentry")}),
    "unlinkat": ("path_unlink", "security_path_unlink", {1: (1, "dentry")}),
    "unlink": ("path_unlink", "security_path_unlink", {0: (1, "dentry")}),
    "mkdirat": ("path_mkdir", "security_path_mkdir", {1: (1, "dentry"), 2: (2, "int")}),
    "mkdir": ("path_mkdir", "security_path_mkdir", {0: (1, "dentry"), 1: (2, "int")}),
    "openat": ("file_open", "security_file_open", {1: (0, "file")}),
    "open": ("file_open", "security_file_open", {0: (0, "file")}),
    "execve": ("bprm_check_security", "security_bprm_check", {0: (0, "linux_binprm")}),
}
INT_TYPES = ("int", "uint32", "int32", "uint64", "int64", "size_t", "long", "ulong", "uint16", "int16",
             "uint8", "int8", "sint32", "sint64", "sint16", "sint8")
STRINGLIKE = ("string", "filename", "char_buf", "dentry", "file", "path", "linux_binprm")


def _remap(hook: Hook, mapping: dict[int, tuple[int, str]], **changes: object) -> tuple[Hook, list[int]]:
    """The hook with argument ``i`` renamed ``mapping[i]``; (new hook, indexes left out)."""
    args, dropped = [], []
    for a in hook.args:
        if a.index in mapping:
            new_i, new_t = mapping[a.index]
            keep_t = a.type if (new_t == "int" and a.type in INT_TYPES) else new_t
            args.append(dataclasses.replace(a, index=new_i, type=keep_t))
        else:
            dropped.append(a.index)
    sels = []
    for s in hook.selectors:
        s2 = dataclasses.replace(s, match_args=[dataclasses.replace(f, index=mapping[f.index][0])
                                                if f.index in mapping else f for f in s.match_args])
        sels.append(s2)
    return dataclasses.replace(hook, args=args, selectors=sels, **changes), dropped


def syscall_override(g: ProgramGen, hook: Hook, wrapper_prefix: str) -> Hook:
    """``hook`` served on its syscall's LSM hook when it overrides a syscall the kernel does not
    let BPF change at the wrapper; else ``hook`` unchanged."""
    if hook.kind != "kprobe" or not any(a.action == "Override" for s in hook.selectors for a in s.match_actions):
        return hook
    name = syscall_name(hook.call)
    if name not in SYSCALL_LSM or not (hook.syscall or hook.call != name):
        return hook
    wrapper = wrapper_prefix + name
    if wrapper in g.features.error_injection:
        return hook
    lsm, func, mapping = SYSCALL_LSM[name]
    for s in hook.selectors:
        for f in s.match_args:
            if f.index not in mapping:
                raise g.fail(f"{f.path}.index", f"Override on {hook.call}: this kernel cannot change "
                             f"{wrapper}'s return (no error injection) and the LSM hook {lsm} that serves "
                             f"it instead does not see argument {f.index}")
    for a in hook.args:
        if a.index in mapping and a.type not in STRINGLIKE + INT_TYPES:
            raise g.fail(f"{a.path}.type", f"Override on {hook.call} is served on LSM hook {lsm}: a {a.type} "
                                           "argument cannot be read there")
    new, dropped = _remap(hook, mapping, call=func, syscall=False)
    moved = ", ".join(f"{i}→{lsm} argument {mapping[i][0]} ({mapping[i][1]})"
                      for i in sorted(mapping) if hook.arg(i) is not None)
    g.notices.append(f"{hook.path}: Override on {hook.call} served on LSM hook {lsm} ({wrapper} cannot be "
                     f"changed on this kernel: no error injection); arguments {moved or 'none'}"
                     + (f"; {', '.join(map(str, dropped))} not seen there, left out of the event" if dropped else "")
                     + ("; file names are matched as resolved paths (relative paths, dirfds, symlinks resolved)"
                        if any(t in ("dentry", "file") for _, t in mapping.values()) else ""))
    return new


# function → (its parameters since, since which Linux, {old index: (new index, type)}, how)
OLD_SIGNATURES: dict[str, tuple[tuple[str, ...], str, dict[int, tuple[int, str]], str]] = {
    "tty_write": (("iocb", "from"), "5.11", {0: (0, "kiocb"), 1: (1, "iov_iter")},
                  "argument 0 (a file) as the kiocb's file, 1 (the written buffer) as the iov_iter's data"),
}


def old_signature(g: ProgramGen, hook: Hook) -> Hook:
    """``hook`` with the arguments of its function's older signature read from the new one (see
    the module's doc); else ``hook`` unchanged."""
    if hook.kind != "kprobe" or hook.syscall or hook.call not in OLD_SIGNATURES or not g.features.btf:
        return hook
    names, since, mapping, how = OLD_SIGNATURES[hook.call]
    funcs = btf_funcs.vmlinux()
    proto = funcs.proto(hook.call) if funcs is not None else None
    if proto is None or tuple(p.name for p in proto.params) != names:
        return hook
    n = len(names)
    if all(a.index < n and a.size_arg_index <= n and a.type == mapping[a.index][1] for a in hook.args
           if a.index in mapping) and all(a.index < n and a.size_arg_index <= n for a in hook.args):
        return hook    # written for this signature
    for s in hook.selectors:
        for f in s.match_args:
            if f.index not in mapping:
                raise g.fail(f"{f.path}.index", f"{hook.call} has the arguments ({', '.join(names)}) since Linux "
                                                f"{since}: argument {f.index} of the older call is not in it")
    new, dropped = _remap(hook, mapping)
    new = dataclasses.replace(new, args=[dataclasses.replace(a, size_arg_index=0) for a in new.args])
    g.notices.append(f"{hook.path}: WARNING: {hook.call} has the arguments ({', '.join(names)}) since Linux {since}; "
                     f"this policy declares the older call's: {how}"
                     + (f"; argument {', '.join(map(str, dropped))} is not in the call, left out of the event"
                        if dropped else "")
                     + " (Tetragon loads it too, reading the registers by the old layout)")
    return new


def _common_fields(subsys: str, event: str, tracefs: Path) -> int:
    try:
        text = (tracefs / "events" / subsys / event / "format").read_text()
    except OSError:
        return 0
    return len(re.findall(r"field:[^;]*\bcommon_\w+;", text))


def tracepoint_indexes(g: ProgramGen, hook: Hook) -> Hook:
    """A tracepoint hook whose argument indexes count the ``common_*`` fields (Tetragon's
    numbering) renumbered to ours, when every index past our fields fits Tetragon's."""
    if hook.kind != "tracepoint" or hook.raw:
        return hook
    fields = tracepoint_fields(hook.subsystem, hook.event, g.tracefs)
    if fields is None or all(a.index < len(fields) for a in hook.args):
        return hook
    common = _common_fields(hook.subsystem, hook.event, g.tracefs)
    if not common or not all(common <= a.index < common + len(fields) for a in hook.args):
        return hook
    mapping = {a.index: (a.index - common, a.type) for a in hook.args}
    new, _ = _remap(hook, mapping)
    new = dataclasses.replace(new, args=[dataclasses.replace(a, type=hook.arg(a.index + common).type)  # type: ignore[union-attr]
                                         for a in new.args])
    g.notices.append(f"{hook.path}: argument indexes read as Tetragon's (the {common} common_* fields of "
                     f"{hook.subsystem}:{hook.event} counted): " +
                     ", ".join(f"{i}→{fields[i - common].name}" for i in sorted(mapping)))
    return new


ENFORCING = ("Override", "Sigkill", "Signal", "NotifyEnforcer")


def split_override_return(hooks: list[Hook], notices: list[str]) -> list[Hook]:
    """Kprobes with an Override and ``return: true`` → (enforcing hook at the call, reporting hook
    at the return); other hooks unchanged."""
    out: list[Hook] = []
    for h in hooks:
        has_override = any(a.action == "Override" for s in h.selectors for a in s.match_actions)
        if h.kind != "kprobe" or not h.return_ or not has_override or any(s.match_return_args for s in h.selectors):
            out.append(h)
            continue
        enforce = dataclasses.replace(h, return_=False, return_arg=None, selectors=[
            dataclasses.replace(s, match_actions=[a for a in s.match_actions if a.action in ENFORCING]
                                + [Action("NoPost", path=s.path)])
            for s in h.selectors])
        report = dataclasses.replace(h, selectors=[
            dataclasses.replace(s, match_actions=[a for a in s.match_actions if a.action not in ENFORCING])
            for s in h.selectors])
        notices.append(f"{h.path}: Override with return: true served as two programs on {h.call}: the "
                       "override at the call (no event there) and the event at the return, which carries "
                       "the overridden value")
        out += [enforce, report]
    return out



def list_values(c: Ctx, hooks: list[Hook], lists: dict[str, tuple[str, list[str]]]) -> None:
    """``InMap``/``NotInMap`` values ``list:NAME`` naming a ``type: syscalls`` list of
    ``spec.lists`` → the syscalls' numbers (x86-64), in place."""
    for h in hooks:
        for s in h.selectors:
            for f in s.match_args + s.match_return_args:
                if f.operator not in ("InMap", "NotInMap") or not any(v.startswith("list:") for v in f.values):
                    continue
                out: list[str] = []
                for j, v in enumerate(f.values):
                    if not v.startswith("list:"):
                        out.append(v)
                        continue
                    kind, names = lists.get(v[5:], ("", []))
                    if kind != "syscalls":
                        raise c.fail(f"{f.path}.values[{j}]", f"{v!r}: no list of type syscalls by that name "
                                                              "in spec.lists")
                    for n in names:
                        nr = X86_64.get(syscall_name(n))
                        if nr is None:
                            c.notices.append(f"{f.path}.values[{j}]: {n} is no x86-64 syscall, left out")
                        else:
                            out.append(str(nr))
                f.values = out


CAP_ARG_TYPES = ("kernel_cap_t", "cap_effective", "cap_inheritable", "cap_permitted")


def capability_mask(c: Ctx, values: list[str], arg: ArgSpec | None, path: str) -> str:
    """matchArgs ``operator: Capability`` (deny-privileged-containers): the kernel_cap_t argument
    has any of the named capabilities; served as ``Mask`` with their bits."""
    if arg is None or arg.type not in CAP_ARG_TYPES:
        raise c.fail(f"{path}.operator", "the Capability operator applies to a kernel_cap_t argument "
                                         f"({', '.join(CAP_ARG_TYPES)})")
    mask = 0
    for j, v in enumerate(values):
        name = v.upper() if v.upper().startswith("CAP_") else f"CAP_{v.upper()}"
        if v.isdigit() and int(v) < len(CAPABILITIES):
            mask |= 1 << int(v)
        elif name in CAPABILITIES:
            mask |= 1 << CAPABILITIES.index(name)
        else:
            raise c.fail(f"{path}.values[{j}]", f"unknown capability {v!r}")
    c.notices.append(f"{path}: operator Capability served as Mask {mask:#x} (any of {', '.join(values)})")
    return str(mask)
