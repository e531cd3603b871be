"""How each hook of a policy is served on this kernel: the mechanism, chosen from one table.

``TABLE`` lists, per hook kind, the mechanisms in order of preference with the kernel feature
each needs; ``choose`` takes the first whose feature the kernel has, and a hook none can serve
is refused with the reasons of the rows it could not use.

On a kernel without kprobes and BPF trampolines (the build machines):
- ``kprobes:`` with ``syscall: true`` (``__x64_sys_write``, ``sys_write`` and ``write`` all name
  the write syscall) → ``syscalls:sys_enter_<name>``; with ``return: true`` or a ``returnCopy``
  argument also ``sys_exit_<name>`` (the event is made at the exit, with the return value);
- ``fd_install`` with a FollowFD selector (Tetragon's fd-tracking idiom, removed from Tetragon)
  → the exits of open/openat/openat2/creat, the new fd resolved to its path; ``fd``-typed
  arguments of the policy's other hooks are resolved through the task's fd table at the call and
  match only files the FollowFD selectors would have followed;
- ``tracepoints:`` → the tracepoint, arguments by index of its format's non-common fields;
- other kernel functions, ``lsmhooks:`` and the Override action are refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from collector import sock_hooks, uprobes
from collector.policy.argtypes import (
    INT_ARG_KIND,
    OPEN_SYSCALLS,
    Field,
    syscall_name,
    tracepoint_fields,
)
from collector.policy.model import Hook

if TYPE_CHECKING:
    from collector.policy.compiler import ProgramGen


@dataclass(frozen=True)
class Row:
    hook_kind: str     # what the policy asks for
    feature: str       # what the kernel must offer ("" = nothing)
    mechanism: str     # how it is then served
    missing: str       # why the row cannot serve, when the feature is missing


# hook kind × kernel feature → mechanism (first row whose feature the kernel has wins)
TABLE: list[Row] = [
    Row("tracepoint", "tracefs", "tracepoint", "no tracefs"),
    Row("uprobe", "", "uprobe", ""),
    Row("syscall", "syscall_tracepoints", "syscall tracepoint (sys_enter_/sys_exit_)",
        "no syscall tracepoints"),
    Row("sock", "tracefs", "sock tracepoints (collector/sock_hooks.py)", "no tracefs"),
    Row("fd_install+FollowFD", "syscall_tracepoints", "exits of open/openat/openat2/creat (emulation)",
        "no syscall tracepoints"),
    Row("kernel function", "kprobes", "refused",
        "this kernel has no kprobes (CONFIG_KPROBES unset) and refuses BPF trampolines "
        "(fentry), so kernel functions cannot be hooked"),
    Row("lsmhook", "", "refused",
        "BPF LSM programs need BPF trampolines, which this kernel refuses (EPERM)"),
    Row("Override", "", "refused",
        "it needs bpf_override_return on a kprobe (CONFIG_BPF_KPROBE_OVERRIDE); this kernel has no "
        "kprobes and a syscall tracepoint cannot change a return value"),
]


def row(hook_kind: str) -> Row:
    return next(r for r in TABLE if r.hook_kind == hook_kind)


@dataclass
class Source:
    """Where a hook's arguments come from."""

    kind: str                    # "syscall", "syscall_ret", "open", "tracepoint", "sock", "uprobe"
    fields: list[Field]
    attach_enter: str = ""
    attach_exit: list[str] = field(default_factory=list)
    target: uprobes.Target | None = None
    clone3_flags: bool = False   # clone3: argument 0 is clone_args.flags, read from user memory


def choose(g: ProgramGen, hook: Hook, kprobes: bool) -> tuple[Source, str, str]:
    """(source, the call name events carry, how it is served) for ``hook``; PolicyError if none."""
    p = hook.path
    if hook.kind == "lsmhook":
        raise g.fail(f"{p}.hook", f"lsmhook {hook.call!r} cannot be served: {row('lsmhook').missing}")
    if hook.kind == "tracepoint":
        fields = tracepoint_fields(hook.subsystem, hook.event, g.tracefs)
        if fields is None:
            raise g.fail(f"{p}.event", f"no tracepoint {hook.subsystem}:{hook.event} on this kernel")
        check_indexes(g, hook, fields, f"{hook.subsystem}:{hook.event}")
        tp = f"{hook.subsystem}:{hook.event}"
        return (Source("tracepoint", fields, attach_enter=tp), hook.call or hook.event,
                f"tracepoint {tp}")
    if hook.kind == "uprobe":
        return uprobe_source(g, hook)
    if hook.kind == "kprobe" and hook.call in sock_hooks.SOCK_HOOKS:
        return _sock_source(g, hook)
    name = syscall_name(hook.call)
    fields = tracepoint_fields("syscalls", f"sys_enter_{name}", g.tracefs)
    is_sys = hook.syscall or hook.call != name
    if is_sys and fields is not None:
        return _syscall_source(g, hook, name, fields)
    if hook.syscall:
        raise g.fail(f"{p}.call", f"{hook.call!r} is not a syscall of this kernel "
                                  f"(no tracepoint syscalls:sys_enter_{name})")
    if hook.call == "fd_install" and any(a.action == "FollowFD" for s in hook.selectors
                                         for a in s.match_actions):
        return _fd_install_emulation(g, hook)
    why = (row("kernel function").missing if not kprobes else
           "tetrapipe attaches kernel functions only through syscall tracepoints so far")
    raise g.fail(f"{p}.call", f"kernel function {hook.call!r} cannot be served: {why}")


def _sock_source(g: ProgramGen, hook: Hook) -> tuple[Source, str, str]:
    sh = sock_hooks.SOCK_HOOKS[hook.call]
    for a in hook.args:
        if a.index != 0 or a.type not in sock_hooks.SOCK_ARG_TYPES:
            raise g.fail(f"{a.path}.index", f"{hook.call} is served with one argument: index 0, type sock")
    if hook.return_:
        raise g.fail(f"{hook.path}.return", f"{hook.call} is served without a return value")
    g.sock = True
    return (Source("sock", [Field("sk", "struct sock *")], attach_exit=list(sh.tracepoints)),
            hook.call, sh.how)


def _syscall_source(g: ProgramGen, hook: Hook, name: str, fields: list[Field]) -> tuple[Source, str, str]:
    if not hook.syscall:
        g.notices.append(f"{hook.path}: {hook.call} served as the {name} syscall")
    fields = [f for f in fields if f.name != "__syscall_nr"]
    check_indexes(g, hook, fields, f"syscall {name}")
    needs_ret = hook.return_ or any(a.return_copy for a in hook.args) or any(
        s.match_return_args for s in hook.selectors)
    enter = f"syscalls:sys_enter_{name}"
    clone3 = clone3_flags(g, hook, name, fields)
    if needs_ret:
        return (Source("syscall_ret", fields, attach_enter=enter,
                       attach_exit=[f"syscalls:sys_exit_{name}"], clone3_flags=clone3),
                hook.call, f"{enter} + sys_exit_{name}")
    if clone3:  # flags unreadable at the enter (page not resident): read at the exit
        return (Source("syscall", fields, attach_enter=enter, attach_exit=[f"syscalls:sys_exit_{name}"],
                       clone3_flags=True),
                hook.call, f"{enter} (+ sys_exit_{name} when clone_args is not resident at the call)")
    return Source("syscall", fields, attach_enter=enter), hook.call, enter


def _fd_install_emulation(g: ProgramGen, hook: Hook) -> tuple[Source, str, str]:
    p = hook.path
    if hook.return_:
        raise g.fail(f"{p}.return", "fd_install has no return value")
    exits = [f"syscalls:sys_exit_{n}" for n in OPEN_SYSCALLS
             if tracepoint_fields("syscalls", f"sys_exit_{n}", g.tracefs) is not None]
    for a in hook.args:
        if a.index > 1:
            raise g.fail(f"{a.path}.index", "fd_install has 2 arguments (fd, file)")
    g.notices.append(
        f"{p}: fd_install (a kernel function) cannot be hooked on this kernel (no kprobes, BPF "
        "trampolines refused); FollowFD is served by resolving file descriptors to paths in "
        "the kernel: opens are reported from the exits of open/openat/openat2/creat with the "
        "new fd's path, and fd arguments of the other hooks match only files the FollowFD "
        "selectors would have followed; UnfollowFD/CopyFD need no state and are accepted")
    return Source("open", [Field("fd", "int"), Field("file", "int")], attach_exit=exits), \
        "fd_install", "exits of " + ", ".join(OPEN_SYSCALLS)


def clone3_flags(g: ProgramGen, hook: Hook, name: str, fields: list[Field]) -> bool:
    """clone3(uargs, size) passes its flags inside ``struct clone_args``: an integer-typed
    argument 0 is served as clone_args.flags (the u64 at offset 0, read from the caller's
    memory when ``size`` covers it), so a Mask on CLONE_NEW* matches clone3 as it does clone."""
    if name != "clone3" or not fields or not fields[0].is_pointer:
        return False
    arg0 = hook.arg(0)
    if arg0 is None or arg0.type not in INT_ARG_KIND:
        return False
    g.notices.append(f"{hook.path}: clone3 argument 0 ({arg0.type}) is served as clone_args.flags, read "
                     "from the caller's struct (when size covers it); matchArgs on index 0 compare the "
                     "flags, as for clone")
    return True


def uprobe_source(g: ProgramGen, hook: Hook) -> tuple[Source, str, str]:
    """A uprobe: the symbol (or offset) resolved in the file now, arguments from registers."""
    p = hook.path
    spec = uprobes.UprobeSpec(hook.binary, [hook.call] if hook.call else [],
                              [hook.offset] if hook.offset >= 0 else [], where=p)
    try:
        if not Path(hook.binary).is_file():
            raise uprobes.UprobeError(f"{p}.path", f"{hook.binary} does not exist or is not a file")
        (target,) = uprobes.resolve(spec)
    except uprobes.UprobeError as exc:
        raise g.fail(exc.path, exc.reason) from None
    for a in hook.args:
        if a.type not in uprobes.ARG_TYPES:
            raise g.fail(f"{a.path}.type", f"type {a.type} is not supported for uprobes (one of "
                                           f"{', '.join(sorted(uprobes.ARG_TYPES))})")
    pointer = {a.index for a in hook.args if a.type in ("string", "char_buf")}
    fields = [Field(f"arg{i}", "char *" if i in pointer else "u64") for i in range(uprobes.MAX_ARGS)]
    check_indexes(g, hook, fields, f"uprobe {target.symbol or hex(target.offset)}")
    where = f"{target.path}:{target.symbol}" if target.symbol else f"{target.path}"
    return (Source("uprobe", fields, target=target), target.symbol,
            f"uprobe {where}+{target.offset:#x}")


def check_indexes(g: ProgramGen, hook: Hook, fields: list[Field], what: str) -> None:
    names = ", ".join(f.name for f in fields) or "none"
    for a in hook.args:
        if a.index >= len(fields):
            raise g.fail(f"{a.path}.index", f"{what} has {len(fields)} arguments ({names}): "
                                            f"index {a.index} is out of range")
        if a.size_arg_index and a.size_arg_index > len(fields):
            raise g.fail(f"{a.path}.sizeArgIndex", f"{what} has {len(fields)} arguments ({names}): "
                                                   f"sizeArgIndex {a.size_arg_index} (from 1) is out of range")
