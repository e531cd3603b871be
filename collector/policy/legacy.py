"""The older ``ExecPolicy`` form (``spec.rules.selectors``), translated to a TracingPolicy spec.

Its comments say the list items are combined with AND, so all items become one selector. The hook
is the exec itself (``sched:sched_process_exec``: the new program has not run a single
instruction yet, so a Sigkill there stops it). Two idioms of that form are read by what they meant:

- ``matchPIDs: NotIn [0] isNamespacePID`` ("match only pod pids") → the process is outside the
  host PID namespace (``matchNamespaces: Pid NotIn host_ns``); a literal reading would match every
  process, host ones included;
- ``matchBinarys: values: ["*"]`` → any binary (no binary filter).
"""

from __future__ import annotations

from typing import Any, Protocol


class _Ctx(Protocol):
    notices: list[str]
    doc: Any

    def fail(self, path: str, reason: str) -> Exception: ...
    def mapping(self, v: Any, path: str, allowed: set[str] | None = None) -> dict[str, Any]: ...
    def seq(self, v: Any, path: str) -> list[Any]: ...


EXEC_HOOK = {"subsystem": "sched", "event": "sched_process_exec"}


def exec_policy_spec(c: _Ctx, raw: Any) -> dict[str, Any]:
    """The TracingPolicy ``spec`` equivalent of an ExecPolicy ``spec``."""
    spec = c.mapping(raw, "spec", {"rules"})
    rules = c.mapping(spec.get("rules"), "spec.rules", {"selectors"})
    items = c.seq(rules.get("selectors"), "spec.rules.selectors")
    if not items:
        raise c.fail("spec.rules.selectors", "an ExecPolicy needs at least one selector")
    merged: dict[str, list[Any]] = {}
    for i, item in enumerate(items):
        m = dict(c.mapping(item, f"spec.rules.selectors[{i}]"))
        for bkey in ("matchBinarys", "matchBinaries"):
            if bkey in m and m[bkey] is None and "values" in m:
                # `- matchBinarys:` followed by `values:` at the same indent: one mapping in YAML
                m[bkey] = {"values": m.pop("values")}
                c.notices.append(f"spec.rules.selectors[{i}]: values under {bkey} read as its values")
        for key, value in m.items():
            p = f"spec.rules.selectors[{i}].{key}"
            if key == "matchBinarys":
                key = "matchBinaries"
                c.notices.append(f"{p}: read as matchBinaries (legacy spelling)")
            if key == "matchBinaries" and isinstance(value, dict):
                value = [value]  # the legacy form wrote one filter as a mapping
            filters = c.seq(value, p)
            _alias_lines(c, p, key, len(merged.get(key, [])), len(filters))
            merged.setdefault(key, []).extend(filters)
    out: dict[str, list[Any]] = {}
    for key, filters in merged.items():
        kept = []
        for f in filters:
            if key == "matchPIDs" and _is_pod_pids(f):
                out.setdefault("matchNamespaces", []).append(
                    {"namespace": "Pid", "operator": "NotIn", "values": ["host_ns"]})
                c.notices.append("matchPIDs NotIn [0] with isNamespacePID (\"only pod pids\") read as: "
                                 "the process is outside the host PID namespace")
                continue
            if key == "matchBinaries" and isinstance(f, dict):
                vals = _strs(f.get("values"))
                if "*" in vals:
                    c.notices.append('matchBinaries values ["*"] read as: any binary')
                    continue
                f = {"operator": "In", **f}
            kept.append(f)
        if kept:
            out.setdefault(key, []).extend(kept)
    c.notices.insert(0, "legacy ExecPolicy translated to a TracingPolicy: one selector (the listed "
                        "filters AND-ed) on the exec tracepoint sched:sched_process_exec")
    return {"tracepoints": [{**EXEC_HOOK, "selectors": [out]}]}


def _strs(values: Any) -> list[str]:
    """The values as text; not a list: none (the parser then refuses them with the line)."""
    return [str(v) for v in values] if isinstance(values, list) else []


def _is_pod_pids(f: Any) -> bool:
    if not isinstance(f, dict):
        return False
    vals = _strs(f.get("values"))
    return f.get("operator") == "NotIn" and vals == ["0"] and bool(f.get("isNamespacePID"))


def _alias_lines(c: _Ctx, src: str, key: str, start: int, n: int) -> None:
    """Errors in the translated selector point at the lines of the original items."""
    lines = c.doc.lines
    dst = f"spec.tracepoints[0].selectors[0].{key}"
    lines.setdefault("spec.tracepoints[0].selectors[0]", lines.get("spec.rules.selectors", 0))
    lines.setdefault(dst, lines.get(src, 0))
    for j in range(n):
        for path, line in list(lines.items()):
            prefix = f"{src}[{j}]"
            if path == prefix or path.startswith(prefix + ".") or path.startswith(prefix + "["):
                lines.setdefault(f"{dst}[{start + j}]" + path[len(prefix):], line)
