"""BTF field walks: Tetragon's ``resolve:`` (arguments and ``data:`` entries) and ``extractParam:``
(with ``overwriteType:``), e.g. ``mm.owner.real_parent.real_parent.comm`` from a
``struct linux_binprm *`` or ``cred.euid.val`` from the current task.

Each step is checked against the kernel's BTF at load: the member must exist in the struct (or
in its anonymous structs/unions, as C reaches it); a pointer member is followed (one kernel read),
an embedded struct is stepped into (an address, no read). An unknown member is refused with the
YAML path and the struct's name. The chain becomes C over the BTF-generated headers, one
``TP_RD`` (bpf_probe_read_kernel) per pointer hop: a NULL pointer on the way reads as 0, so the
value is 0 (or the empty string), never a fault. The walked value replaces the argument in the
hook's ``a[]`` before the hook function runs (data entries at ``a[DATA_BASE + k]``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from collector import btf_funcs
from collector.policy.argtypes import Field
from collector.policy.csrc import indent
from collector.policy.model import DATA_BASE, INT_TYPES, STRING_TYPES, ArgSpec, Hook

if TYPE_CHECKING:
    from collector.policy.hookfn import HookGen

SKIP = ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG")
MAX_STEPS = 16


class WalkError(ValueError):
    pass


@dataclass
class Walk:
    c: str            # statements: u64 ``p`` (the start address) → the value
    field: Field      # what the hook function sees in place of the argument


def _strip(funcs: btf_funcs.BtfFuncs, tid: int) -> tuple[int, str]:
    """(the type behind typedefs and qualifiers, the typedef name met first or "")."""
    name = ""
    for _ in range(16):
        kind, n, rest = funcs.types.get(tid, ("?", "", ""))
        if kind not in SKIP:
            break
        if kind == "TYPEDEF" and not name:
            name = n
        tid = funcs._type_id(rest)
    return tid, name


def _member(funcs: btf_funcs.BtfFuncs, tid: int, name: str, depth: int = 0) -> int | None:
    for mname, mt in funcs.members.get(tid, []):
        if mname == name:
            return mt
        if mname in ("", "(anon)") and depth < 4:
            inner, _ = _strip(funcs, mt)
            if funcs.types.get(inner, ("", "", ""))[0] in ("STRUCT", "UNION"):
                found = _member(funcs, inner, name, depth + 1)
                if found is not None:
                    return found
    return None


def _ctype(funcs: btf_funcs.BtfFuncs, tid: int) -> str:
    rt, _ = _strip(funcs, tid)
    kind, _, rest = funcs.types.get(rt, ("?", "", ""))
    if kind == "ARRAY":
        n = re.search(r"nr_elems=(\d+)", rest)
        return f"{funcs.ctype(funcs._type_id(rest))}[{n.group(1) if n else ''}]"
    return funcs.ctype(tid)


def _cast(funcs: btf_funcs.BtfFuncs, tid: int, typedef: str) -> str:
    kind, name, _ = funcs.types[tid]
    if name and name != "(anon)":
        return f"{kind.lower()} {name}"
    if typedef:
        return typedef
    raise WalkError("an anonymous struct without a type name")


def start_of(funcs: btf_funcs.BtfFuncs, ctype: str, btf_type: str) -> tuple[int, str]:
    """(BTF id, C cast) of the struct a walk starts in: ``btfType`` or the argument's pointer type."""
    base = (btf_type or ctype).replace("const ", "").replace("*", "").strip()
    if base.startswith(("struct ", "union ")):
        base = base.split(" ", 1)[1]
    tid = funcs.struct_id(base)
    if tid is None:
        raise WalkError(f"the walk starts from {btf_type or ctype}, not a pointer to a struct this kernel's "
                        "BTF has (btfType names one)")
    return tid, _cast(funcs, tid, "")


def walk(funcs: btf_funcs.BtfFuncs, start_ctype: str, chain: str, arg: ArgSpec) -> Walk:
    """The C walking ``chain`` from a ``start_ctype`` pointer held in ``p``; WalkError says why not."""
    tid, cast = start_of(funcs, start_ctype, arg.btf_type)
    steps = chain.split(".")
    if len(steps) > MAX_STEPS:
        raise WalkError(f"{len(steps)} members: at most {MAX_STEPS}")
    lines: list[str] = []
    for i, m in enumerate(steps):
        where = f"{cast} (at {'.'.join(steps[:i]) or 'the start'})"
        mt = _member(funcs, tid, m)
        if mt is None:
            raise WalkError(f"{where} has no member {m!r}")
        rt, typedef = _strip(funcs, mt)
        kind = funcs.types.get(rt, ("?", "", ""))[0]
        access = f"(({cast} *)p)->{m}"
        if i == len(steps) - 1:
            return _last(funcs, lines, (cast, m), rt, kind, arg, chain)
        if kind == "PTR":
            target, tdef = _strip(funcs, funcs._type_id(funcs.types[rt][2]))
            if funcs.types.get(target, ("?", "", ""))[0] not in ("STRUCT", "UNION"):
                raise WalkError(f"member {m!r} of {where} is {_ctype(funcs, mt)}, not a pointer to a struct: "
                                "the walk cannot go further")
            lines.append(f"TP_RD(p, {access});")
            tid, cast = target, _cast(funcs, target, tdef)
        elif kind in ("STRUCT", "UNION"):
            lines.append(f"p = (u64)&{access};")
            tid, cast = rt, _cast(funcs, rt, typedef)
        else:
            raise WalkError(f"member {m!r} of {where} is {_ctype(funcs, mt)}, not a struct or a pointer to one: "
                            "the walk cannot go further")
    raise WalkError("an empty member chain")


def _last(funcs: btf_funcs.BtfFuncs, lines: list[str], at: tuple[str, str], rt: int, kind: str, arg: ArgSpec,
          chain: str) -> Walk:
    ctype = _ctype(funcs, rt)
    cast, m = at
    access = f"(({cast} *)p)->{m}"
    if kind in ("INT", "ENUM", "ENUM64"):
        if arg.type not in INT_TYPES:
            raise WalkError(f"{chain} is {ctype}: read it as an integer type, not {arg.type}")
        lines.append(f"{{ __typeof__((({cast} *)0)->{m}) v = 0; TP_RD(v, {access}); p = (u64)v; }}")
        return Walk("\n".join(lines), Field(chain, "u64"))
    if kind == "ARRAY":
        if arg.type not in STRING_TYPES:
            raise WalkError(f"{chain} is an array ({ctype}): read it as a string (overwriteType: string)")
        lines.append(f"p = (u64)&{access};")
        return Walk("\n".join(lines), Field(chain, "char *"))
    if kind == "PTR":
        lines.append(f"TP_RD(p, {access});")
        return Walk("\n".join(lines), Field(chain, "u64" if arg.type in INT_TYPES else ctype))
    if kind in ("STRUCT", "UNION") and arg.type not in INT_TYPES | STRING_TYPES:
        lines.append(f"p = (u64)&{access};")
        return Walk("\n".join(lines), Field(chain, ctype + " *"))
    raise WalkError(f"{chain} is {ctype}: a {arg.type} cannot be read from it")


def hook_fills(h: HookGen) -> str:
    """C filling ``a[]`` with the walked values of the hook's resolve/extractParam arguments and
    data entries (data first: an entry may start from an argument a walk then replaces)."""
    walks = h.hook.data + [a for a in h.hook.args if a.resolve]
    if not walks:
        return ""
    src = h.src
    first = walks[0]
    what = "data entries" if first.index >= DATA_BASE else "resolve/extractParam"
    if src.kind != "kfunc" or src.mech == "kretprobe":
        how = src.mech or src.kind
        raise h.fail(first.path, f"{what} (BTF field walks) are served at kernel-function hooks (fentry/fexit, "
                                 f"BPF LSM, fmod_ret, kprobe) only; this hook is served by {how}")
    funcs = btf_funcs.vmlinux() if h.g.features.btf else None
    if funcs is None:
        raise h.fail(first.path, f"{what} need the kernel's BTF (/sys/kernel/btf/vmlinux and bpftool)")
    out = []
    for a in walks:
        if a.index >= DATA_BASE and a.source == "current_task":
            start, ctype = "(u64)bpf_get_current_task()", "struct task_struct *"
        else:
            i = a.start if a.index >= DATA_BASE else a.index
            if i >= len(src.fields):
                raise h.fail(f"{a.path}.index", f"{src.func} has {len(src.fields)} arguments: no index {i}")
            start, ctype = f"a[{i}]", src.fields[i].ctype
        if not a.resolve:
            if a.source:
                raise h.fail(f"{a.path}.resolve", "a data entry from the current task needs resolve (a member chain)")
            h.walked[a.index] = src.fields[a.start]
            out.append(f"a[{a.index}] = {start};")
            continue
        try:
            w = walk(funcs, ctype, a.resolve, a)
        except WalkError as exc:
            raise h.fail(f"{a.path}.resolve", f"{a.resolve}: {exc}") from None
        h.walked[a.index] = w.field
        out.append("{\n    u64 p = " + start + ";\n" + indent(w.c) + f"\n    a[{a.index}] = p;\n}}")
    return "\n".join(out) + "\n"


def array_size(hook: Hook) -> int:
    """Entries of the probe's ``a[]``: six arguments, then the data entries."""
    return DATA_BASE + len(hook.data) if hook.data else 6
