"""``spec.rawtracepoints`` (and ``tracepoints[].raw: true``): a raw tracepoint whose arguments
are its ``TP_PROTO`` arguments, by position (Tetragon's numbering: index 0 is the first argument
after the tracepoint's hidden ``void *__data``), typed from the kernel's BTF
(``typedef void (*btf_trace_<event>)(void *, ...)``). Served as a raw tracepoint program
(``RAW_TRACEPOINT_PROBE``: ``ctx->args[i]``); pointers are read with ``bpf_probe_read_kernel``
as for kprobes, so BTF is needed only to type the arguments."""

from __future__ import annotations

from typing import TYPE_CHECKING

from collector import btf_funcs
from collector.policy.argtypes import Field
from collector.policy.mechanism import Source, check_indexes
from collector.policy.model import Hook

if TYPE_CHECKING:
    from collector.policy.compiler import ProgramGen


def proto_fields(funcs: btf_funcs.BtfFuncs, event: str) -> list[Field] | None:
    """The tracepoint's TP_PROTO arguments (without ``__data``), None if BTF has no such one."""
    for kind, name, rest in funcs.types.values():
        if kind == "TYPEDEF" and name == f"btf_trace_{event}":
            ptr = funcs._type_id(rest)
            pkind, _, prest = funcs.types.get(ptr, ("?", "", ""))
            proto = funcs._type_id(prest) if pkind == "PTR" else 0
            if funcs.types.get(proto, ("?",))[0] != "FUNC_PROTO":
                return None
            params = funcs.members.get(proto, [])[1:]
            return [Field(n if n and n != "(anon)" else f"arg{i}", funcs.ctype(t)) for i, (n, t) in enumerate(params)]
    return None


def source(g: ProgramGen, hook: Hook) -> tuple[Source, str, str]:
    p = hook.path
    if not g.features.btf:
        raise g.fail(f"{p}.event", "raw tracepoint arguments are typed from BTF, which this kernel lacks")
    funcs = btf_funcs.vmlinux()
    fields = proto_fields(funcs, hook.event) if funcs is not None else None
    if fields is None:
        raise g.fail(f"{p}.event", f"no raw tracepoint {hook.event} in this kernel's BTF "
                                   f"(no btf_trace_{hook.event})")
    if hook.return_:
        raise g.fail(f"{p}.return", "a raw tracepoint has no return value")
    check_indexes(g, hook, fields, f"raw tracepoint {hook.event}")
    return Source("kfunc", fields, mech="rawtp", func=hook.event), hook.event, f"raw tracepoint {hook.event}"
