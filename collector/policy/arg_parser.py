"""One hook argument (``args[i]``, ``returnArg``) of a TracingPolicy → :class:`ArgSpec`
(called by collector/policy/parser.py)."""

from __future__ import annotations

from typing import Any

from collector.policy.model import ARG_TYPES, INT32_ARR_MAX, ArgSpec
from collector.policy.yamldoc import Ctx as _Ctx

ARG_KEYS = {"index", "type", "resolve", "sizeArgIndex", "returnCopy", "maxData", "label", "source",
            "btfType", "extractParam", "overwriteType", "size"}


def arg(c: _Ctx, raw: Any, path: str, need_index: bool = True) -> ArgSpec:
    m = c.mapping(raw, path, ARG_KEYS)
    idx = c.integer(m.get("index"), f"{path}.index", None if need_index else 0)
    if idx < 0 or idx > 5 and need_index:
        raise c.fail(f"{path}.index", f"argument index {idx} out of range (0 to 5)")
    raw_t = m.get("type")
    t = c.choice("uint64" if raw_t == "unsigned long" else raw_t, f"{path}.type", ARG_TYPES, "argument type")
    size_idx = c.integer(m.get("sizeArgIndex"), f"{path}.sizeArgIndex", 0)
    if size_idx < 0 or size_idx > 6:
        raise c.fail(f"{path}.sizeArgIndex", f"sizeArgIndex {size_idx} out of range (1 to 6, counted from 1)")
    if m.get("resolve") or m.get("btfType") or m.get("source") or m.get("extractParam"):
        raise c.fail(path, "resolve/btfType/source/extractParam (BTF field walks) are not supported by tetrapipe")
    size = c.integer(m.get("size"), f"{path}.size", 0)
    if t == "int32_arr" and not (1 <= size <= INT32_ARR_MAX or size_idx):
        raise c.fail(f"{path}.size", f"an int32_arr argument needs size (1 to {INT32_ARR_MAX}) or sizeArgIndex")
    return ArgSpec(index=idx, type=t, size_arg_index=size_idx, size=size,
                   return_copy=c.boolean(m.get("returnCopy"), f"{path}.returnCopy"),
                   max_data=c.boolean(m.get("maxData"), f"{path}.maxData"),
                   label=c.string(m.get("label"), f"{path}.label"), path=path)
