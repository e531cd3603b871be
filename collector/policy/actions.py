"""Checks of a hook's matchActions (what tetrapipe can enforce where), and Override on
``tcp_connect`` turned into a cgroup/connect4+6 rule."""

from __future__ import annotations

from typing import TYPE_CHECKING

from collector import connect_deny
from collector.policy.hookfn import ACTION_RANK
from collector.policy.mechanism import Source
from collector.policy.model import Hook, Selector

if TYPE_CHECKING:
    from collector.policy.compiler import ProgramGen


def connect_rule(g: ProgramGen, hook: Hook, s: Selector, hid: int, index: int) -> None:
    """Override on tcp_connect: the selector becomes a cgroup/connect4+6 rule (EPERM)."""
    other = (s.match_pids or s.match_parent_binaries or s.match_namespaces or s.match_capabilities
             or s.match_namespace_changes or s.match_capability_changes or s.match_return_args)
    if other:
        raise g.fail(s.path, "an Override on tcp_connect is enforced by cgroup/connect4 and "
                             "connect6 programs, which check only socket matchArgs and matchBinaries")
    try:
        rule = connect_deny.rule_from_selector(s.match_args, s.match_binaries)
    except connect_deny.RuleError as exc:
        raise g.fail(s.path, f"Override on tcp_connect: {exc}") from None
    # each refusal is reported as this policy's tcp_connect event unless the selector says NoPost
    rule.policy_id, rule.hook_id, rule.selector = g.policy_id, hid, index
    rule.post = not any(a.action == "NoPost" for a in s.match_actions)
    override = next(a for a in s.match_actions if a.action == "Override")
    rule.error = override.arg_error or -1   # argError (0 or absent: EPERM, as the kernel's default)
    try:
        rule.check()
    except connect_deny.RuleError as exc:
        raise g.fail(f"{override.path}.argError", f"Override on tcp_connect: {exc}") from None
    g.connect_rules.append(rule)


TP_ANCESTORS = 64   # bpf/policy.h: ancestors walked by matchPIDs followForks (beside the fork-time marks)
# socket hooks whose tracepoint fires outside the process that owns the socket
PROCESS_FILTERS = (("match_pids", "matchPIDs"), ("match_binaries", "matchBinaries"),
                   ("match_parent_binaries", "matchParentBinaries"), ("match_namespaces", "matchNamespaces"),
                   ("match_capabilities", "matchCapabilities"),
                   ("match_namespace_changes", "matchNamespaceChanges"),
                   ("match_capability_changes", "matchCapabilityChanges"))
OUTSIDE_PROCESS_CONTEXT = {"tcp_close": "sock:inet_sock_set_state (often softirq: RST, timeouts, FIN)"}


def check_actions(g: ProgramGen, hook: Hook, hid: int, src: Source) -> None:
    for index, s in enumerate(hook.selectors):
        if hook.kind == "kprobe" and hook.call == "tcp_connect" and any(
                a.action == "Override" for a in s.match_actions):
            connect_rule(g, hook, s, hid, index)
        for a in s.match_actions + s.match_return_actions:
            if a.action == "Override" and hook.kind == "kprobe" and hook.call == "tcp_connect":
                continue
            if a.action == "Override" and not src.override:
                raise g.fail(f"{a.path}.action", f"Override cannot be served at {hook.call or hook.event}: "
                                                 f"{src.kind} hooks cannot change a return value")
            if a.action not in ACTION_RANK:
                raise g.fail(f"{a.path}.action", f"action {a.action} is not supported by tetrapipe")
        for a in s.match_actions:
            if a.rate_limit:
                g.notices.append(f"{a.path}.rateLimit: one event per {a.rate_limit} per hook, selector and "
                                 f"{a.rate_limit_scope or 'thread'} (not per distinct argument values)")
        if s.match_return_actions:
            raise g.fail(f"{s.path}.matchReturnActions", "matchReturnActions is not supported by tetrapipe yet")
        for b in s.match_parent_binaries:
            if b.follow_children:
                raise g.fail(f"{b.path}.followChildren", "followChildren applies to matchBinaries only")
        for b in s.match_binaries:
            if b.follow_children:
                g.notices.append(f"{b.path}.followChildren: descendants of processes that exec a matching "
                                 "binary after the policy loaded are followed")
        for pf in s.match_pids:
            if pf.follow_forks and pf.operator == "NotIn":
                g.notices.append(f"{pf.path}: followForks with NotIn checks the process itself")
        if (hook.return_ or s.match_return_args) and any(a.action in ("Sigkill", "Signal")
                                                         for a in s.match_actions):
            g.notices.append(f"{s.path}: the signal of a selector on a return hook (or with matchReturnArgs) "
                             "is sent at the syscall's exit: the call has taken effect; the process dies "
                             "before it returns to user space")
        if hook.kind == "kprobe" and hook.call in OUTSIDE_PROCESS_CONTEXT:
            for key, yaml_key in PROCESS_FILTERS:
                if getattr(s, key):
                    raise g.fail(f"{s.path}.{yaml_key}", f"{yaml_key} cannot be served on {hook.call}: it runs in "
                                 f"{OUTSIDE_PROCESS_CONTEXT[hook.call]} and would judge whatever task the CPU "
                                 "was running (the event names the socket's owner instead)")
            for a in s.match_actions:
                if a.action in ("Sigkill", "Signal"):
                    raise g.fail(f"{a.path}.action", f"{a.action} cannot be served on {hook.call}: it runs in "
                                 f"{OUTSIDE_PROCESS_CONTEXT[hook.call]}, outside the socket owner's process "
                                 "context, so the signal would hit whatever task the CPU was running")
