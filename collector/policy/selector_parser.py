"""One ``selectors[i]`` entry of a hook → :class:`Selector` (called by collector/policy/parser.py;
``matchActions`` entries: collector/policy/action_parser.py)."""

from __future__ import annotations

from typing import Any

from bpf.names import CAPABILITIES
from collector.policy import action_parser, netsel, tetragon_compat
from collector.policy.model import (
    ARG_OPERATORS,
    BINARY_OPERATORS,
    CAP_TYPES,
    DATA_BASE,
    FILE_TYPES,
    NAMESPACES,
    PID_OPERATORS,
    SET_OPERATORS,
    STRING_TYPES,
    ArgFilter,
    BinaryFilter,
    CapabilityFilter,
    Hook,
    NamespaceChangeFilter,
    NamespaceFilter,
    PidFilter,
    Selector,
)
from collector.policy.yamldoc import Ctx as _Ctx
from collector.policy.yamldoc import kind as _kind

SELECTOR_KEYS = {"matchArgs", "matchData", "matchReturnArgs", "matchPIDs", "matchBinaries",
                 "matchBinarys", "matchParentBinaries", "matchNamespaces", "matchCapabilities",
                 "matchNamespaceChanges", "matchCapabilityChanges", "matchActions",
                 "matchReturnActions", "matchWorkloads"}
# arguments whose values are names (compared as strings or resolved to files), not numbers
STRING_VALUED = STRING_TYPES | FILE_TYPES | {"char_buf", "char_iovec", "dentry", "linux_binprm", "kiocb", "dns"}


def values(c: _Ctx, m: dict[str, Any], path: str) -> list[str]:
    vals = c.seq(m.get("values"), f"{path}.values")
    out = []
    for i, v in enumerate(vals):
        if isinstance(v, dict | list):
            raise c.fail(f"{path}.values[{i}]", f"expected a scalar, got {_kind(v)}")
        out.append(str(v).lower() if isinstance(v, bool) else str(v))
    return out


def whole_names(vals: list[str]) -> list[str]:
    """Tetragon's library ends a whole-name value in a NUL ("/etc/passwd\\0", the C string's end):
    it is no part of the name, so the compiler's string and inode sets, the uncaught-road counter and
    the warnings all see the clean name. Only for name-valued arguments and binaries: an integer
    value with a NUL stays refused."""
    return [v.removesuffix("\0") for v in vals]


def selector(c: _Ctx, raw: Any, path: str, hook: Hook) -> Selector:
    m = c.mapping(raw, path, SELECTOR_KEYS)
    s = Selector(path=path)
    if "matchBinarys" in m:
        c.notices.append(f"{path}.matchBinarys: read as matchBinaries (legacy spelling)")
        if "matchBinaries" in m:
            raise c.fail(f"{path}.matchBinarys", "both matchBinaries and matchBinarys given")
    for key in ("matchWorkloads",):
        if m.get(key):
            raise c.fail(f"{path}.{key}", f"{key} is not supported by tetrapipe")
    for kind in ("matchArgs", "matchReturnArgs", "matchData"):
        for i, f in enumerate(c.seq(m.get(kind), f"{path}.{kind}")):
            p = f"{path}.{kind}[{i}]"
            fm = c.mapping(f, p, {"index", "operator", "values", "args"})
            if fm.get("args"):
                raise c.fail(f"{p}.args", "multi-argument filters are not supported by tetrapipe")
            op = c.string(fm.get("operator"), f"{p}.operator", required=True)
            op = netsel.OPERATOR_ALIASES.get(op, op)   # Tetragon also takes "family", "state", ...
            if op not in ARG_OPERATORS:
                raise c.fail(f"{p}.operator", f'unknown operator "{op}"')
            idx = c.integer(fm.get("index"), f"{p}.index", 0)
            vals = values(c, fm, p)
            if not vals:
                raise c.fail(f"{p}.values", "at least one value is needed")
            if kind == "matchData":   # data entry idx: ArgSpec index DATA_BASE + idx (arg_parser.data)
                if not 0 <= idx < len(hook.data):
                    raise c.fail(f"{p}.index", f"no data entry with index {idx} (the hook has {len(hook.data)})")
                idx += DATA_BASE
            if kind == "matchArgs" and hook.kind == "tracepoint" and hook.arg(idx) is None and idx < len(hook.args):
                # Tetragon's tracepoint selectors may count the declared args (index 0: the first)
                c.notices.append(f"{p}.index: {idx} names no declared argument: read as args[{idx}] "
                                 f"(index {hook.args[idx].index})")
                idx = hook.args[idx].index
            if kind == "matchArgs" and (hook.arg(idx) is None or idx >= DATA_BASE):
                declared = ", ".join(str(a.index) for a in hook.args) or "none"
                raise c.fail(f"{p}.index", f"no argument with index {idx} in args (declared: {declared})")
            if kind == "matchReturnArgs" and not hook.return_:
                raise c.fail(p, "matchReturnArgs needs return: true on the hook")
            arg = hook.return_arg if kind == "matchReturnArgs" else hook.arg(idx)
            if arg is not None and arg.type in STRING_VALUED:
                vals = whole_names(vals)
            if op == "Capability":   # any of the named bits of a kernel_cap_t: a Mask
                op, vals = "Mask", [tetragon_compat.capability_mask(c, vals, hook.arg(idx), p)]
            (s.match_return_args if kind == "matchReturnArgs" else s.match_args).append(ArgFilter(idx, op, vals, p))
    for i, f in enumerate(c.seq(m.get("matchPIDs"), f"{path}.matchPIDs")):
        p = f"{path}.matchPIDs[{i}]"
        fm = c.mapping(f, p, {"operator", "values", "followForks", "isNamespacePID"})
        op = c.choice(fm.get("operator"), f"{p}.operator", PID_OPERATORS, "operator")
        vals = [c.integer(v, f"{p}.values[{j}]") for j, v in enumerate(c.seq(fm.get("values"), f"{p}.values"))]
        if not vals:
            raise c.fail(f"{p}.values", "at least one pid is needed")
        s.match_pids.append(PidFilter(op, vals, c.boolean(fm.get("followForks"), f"{p}.followForks"),
                                      c.boolean(fm.get("isNamespacePID"), f"{p}.isNamespacePID"), p))
    for key, target in (("matchBinaries", s.match_binaries), ("matchBinarys", s.match_binaries),
                        ("matchParentBinaries", s.match_parent_binaries)):
        for i, f in enumerate(c.seq(m.get(key), f"{path}.{key}")):
            p = f"{path}.{key}[{i}]"
            fm = c.mapping(f, p, {"operator", "values", "followChildren"})
            op = c.choice(fm.get("operator"), f"{p}.operator", BINARY_OPERATORS, "operator")
            vals = whole_names(values(c, fm, p))
            if not vals:
                raise c.fail(f"{p}.values", "at least one binary is needed")
            target.append(BinaryFilter(op, vals, c.boolean(fm.get("followChildren"), f"{p}.followChildren"), p))
    for i, f in enumerate(c.seq(m.get("matchNamespaces"), f"{path}.matchNamespaces")):
        p = f"{path}.matchNamespaces[{i}]"
        fm = c.mapping(f, p, {"namespace", "operator", "values"})
        ns = c.choice(fm.get("namespace"), f"{p}.namespace", NAMESPACES, "namespace")
        op = c.choice(fm.get("operator"), f"{p}.operator", SET_OPERATORS, "operator")
        vals = values(c, fm, p)
        for j, v in enumerate(vals):
            if v != "host_ns" and not v.isdigit():
                raise c.fail(f"{p}.values[{j}]", f"{v!r} is neither an inode number nor host_ns")
        s.match_namespaces.append(NamespaceFilter(ns, op, vals, p))
    for key, target in (("matchCapabilities", s.match_capabilities),
                        ("matchCapabilityChanges", s.match_capability_changes)):
        for i, f in enumerate(c.seq(m.get(key), f"{path}.{key}")):
            p = f"{path}.{key}[{i}]"
            fm = c.mapping(f, p, {"type", "operator", "values", "isNamespaceCapability"})
            t = c.choice(fm.get("type") or "Effective", f"{p}.type", CAP_TYPES, "capability type")
            op = c.choice(fm.get("operator"), f"{p}.operator", SET_OPERATORS, "operator")
            vals = values(c, fm, p)
            for j, v in enumerate(vals):
                if v.upper() not in CAPABILITIES:
                    raise c.fail(f"{p}.values[{j}]", f'unknown capability "{v}"')
            target.append(CapabilityFilter(t, op, [v.upper() for v in vals],
                                           c.boolean(fm.get("isNamespaceCapability"), f"{p}.isNamespaceCapability"), p))
    for i, f in enumerate(c.seq(m.get("matchNamespaceChanges"), f"{path}.matchNamespaceChanges")):
        p = f"{path}.matchNamespaceChanges[{i}]"
        fm = c.mapping(f, p, {"operator", "values"})
        op = c.choice(fm.get("operator"), f"{p}.operator", SET_OPERATORS, "operator")
        vals = values(c, fm, p)
        for j, v in enumerate(vals):
            if v not in NAMESPACES:
                raise c.fail(f"{p}.values[{j}]", f'unknown namespace "{v}" (one of {", ".join(NAMESPACES)})')
        s.match_namespace_changes.append(NamespaceChangeFilter(op, vals, p))
    for key, target in (("matchActions", s.match_actions), ("matchReturnActions", s.match_return_actions)):
        for i, f in enumerate(c.seq(m.get(key), f"{path}.{key}")):
            target.append(action_parser.action(c, f, f"{path}.{key}[{i}]", hook))
    return s
