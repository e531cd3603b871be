"""One ``matchActions`` entry of a selector → :class:`Action` (collector/policy/parser.py)."""

from __future__ import annotations

import re
from typing import Any

from collector.policy import enforcers, tetragon_actions
from collector.policy.model import ACTIONS, Action, Hook
from collector.policy.yamldoc import Ctx

ACTION_KEYS = {"action", "argError", "argSig", "argUrl", "argFqdn", "argSock", "argIndex", "argValue",
               "argRegs", "argNewSymbol", "argNewAddr", "argNewOffset", "rateLimit", "rateLimitScope",
               "kernelStackTrace", "userStackTrace", "imaHash", "argFd", "argName"}


def action(c: Ctx, raw: Any, p: str, hook: Hook) -> Action:
    fm = c.mapping(raw, p, ACTION_KEYS)
    name = c.string(fm.get("action"), f"{p}.action", required=True)
    name = next((a for a in ACTIONS if a.lower() == name.lower()), name)   # Tetragon: any case
    name = "NotifyEnforcer" if name.lower() == "notifykiller" else name   # the spec.killers spelling
    if name not in ACTIONS:
        raise c.fail(f"{p}.action", f'unknown action "{name}"')
    a = Action(name, path=p)
    if name == "Signal":
        a.arg_sig = c.integer(fm.get("argSig"), f"{p}.argSig")
        if not 1 <= a.arg_sig <= 64:
            raise c.fail(f"{p}.argSig", f"signal {a.arg_sig} out of range (1 to 64)")
    if name == "Override":
        a.arg_error = c.integer(fm.get("argError"), f"{p}.argError")
    if name == "NotifyEnforcer":
        enforcers.action_args(c, fm, a, p)
    if name in ("FollowFD", "UnfollowFD", "CopyFD"):
        a.arg_fd = c.integer(fm.get("argFd"), f"{p}.argFd", 0)
        a.arg_name = c.integer(fm.get("argName"), f"{p}.argName", 0)
        for k, v in (("argFd", a.arg_fd), ("argName", a.arg_name)):
            if k in fm and hook.arg(v) is None:
                raise c.fail(f"{p}.{k}", f"no argument with index {v} in args")
    if name == "GetUrl":
        a.arg_url = tetragon_actions.parse_url(c, fm.get("argUrl"), f"{p}.argUrl")
    if name == "DnsLookup":
        a.arg_fqdn = tetragon_actions.parse_fqdn(c, fm.get("argFqdn"), f"{p}.argFqdn")
    if name in ("TrackSock", "UntrackSock"):
        a.arg_sock = c.integer(fm.get("argSock"), f"{p}.argSock", 0)
        if hook.arg(a.arg_sock) is None:
            raise c.fail(f"{p}.argSock", f"no argument with index {a.arg_sock} in args")
    if fm.get("rateLimit") is not None:
        a.rate_limit = c.string(fm.get("rateLimit"), f"{p}.rateLimit")
        if name != "Post":
            raise c.fail(f"{p}.rateLimit", "rateLimit applies to Post only")
        # Tetragon's parseRateLimit: digits (a u32), then s, m or h in either case (none: seconds);
        # it refuses anything else ("5/minute", "30/60s"), and so do we
        m = re.fullmatch(r"(\d+)[smhSMH]?", a.rate_limit)
        if not m or int(m.group(1)) > 0xFFFFFFFF:
            raise c.fail(f"{p}.rateLimit", f"{a.rate_limit!r} is not a duration like 30s, 5m, 1h "
                                           "(Tetragon's parser refuses it too)")
    if fm.get("rateLimitScope") is not None:
        a.rate_limit_scope = c.choice(fm.get("rateLimitScope"), f"{p}.rateLimitScope",
                                      ("thread", "process", "global"), "rateLimitScope")
    for k, attr in (("kernelStackTrace", "kernel_stack_trace"), ("userStackTrace", "user_stack_trace")):
        if fm.get(k) is None:
            continue
        setattr(a, attr, c.boolean(fm.get(k), f"{p}.{k}"))
        if getattr(a, attr) and name != "Post":
            raise c.fail(f"{p}.{k}", f"{k} applies to Post only")
        if getattr(a, attr) and hook.kind != "kprobe":
            raise c.fail(f"{p}.{k}", f"{k} is served on kprobes only (Tetragon's process_kprobe carries "
                                     f"stack traces, its process_{hook.kind} events have no place for them)")
    if fm.get("imaHash"):
        raise c.fail(f"{p}.imaHash", "imaHash is not supported by tetrapipe")
    return a
