"""Tetragon's enforcers: ``spec.enforcers`` (and the older ``spec.killers``) with the
``NotifyEnforcer`` (``NotifyKiller``) action.

A selector's NotifyEnforcer marks the current thread with its ``argError``/``argSig``; an
enforcer program on each listed call (kernel function, or syscall by its wrapper) looks the
thread up, takes the mark and makes the call return the error and/or sends the signal. Marks live
in an LRU hash keyed by thread (a mark whose thread never reaches a listed call ages out).

Where the kernel can change a listed call's return value (BPF LSM on the security_* hook,
fmod_ret on security_* or error-injectable functions, bpf_override_return; collector/policy/
mechanism.py ``override_row``) that is the program. Where it cannot for some call (Debian's kernels
have no error injection, so no syscall wrapper; this build machine has no trampolines), the
policy loads **signal-only** if every NotifyEnforcer carries argSig and either no argError or
SIGKILL (a killed process never sees the call's return value): the signal is sent at the notifying
hook, in the thread, before the call runs; the call itself still runs (said at load). Otherwise
the argError is refused with the reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from collector import btf_funcs
from collector.policy import mechanism
from collector.policy.argtypes import syscall_name
from collector.policy.model import Action, Enforcer, Hook
from collector.policy.yamldoc import Ctx

if TYPE_CHECKING:
    from collector.policy.compiler import ProgramGen

MARKS_MAX = 32768
MARKS_DECL = ("struct tp_enf { u32 err; u32 sig; };  /* err: the errno, positive */\n"
              f'BPF_TABLE("lru_hash", u64, struct tp_enf, enforcer_marks, {MARKS_MAX});  '
              "/* thread → its NotifyEnforcer (collector/policy/enforcers.py) */")
ENFORCE_C = ("{{\n    u64 eid = bpf_get_current_pid_tgid();\n"
             "    struct tp_enf *e = enforcer_marks.lookup(&eid);\n"
             "    if (e) {{\n        if (e->sig)\n            bpf_send_signal(e->sig);\n"
             "{errors}        enforcer_marks.delete(&eid);\n    }}\n}}")
# the errno as constants (the policy's argErrors): the verifier checks LSM/fmod_ret returns to be
# -4095..0 and loses the bounds of a value negated at run time


# ---- parsing (called by collector/policy/parser.py) ---------------------------------------------

def parse(c: Ctx, spec: dict[str, Any], lists: dict[str, tuple[str, list[str]]], hooks: list[Hook]) -> list[Enforcer]:
    out: list[Enforcer] = []
    for key, calls_key in (("enforcers", "calls"), ("killers", "syscalls")):
        for i, raw in enumerate(c.seq(spec.get(key), f"spec.{key}")):
            p = f"spec.{key}[{i}]"
            m = c.mapping(raw, p, {calls_key})
            names: list[str] = []
            for j, v in enumerate(c.seq(m.get(calls_key), f"{p}.{calls_key}")):
                name = c.string(v, f"{p}.{calls_key}[{j}]", required=True)
                if name.startswith("list:"):
                    kind, values = lists.get(name[5:], ("", []))
                    if not values:
                        raise c.fail(f"{p}.{calls_key}[{j}]", f"no list named {name[5:]!r} in spec.lists")
                    names += [function_of(n, kind == "syscalls" or key == "killers") for n in values]
                else:
                    names.append(function_of(name, key == "killers"))
            if not names:
                raise c.fail(f"{p}.{calls_key}", "an enforcer needs at least one call")
            out.append(Enforcer(list(dict.fromkeys(names)), p))
    notify = [a for h in hooks for s in h.selectors for a in s.match_actions if a.action == "NotifyEnforcer"]
    if notify and not out:
        raise c.fail(f"{notify[0].path}.action", "NotifyEnforcer needs spec.enforcers (the calls it acts on)")
    if out and not notify:
        c.notices.append(f"{out[0].path}: no NotifyEnforcer action marks a thread: the enforcer never acts")
    return out


def function_of(name: str, syscall: bool) -> str:
    """The kernel function an enforcer attaches to: a syscall by its x86-64 wrapper
    (``sys_dup``, ``dup`` → ``__x64_sys_dup``), a name already spelled as a function
    (``__ia32_sys_dup``, ``security_socket_connect``) as it is."""
    if name.startswith("__") or (not syscall and not name.startswith("sys_")):
        return name
    return mechanism.SYSCALL_WRAPPER + syscall_name(name)


def action_args(c: Ctx, fm: dict[str, Any], a: Action, p: str) -> None:
    """NotifyEnforcer's argError (a negative errno) and argSig (1 to 64); at least one."""
    a.arg_error = c.integer(fm.get("argError"), f"{p}.argError", 0)
    a.arg_sig = c.integer(fm.get("argSig"), f"{p}.argSig", 0)
    if not a.arg_error and not a.arg_sig:
        raise c.fail(p, "NotifyEnforcer needs argError and/or argSig")
    if a.arg_error > 0 or a.arg_error < -4095:
        raise c.fail(f"{p}.argError", f"argError {a.arg_error} is not a negative errno (-1 to -4095)")
    if not 0 <= a.arg_sig <= 64:
        raise c.fail(f"{p}.argSig", f"signal {a.arg_sig} out of range (1 to 64)")


# ---- compiling (called by collector/policy/compiler.py) -----------------------------------------

def prepare(g: ProgramGen) -> None:
    """Before the hooks: how the policy's enforcers are served (``g.enforce``: "" none, "mark" or
    "signal"), refused with the reason where neither can serve."""
    pol = g.policy
    g.enforce, g.enforce_rows = "", []
    if not pol.enforcers:
        return
    notify = [a for h in pol.hooks for s in h.selectors for a in s.match_actions if a.action == "NotifyEnforcer"]
    if not notify:
        return
    funcs = btf_funcs.vmlinux() if g.features.btf else None
    missing: list[tuple[str, str]] = []
    for e in pol.enforcers:
        for func in e.calls:
            if funcs is not None and funcs.proto(func) is None:
                raise g.fail(f"{e.path}", f"enforcer call {func!r} is not in this kernel's BTF (no such function)")
            r, why, lsm_hook = mechanism.override_row(g, func)
            if r is None:
                reason = mechanism.NO_OVERRIDE if not g.features.release else "; ".join(why)
                missing.append((func, reason))
            else:
                g.enforce_rows.append((r.mechanism, lsm_hook if r.mechanism == "lsm" else func))
    if not missing:
        g.enforce = "mark"
        g.pending_maps.append(MARKS_DECL)
        return
    for a in notify:
        if not a.arg_sig or (a.arg_error and a.arg_sig != 9):
            what = "argError" if a.arg_error else "the action"
            raise g.fail(f"{a.path}.{'argError' if a.arg_error else 'action'}",
                         f"NotifyEnforcer: {what} cannot be served: the enforcer cannot change the return "
                         f"value of {_said(missing)}")
    g.enforce = "signal"
    g.enforce_rows = []
    g.notices.append(f"{pol.enforcers[0].path}: served signal-only: no program can change the return value of "
                     f"{_said(missing)}; each NotifyEnforcer sends its argSig at the notifying hook, in the "
                     "thread, before the call runs (the call itself still runs; with SIGKILL the process never "
                     "sees its result)")


def _said(missing: list[tuple[str, str]]) -> str:
    return f"{', '.join(f for f, _ in missing)} ({missing[0][1]})"


def notify_c(g: ProgramGen, sel: int, a: Action) -> str:
    """The NotifyEnforcer effect of selector ``sel`` in the hook function."""
    if g.monitor:
        return ""
    if g.enforce == "signal":
        return f"if (sel == {sel}) {{ bpf_send_signal({a.arg_sig}); }}"
    return (f"if (sel == {sel}) {{\n    struct tp_enf e = {{.err = {-a.arg_error}, .sig = {a.arg_sig}}};\n"
            "    u64 eid = bpf_get_current_pid_tgid();\n    enforcer_marks.update(&eid, &e);\n}")


def programs(g: ProgramGen) -> None:
    """After the hooks: the enforcer statement in each listed call's program (appended: a hook
    sharing that program marks first, so a mark made at the call is taken at the same call)."""
    errnos = sorted({-a.arg_error for h in g.policy.hooks for s in h.selectors for a in s.match_actions
                     if a.action == "NotifyEnforcer" and a.arg_error})
    errors = "".join(f"        {'else ' if i else ''}if (e->err == {n})\n            ovr = -{n};\n"
                     for i, n in enumerate(errnos))
    for mech, func in dict.fromkeys(g.enforce_rows):
        if mech == "kprobe+bpf_override_return" and ("kprobe", func) in g.kfuncs:
            raise g.fail(g.policy.enforcers[0].path, f"the enforcer on {func} needs an overriding kprobe and a hook of "
                                                     "the policy already has a plain kprobe there (one per function)")
        g.kfuncs.setdefault((mech, func), []).append(ENFORCE_C.format(errors=errors))
        g.notices.append(f"enforcer on {func}: {mech}")
