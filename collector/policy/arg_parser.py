"""One hook argument (``args[i]``, ``returnArg``) of a TracingPolicy → :class:`ArgSpec`
(called by collector/policy/parser.py)."""

from __future__ import annotations

import re
from typing import Any

from collector.policy.model import ARG_TYPES, DATA_BASE, INT32_ARR_MAX, MAX_DATA, ArgSpec
from collector.policy.yamldoc import Ctx as _Ctx

ARG_KEYS = {"index", "type", "resolve", "sizeArgIndex", "returnCopy", "maxData", "label", "source",
            "btfType", "extractParam", "overwriteType", "size"}


def arg(c: _Ctx, raw: Any, path: str, need_index: bool = True, data: bool = False) -> ArgSpec:
    m = c.mapping(raw, path, ARG_KEYS)
    idx = c.integer(m.get("index"), f"{path}.index", None if need_index else 0)
    if idx < 0 or idx > 5 and need_index:
        raise c.fail(f"{path}.index", f"argument index {idx} out of range (0 to 5)")
    raw_t = m.get("overwriteType") or m.get("type")   # overwriteType: the type of what extractParam reaches
    t = c.choice("uint64" if raw_t == "unsigned long" else raw_t, f"{path}.type", ARG_TYPES, "argument type")
    size_idx = c.integer(m.get("sizeArgIndex"), f"{path}.sizeArgIndex", 0)
    if size_idx < 0 or size_idx > 6:
        raise c.fail(f"{path}.sizeArgIndex", f"sizeArgIndex {size_idx} out of range (1 to 6, counted from 1)")
    walk = _walk(c, m, path)
    if m.get("source") and not data:
        raise c.fail(f"{path}.source", "source applies to data entries only")
    size = c.integer(m.get("size"), f"{path}.size", 0)
    if t == "int32_arr" and not (1 <= size <= INT32_ARR_MAX or size_idx):
        raise c.fail(f"{path}.size", f"an int32_arr argument needs size (1 to {INT32_ARR_MAX}) or sizeArgIndex")
    return ArgSpec(index=idx, type=t, size_arg_index=size_idx, size=size,
                   return_copy=c.boolean(m.get("returnCopy"), f"{path}.returnCopy"),
                   max_data=c.boolean(m.get("maxData"), f"{path}.maxData"),
                   label=c.string(m.get("label"), f"{path}.label"), path=path, resolve=walk,
                   btf_type=c.string(m.get("btfType"), f"{path}.btfType"),
                   source=c.string(m.get("source"), f"{path}.source"))


WALK = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _walk(c: _Ctx, m: dict[str, Any], path: str) -> str:
    """``resolve`` / ``extractParam``: a member chain like ``mm.owner.comm`` (checked against the
    kernel's BTF by the compiler: collector/policy/btfwalk.py)."""
    if m.get("resolve") and m.get("extractParam"):
        raise c.fail(f"{path}.extractParam", "resolve and extractParam both given")
    key = "extractParam" if m.get("extractParam") else "resolve"
    chain = c.string(m.get(key), f"{path}.{key}")
    if chain and not WALK.fullmatch(chain):
        raise c.fail(f"{path}.{key}", f"{chain!r} is not a member chain like cred.euid.val")
    if m.get("overwriteType") and not chain:
        raise c.fail(f"{path}.overwriteType", "overwriteType needs extractParam (the type of what it reaches)")
    return chain


DATA_SOURCES = ("", "current_task")


def data(c: _Ctx, raw: Any, path: str) -> list[ArgSpec]:
    """A kprobe's ``data:`` entries: values read at the hook beside the arguments (``source:
    current_task``: from the current task, else from argument ``index``), each usually with a
    ``resolve`` chain; matchData index k compares entry k. Entry k is ArgSpec index DATA_BASE + k."""
    out = []
    entries = c.seq(raw, path)
    if len(entries) > MAX_DATA:
        raise c.fail(path, f"{len(entries)} data entries: at most {MAX_DATA} per hook")
    for k, item in enumerate(entries):
        p = f"{path}[{k}]"
        a = arg(c, item, p, need_index=False, data=True)
        if a.source not in DATA_SOURCES:
            raise c.fail(f"{p}.source", f'unknown data source "{a.source}" (current_task, or none for the '
                                        "hook's argument index)")
        a.start = -1 if a.source else a.index
        a.index = DATA_BASE + k
        out.append(a)
    return out
