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

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from collector import btf_funcs, sock_hooks, uprobes, usdt_semaphore
from collector.kernel_features import KernelFeatures
from collector.policy import uprobe_paths, usdt
from collector.policy.argtypes import (
    INT_ARG_KIND,
    OPEN_SYSCALLS,
    Field,
    syscall_name,
    tracepoint_fields,
)
from collector.policy.model import Action, Hook

if TYPE_CHECKING:
    from collector.policy.compiler import ProgramGen


@dataclass(frozen=True)
class Row:
    hook_kind: str     # what the policy asks for
    feature: str       # what the kernel must offer ("" = nothing)
    mechanism: str     # how it is then served
    missing: str       # why the row cannot serve, when the feature is missing


# hook kind × kernel feature → mechanism (first row whose feature the kernel has wins); the
# features are collector/kernel_features.py's, measured at start
TABLE: list[Row] = [
    Row("tracepoint", "", "tracepoint", ""),
    Row("uprobe", "", "uprobe", ""),
    # syscall: true keeps the syscall tracepoints on every kernel: they see every entry (32-bit
    # and io_uring-less paths included) and their arguments are the syscall's, not pt_regs
    Row("syscall", "syscall_tracepoints", "syscall tracepoint (sys_enter_/sys_exit_)",
        "no syscall tracepoints"),
    Row("sock", "syscall_tracepoints", "sock tracepoints (collector/sock_hooks.py)", "no syscall tracepoints"),
    Row("fd_install+FollowFD", "trampolines", "fentry", "BPF trampolines refused"),
    Row("fd_install+FollowFD", "kprobes", "kprobe", "no kprobes"),
    Row("fd_install+FollowFD", "syscall_tracepoints", "exits of open/openat/openat2/creat (emulation)",
        "no syscall tracepoints"),
    Row("kernel function", "trampolines", "fentry", "BPF trampolines refused"),
    Row("kernel function", "kprobes", "kprobe", "no kprobes"),
    Row("kernel function return", "trampolines", "fexit", "BPF trampolines refused"),
    Row("kernel function return", "kprobes", "kretprobe", "no kprobes"),
    Row("lsmhook", "bpf_lsm", "lsm", "no BPF LSM"),
    # Override on security_<hook>: the LSM hook itself where BPF LSM works (runs before the effect)
    Row("Override", "bpf_lsm", "lsm", "no BPF LSM"),
    # Override on security_* or an error-injectable function (ALLOW_ERROR_INJECTION)
    Row("Override", "fmod_ret", "fmod_ret", "fmod_ret programs refused"),
    # Override on an error-injectable function, from a kprobe
    Row("Override", "kprobe_override", "kprobe+bpf_override_return", "no CONFIG_BPF_KPROBE_OVERRIDE"),
]

KFUNC_MECHANISMS = ("fentry", "fexit", "kprobe", "kretprobe", "lsm", "fmod_ret", "kprobe+bpf_override_return")


def rows(hook_kind: str) -> list[Row]:
    return [r for r in TABLE if r.hook_kind == hook_kind]


def pick(features: KernelFeatures, hook_kind: str,
         allowed: Callable[[Row], str] | None = None) -> tuple[Row | None, list[str]]:
    """The first row of ``hook_kind`` the kernel serves (and ``allowed`` accepts: it returns ""
    or why not); else None and every row's reason."""
    why = []
    for r in rows(hook_kind):
        if not features.has(r.feature):
            why.append(f"{r.mechanism}: {features.why.get(r.feature, r.missing)}")
            continue
        no = allowed(r) if allowed else ""
        if no:
            why.append(f"{r.mechanism}: {no}")
            continue
        return r, why
    return None, why


# what the build machines' kernel (no kprobes, trampolines refused) says for each refusal
NO_KFUNC = ("this kernel has no kprobes (CONFIG_KPROBES unset) and refuses BPF trampolines "
            "(fentry), so kernel functions cannot be hooked")
NO_LSM = "BPF LSM programs need BPF trampolines, which this kernel refuses (EPERM)"
NO_OVERRIDE = ("it needs bpf_override_return on a kprobe (CONFIG_BPF_KPROBE_OVERRIDE); this kernel has no "
               "kprobes and a syscall tracepoint cannot change a return value")


@dataclass
class Source:
    """Where a hook's arguments come from."""

    kind: str                    # "syscall", "syscall_ret", "open", "tracepoint", "sock", "uprobe"
    fields: list[Field]
    attach_enter: str = ""
    attach_exit: list[str] = field(default_factory=list)
    target: uprobes.Target | None = None
    clone3_flags: bool = False   # clone3: argument 0 is clone_args.flags, read from user memory
    mech: str = ""               # kernel functions: one of KFUNC_MECHANISMS
    func: str = ""               # kernel functions: what the program attaches to
    ret: bool = False            # kernel functions: the event is made at the return
    override: bool = False       # the program can change the return value (Override)
    wrapper: bool = False        # a syscall wrapper (__x64_sys_*): arguments in its struct pt_regs


def choose(g: ProgramGen, hook: Hook) -> tuple[Source, str, str]:
    """(source, the call name events carry, how it is served) for ``hook``; PolicyError if none."""
    p = hook.path
    if hook.kind == "lsmhook":
        return _lsm_source(g, hook)
    if hook.kind == "tracepoint" and hook.raw:
        from collector.policy import rawtp  # it imports this module
        return rawtp.source(g, hook)
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
    if hook.kind == "kprobe" and hook.call in sock_hooks.SOCK_HOOKS and not (
            _needs_return(hook) and (g.features.trampolines or g.features.kprobes)
            and not any(a.action == "Override" for s in hook.selectors for a in s.match_actions)):
        return _sock_source(g, hook)   # with a return value: the function itself, where it can be hooked
    name = syscall_name(hook.call)
    fields = tracepoint_fields("syscalls", f"sys_enter_{name}", g.tracefs)
    is_sys = hook.syscall or hook.call != name
    if is_sys and fields is not None:
        if override_action(hook) is not None:
            return _override_source(g, hook, SYSCALL_WRAPPER + name, fields)
        return _syscall_source(g, hook, name, fields)
    if hook.syscall:
        raise g.fail(f"{p}.call", f"{hook.call!r} is not a syscall of this kernel "
                                  f"(no tracepoint syscalls:sys_enter_{name})")
    if hook.call == "fd_install" and any(a.action == "FollowFD" for s in hook.selectors
                                         for a in s.match_actions):
        r, _ = pick(g.features, "fd_install+FollowFD")
        if r is None or r.mechanism not in KFUNC_MECHANISMS:
            return _fd_install_emulation(g, hook)
    if override_action(hook) is not None:
        return _override_source(g, hook, hook.call, None)
    return _kfunc_source(g, hook)


SYSCALL_WRAPPER = {"x86_64": "__x64_sys_", "aarch64": "__arm64_sys_"}.get(platform.machine(), "__x64_sys_")


def override_action(hook: Hook) -> Action | None:
    """The first Override action of the hook (tcp_connect's are connect rules, not here)."""
    if hook.kind == "kprobe" and hook.call in sock_hooks.SOCK_HOOKS:
        return None
    return next((a for s in hook.selectors for a in s.match_actions + s.match_return_actions
                 if a.action == "Override"), None)


def override_errors(hook: Hook) -> tuple[int, ...]:
    """The argError values of the hook's Override actions."""
    return tuple(a.arg_error for s in hook.selectors for a in s.match_actions + s.match_return_actions
                 if a.action == "Override")


def _needs_return(hook: Hook) -> bool:
    return hook.return_ or any(a.return_copy for a in hook.args) or any(
        s.match_return_args for s in hook.selectors)


def _proto(g: ProgramGen, func: str, path: str) -> btf_funcs.FuncProto | None:
    """The function's BTF prototype; PolicyError when the kernel has BTF and not this function."""
    funcs = btf_funcs.vmlinux() if g.features.btf else None
    if funcs is None:
        return None
    proto = funcs.proto(func)
    if proto is None:
        raise g.fail(path, f"kernel function {func!r} is not in this kernel's BTF (no such function, "
                           "or inlined)")
    return proto


def _fields(proto: btf_funcs.FuncProto | None, wrapper_fields: list[Field] | None = None) -> list[Field]:
    if wrapper_fields is not None:
        return wrapper_fields
    if proto is None:   # kprobes without BTF: six untyped register arguments
        return [Field(f"arg{i}", "u64") for i in range(6)]
    return [Field(pa.name or f"arg{i}", pa.ctype) for i, pa in enumerate(proto.params)]


def _kfunc_source(g: ProgramGen, hook: Hook) -> tuple[Source, str, str]:
    p = hook.path
    ret = _needs_return(hook)
    kind = "kernel function return" if ret else "kernel function"
    r, why = pick(g.features, kind)
    if r is None:
        reason = NO_KFUNC if not g.features.kprobes and not g.features.trampolines and not g.features.release \
            else "; ".join(why)
        raise g.fail(f"{p}.call", f"kernel function {hook.call!r} cannot be served: {reason}")
    proto = _proto(g, hook.call, f"{p}.call")
    if r.mechanism in ("fentry", "fexit") and proto is None:
        r, _ = pick(g.features, kind, lambda row: "no BTF" if row.mechanism in ("fentry", "fexit") else "")
        if r is None:
            raise g.fail(f"{p}.call", f"kernel function {hook.call!r} cannot be served: no BTF for "
                                      "trampolines and no kprobes")
    fields = _fields(proto)
    check_indexes(g, hook, fields, f"kernel function {hook.call}")
    if ret and hook.call == "fd_install":
        raise g.fail(f"{p}.return", "fd_install has no return value")
    src = Source("kfunc", fields, mech=r.mechanism, func=hook.call, ret=ret)
    return src, hook.call, f"{r.mechanism} {hook.call}"


def _lsm_source(g: ProgramGen, hook: Hook) -> tuple[Source, str, str]:
    p = hook.path
    r, why = pick(g.features, "lsmhook")
    if r is None:
        reason = NO_LSM if not g.features.release else "; ".join(why)
        raise g.fail(f"{p}.hook", f"lsmhook {hook.call!r} cannot be served: {reason}")
    proto = _proto(g, f"bpf_lsm_{hook.call}", f"{p}.hook")
    if hook.call in BPF_LSM_DISABLED:
        raise g.fail(f"{p}.hook", f"BPF LSM programs may not attach to {hook.call} (the kernel disables it "
                                  "for BPF: its return value means something else)")
    if hook.return_:
        raise g.fail(f"{p}.return", "an lsmhook has no return value to report (its program decides it)")
    lo, hi = LSM_RETURN_RANGE
    for s in hook.selectors:
        for a in s.match_actions:
            if a.action == "Override" and not lo <= a.arg_error <= hi:
                raise g.fail(f"{a.path}.argError", f"argError {a.arg_error} is outside what a BPF LSM program "
                                                   f"may return (0 or {lo}..-1: the kernel's verifier refuses it)")
    fields = _fields(proto)
    check_indexes(g, hook, fields, f"LSM hook {hook.call}")
    src = Source("kfunc", fields, mech="lsm", func=hook.call, override=override_action(hook) is not None)
    return src, hook.call, f"lsm {hook.call}"


def lsm_hook_of(func: str, funcs: btf_funcs.BtfFuncs | None) -> str:
    """The LSM hook ``security_<x>`` calls (``bpf_lsm_<hook>`` in BTF), "" if none: mostly ``x``,
    some named apart (security_bprm_check → bprm_check_security)."""
    if not func.startswith("security_") or funcs is None:
        return ""
    x = func.removeprefix("security_")
    for cand in (x, f"{x}_security"):
        if funcs.proto(f"bpf_lsm_{cand}") is not None and cand not in BPF_LSM_DISABLED:
            return cand
    return ""


# hooks BPF LSM programs may not attach to (the kernel's bpf_lsm_disabled_hooks, 6.9+: their return
# values mean something else); an Override there goes to fmod_ret on the security_* function
BPF_LSM_DISABLED = frozenset({"vm_enough_memory", "inode_need_killpriv", "inode_getsecurity",
                              "inode_listsecurity", "inode_copy_up_xattr", "getselfattr", "getprocattr",
                              "setprocattr", "key_getsecurity", "audit_rule_match", "ismaclabel"})


# what a BPF LSM program may return: 0 or an errno (the verifier enforces it since 6.10; Tetragon's
# security-socket-connect-block-others returns 1 and was refused so on Debian 6.12)
LSM_RETURN_RANGE = (-4095, 0)


def override_row(g: ProgramGen, func: str, errors: tuple[int, ...] = ()) -> tuple[Row | None, list[str], str]:
    """How ``func``'s return value can be changed on this kernel to each of ``errors`` (the
    argError values): (the Override row or None, why not per row, the LSM hook ``func`` calls or "")."""
    funcs = btf_funcs.vmlinux() if g.features.btf else None
    lsm_hook = lsm_hook_of(func, funcs)
    inj = func in g.features.error_injection
    lo, hi = LSM_RETURN_RANGE
    odd = [e for e in errors if not lo <= e <= hi]

    def allowed(r: Row) -> str:
        if r.mechanism == "lsm":
            if lsm_hook and odd:
                return (f"argError {odd[0]} is outside what a BPF LSM program may return "
                        f"(0 or {lo}..-1: the kernel's verifier refuses it)")
            return "" if lsm_hook else f"{func} is not an LSM hook (no bpf_lsm_* for it in BTF)"
        if r.mechanism == "fmod_ret":
            return "" if (func.startswith("security_") or inj) else \
                f"{func} is neither security_* nor error-injectable (debugfs error_injection/list)"
        return "" if inj else f"{func} is not error-injectable (debugfs error_injection/list)"

    r, why = pick(g.features, "Override", allowed)
    return r, why, lsm_hook


def _override_source(g: ProgramGen, hook: Hook, func: str,
                     syscall_fields: list[Field] | None) -> tuple[Source, str, str]:
    """Override: a program that can change ``func``'s return value before its effect."""
    act = override_action(hook)
    assert act is not None
    r, why, lsm_hook = override_row(g, func, override_errors(hook))
    if r is None:
        reason = NO_OVERRIDE if not g.features.release else "; ".join(why)
        raise g.fail(f"{act.path}.action", f"Override cannot be served: {reason}")
    if _needs_return(hook):
        raise g.fail(f"{hook.path}.return", "a hook with Override is served at the call (the override "
                                            "replaces the function): no return value to report")
    attach = lsm_hook if r.mechanism == "lsm" else func
    proto = _proto(g, f"bpf_lsm_{lsm_hook}" if r.mechanism == "lsm" else func, f"{hook.path}.call")
    fields = _fields(proto, [f for f in syscall_fields if f.name != "__syscall_nr"] if syscall_fields else None)
    check_indexes(g, hook, fields, f"kernel function {func}")
    src = Source("kfunc", fields, mech=r.mechanism, func=attach, override=True,
                 wrapper=syscall_fields is not None)
    if syscall_fields is not None and not hook.syscall:
        g.notices.append(f"{hook.path}: {hook.call} served as the {func} syscall wrapper (Override)")
    return src, hook.call, f"{r.mechanism} {attach}" + (" (Override)" if r.mechanism != "lsm" else " (Override)")


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
    if hook.usdt:   # a USDT probe's locations (bcc's USDT support)
        target = usdt.target(hook, g.fail)
    elif hook.in_container:   # resolved in each selected container's root as it appears
        target = uprobe_paths.container_target(hook)
    else:
        binary = uprobe_paths.host_path(hook.binary, p, g.notices)
        spec = uprobes.UprobeSpec(binary, [hook.call] if hook.call else [],
                                  [hook.offset] if hook.offset >= 0 else [], where=p)
        try:
            if not os.path.isfile(binary):   # False also where it cannot be looked at (EACCES)
                raise uprobes.UprobeError(f"{p}.path", f"{hook.binary} does not exist or is not a file"
                                          + (f" (read as {binary})" if binary != hook.binary else ""))
            (target,) = uprobes.resolve(spec)
        except uprobes.UprobeError as exc:
            raise g.fail(exc.path, exc.reason) from None
        target.ref_ctr_offset = hook.ref_ctr
    if hook.ref_ctr and (reason := usdt_semaphore.kernel_reason()):
        raise g.fail(f"{p}.refCtrOffsets", f"{reason}: the kernel cannot count the reference counter")
    for a in hook.args:
        if a.type not in uprobes.ARG_TYPES and not hook.usdt:
            raise g.fail(f"{a.path}.type", f"type {a.type} is not supported for uprobes (one of "
                                           f"{', '.join(sorted(uprobes.ARG_TYPES))})")
    pointer = {a.index for a in hook.args if a.type in ("string", "char_buf")}
    fields = [Field(f"arg{i}", "char *" if i in pointer else "u64") for i in range(uprobes.MAX_ARGS)]
    check_indexes(g, hook, fields, f"uprobe {target.symbol or hex(target.offset)}")
    where = f"{target.path}:{target.symbol}" if target.symbol else f"{target.path}"
    if target.usdt:
        n = 1 + len(target.more_offsets)
        return (Source("uprobe", fields, target=target), target.symbol,
                f"usdt {target.usdt} in {target.path} (uprobe at {n} location{'s' if n > 1 else ''}, "
                f"first +{target.offset:#x}"
                + (f", semaphore +{target.ref_ctr_offset:#x} counted by the kernel" if target.ref_ctr_offset else "")
                + ")")
    if target.in_container:
        return (Source("uprobe", fields, target=target), target.symbol,
                f"uprobe {where} in each selected container's root, attached as containers appear")
    return (Source("uprobe", fields, target=target), target.symbol,
            f"uprobe {where}+{target.offset:#x}"
            + (f", reference counter +{target.ref_ctr_offset:#x}" if target.ref_ctr_offset else ""))


def check_indexes(g: ProgramGen, hook: Hook, fields: list[Field], what: str) -> None:
    names = ", ".join(f.name for f in fields) or "none"
    for a in hook.args:
        if a.index >= len(fields):
            raise g.fail(f"{a.path}.index", f"{what} has {len(fields)} arguments ({names}): "
                                            f"index {a.index} is out of range")
        if a.size_arg_index and a.size_arg_index > len(fields):
            raise g.fail(f"{a.path}.sizeArgIndex", f"{what} has {len(fields)} arguments ({names}): "
                                                   f"sizeArgIndex {a.size_arg_index} (from 1) is out of range")
