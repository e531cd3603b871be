"""Tetragon's export filters on protojson event dicts: allow/deny lists (``Filter`` JSON), field
filters (``FieldFilter`` JSON) and redaction filters (``RedactionFilter`` JSON).

Each option holds JSON objects one after another (Tetragon puts one per line). Allow/deny:
fields inside one object are AND'd, objects are OR'd, an event is exported when the allow list
is empty or matches and the deny list does not match. Field filters apply in order to the event
body (the ``process_exec``/... object); an INCLUDE keeps only its paths, an EXCLUDE drops its
paths. Redaction replaces every capture group of a matching regex by ``*****`` in the
``arguments`` and environment variables of every process in the event (process, parent,
ancestors), for binaries matching ``binary_regex`` (all when empty): the filters themselves are
in tetrapipe/redaction.py, shared with the enricher, which already redacts every process it puts
on the events topic; the JSON sink applies them again to what it reads (events of an enricher
that had no filter configured).

Regexes use Python's ``re`` with ``search`` semantics, as Go's ``MatchString``; RE2 syntax is a
subset of it for the patterns filters use.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tetrapipe.filter_json import FilterError, iter_json_objects
from tetrapipe.filter_json import as_list as _as_list
from tetrapipe.filter_json import compile_regexes as _compile_res
from tetrapipe.redaction import REDACTED, RedactionFilter, parse_redaction_filters, redact_process, redact_string

__all__ = ["REDACTED", "FilterError", "RedactionFilter", "iter_json_objects", "parse_redaction_filters",
           "redact_string"]

EVENT_TYPE_NUMBERS = {
    "PROCESS_EXEC": 1, "PROCESS_EXIT": 5, "PROCESS_KPROBE": 9, "PROCESS_TRACEPOINT": 10,
    "PROCESS_LOADER": 11, "PROCESS_UPROBE": 12, "PROCESS_THROTTLE": 27, "PROCESS_LSM": 28,
    "PROCESS_USDT": 29, "TEST": 40000, "RATE_LIMIT_INFO": 40001,
}
_NUMBER_NAMES = {v: k for k, v in EVENT_TYPE_NUMBERS.items()}

Doc = dict[str, Any]
Predicate = Callable[[Doc], bool]


# ---- helpers on protojson documents -------------------------------------------------------

def event_key(doc: Doc) -> str:
    """The oneof key of the event: ``process_exec``, ``rate_limit_info``, ..."""
    for k, v in doc.items():
        if k.startswith(("process_", "rate_limit_info", "test")) and isinstance(v, dict):
            return k
    return ""


def event_type_name(doc: Doc) -> str:
    return event_key(doc).upper()


def body(doc: Doc) -> Doc:
    v = doc.get(event_key(doc))
    return v if isinstance(v, dict) else {}


def process(doc: Doc) -> Doc | None:
    p = body(doc).get("process")
    return p if isinstance(p, dict) else None


def parent(doc: Doc) -> Doc | None:
    p = body(doc).get("parent")
    return p if isinstance(p, dict) else None


def _pids(values: Any, where: str) -> set[int]:
    out = set()
    for v in _as_list(values, where):
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise FilterError(f"{where}: expected process ids, got {json.dumps(v)}")
        try:
            out.add(int(v))
        except ValueError:
            raise FilterError(f"{where}: expected process ids, got {json.dumps(v)}") from None
    return out


def _event_set(values: Any, where: str) -> set[str]:
    out = set()
    for v in _as_list(values, where):
        if isinstance(v, int) and v in _NUMBER_NAMES:
            out.add(_NUMBER_NAMES[v])
        elif isinstance(v, str) and v.upper() in EVENT_TYPE_NUMBERS:
            out.add(v.upper())
        else:
            raise FilterError(f"{where}: unknown event type {v!r} (one of {', '.join(EVENT_TYPE_NUMBERS)})")
    return out


# ---- allow / deny lists --------------------------------------------------------------------

def _any_re(pats: list[re.Pattern[str]], value: str) -> bool:
    return any(p.search(value) for p in pats)


def _label_selector(text: str, where: str) -> Callable[[dict[str, str]], bool]:
    """A Kubernetes label selector: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a)``,
    ``k``, ``!k``, comma-separated requirements AND'd."""
    reqs: list[Callable[[dict[str, str]], bool]] = []
    for part in re.findall(r"(?:[^,(]|\([^)]*\))+", text):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", part)
        if m:
            key, op, vals = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if op == "in":
                reqs.append(lambda lb, k=key, vs=vals: lb.get(k) in vs)
            else:
                reqs.append(lambda lb, k=key, vs=vals: lb.get(k) not in vs)
            continue
        m = re.fullmatch(r"([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)", part)
        if m:
            key, op, val = m.groups()
            if op == "!=":
                reqs.append(lambda lb, k=key, v=val: lb.get(k) != v)
            else:
                reqs.append(lambda lb, k=key, v=val: lb.get(k) == v)
            continue
        m = re.fullmatch(r"(!?)([\w./-]+)", part)
        if m:
            neg, key = m.groups()
            reqs.append((lambda lb, k=key: k not in lb) if neg else (lambda lb, k=key: k in lb))
            continue
        raise FilterError(f"{where}: cannot parse label selector requirement {part!r}")
    return lambda labels: all(r(labels) for r in reqs)


def _pod(doc: Doc) -> Doc:
    p = process(doc) or {}
    return p.get("pod") or {}


def _caps_predicate(spec: Any, where: str) -> Predicate:
    if not isinstance(spec, dict):
        raise FilterError(f"{where}: expected an object like {{\"effective\": {{\"any\": [...]}}}}")
    checks: list[Predicate] = []
    for set_name, ops in spec.items():
        if set_name not in ("permitted", "effective", "inheritable"):
            raise FilterError(f"{where}: unknown capability set {set_name!r}")
        if not isinstance(ops, dict):
            raise FilterError(f"{where}.{set_name}: expected an object of any/all/exactly/none")
        for op, caps in ops.items():
            if op not in ("any", "all", "exactly", "none"):
                raise FilterError(f"{where}.{set_name}: unknown operator {op!r}")
            want = {str(c).upper() for c in _as_list(caps, f"{where}.{set_name}.{op}")}

            def check(doc: Doc, s: str = set_name, o: str = op, w: set[str] = want) -> bool:
                have = set(((process(doc) or {}).get("cap") or {}).get(s) or [])
                if o == "any":
                    return bool(have & w)
                if o == "all":
                    return w <= have
                if o == "exactly":
                    return have == w
                return not (have & w)

            checks.append(check)
    return lambda doc: all(c(doc) for c in checks)


def _filter_predicate(obj: Doc, where: str) -> Predicate:
    """One Filter object → predicate (all its fields AND'd)."""
    checks: list[Predicate] = []
    for key, val in obj.items():
        w = f"{where}: {key}"
        if key == "event_set":
            types = _event_set(val, w)
            checks.append(lambda d, t=types: event_type_name(d) in t)
        elif key == "binary_regex":
            pats = _compile_res(val, w)
            checks.append(lambda d, p=pats: process(d) is not None and _any_re(p, process(d).get("binary", "")))
        elif key == "parent_binary_regex":
            pats = _compile_res(val, w)
            checks.append(lambda d, p=pats: parent(d) is not None and _any_re(p, parent(d).get("binary", "")))
        elif key == "arguments_regex":
            pats = _compile_res(val, w)
            checks.append(lambda d, p=pats: process(d) is not None
                          and _any_re(p, process(d).get("arguments", "")))
        elif key == "parent_arguments_regex":
            pats = _compile_res(val, w)
            checks.append(lambda d, p=pats: parent(d) is not None and _any_re(p, parent(d).get("arguments", "")))
        elif key == "ancestor_binary_regex":
            pats = _compile_res(val, w)
            checks.append(lambda d, p=pats: any(_any_re(p, a.get("binary", ""))
                                                for a in body(d).get("ancestors") or []))
        elif key == "namespace":
            names = {str(v) for v in _as_list(val, w)}
            checks.append(lambda d, n=names: process(d) is not None and _pod(d).get("namespace", "") in n)
        elif key == "namespace_regex":
            pats = _compile_res(val, w)
            checks.append(lambda d, p=pats: process(d) is not None and _any_re(p, _pod(d).get("namespace", "")))
        elif key == "pod_regex":
            pats = _compile_res(val, w)
            checks.append(lambda d, p=pats: bool(_pod(d).get("name")) and _any_re(p, _pod(d)["name"]))
        elif key == "container_name_regex":
            pats = _compile_res(val, w)
            checks.append(lambda d, p=pats: _any_re(p, (_pod(d).get("container") or {}).get("name", ""))
                          if (_pod(d).get("container") or {}).get("name") else False)
        elif key == "container_id":
            pats = _compile_res(val, w)

            def by_container(d: Doc, p: list[re.Pattern[str]] = pats) -> bool:
                proc = process(d) or {}
                ids = [proc.get("docker", ""), ((proc.get("pod") or {}).get("container") or {}).get("id", "")]
                return any(i and _any_re(p, i) for i in ids)

            checks.append(by_container)
        elif key == "pid":
            pids = _pids(val, w)
            checks.append(lambda d, s=pids: process(d) is not None and int(process(d).get("pid", 0)) in s)
        elif key == "pid_set":
            pids = _pids(val, w)

            def by_pid_set(d: Doc, s: set[int] = pids) -> bool:
                procs = [process(d), parent(d), *(body(d).get("ancestors") or [])]
                return any(p is not None and int(p.get("pid", 0)) in s for p in procs)

            checks.append(by_pid_set)
        elif key == "health_check":
            if not isinstance(val, bool):
                raise FilterError(f"{w}: expected true or false")
            checks.append(lambda d, want=val: bool((_pod(d).get("container") or {}).get("maybe_exec_probe"))
                          == want)
        elif key == "in_init_tree":
            if not isinstance(val, bool):
                raise FilterError(f"{w}: expected true or false")
            checks.append(lambda d, want=val: process(d) is not None
                          and bool(process(d).get("in_init_tree")) == want)
        elif key == "labels":
            sels = [_label_selector(str(s), w) for s in _as_list(val, w)]
            checks.append(lambda d, ss=sels: process(d) is not None
                          and any(s(_pod(d).get("pod_labels") or {}) for s in ss))
        elif key == "policy_names":
            names = {str(v) for v in _as_list(val, w)}
            checks.append(lambda d, n=names: body(d).get("policy_name", "") in n)
        elif key == "capabilities":
            checks.append(_caps_predicate(val, w))
        elif key == "cel_expression":
            raise FilterError(f"{w}: CEL expressions are not supported by tetrapipe")
        else:
            raise FilterError(f"{where}: unknown filter field {key!r}")
    return lambda doc: all(c(doc) for c in checks)


def parse_filter_list(text: str, option: str) -> list[Predicate]:
    return [_filter_predicate(obj, f"{option}: line {line}") for line, obj in iter_json_objects(text, option)]


@dataclass
class EventFilter:
    allow: list[Predicate]
    deny: list[Predicate]

    @classmethod
    def parse(cls, allowlist: str, denylist: str) -> EventFilter:
        return cls(parse_filter_list(allowlist, "export_allowlist"), parse_filter_list(denylist, "export_denylist"))

    def __call__(self, doc: Doc) -> bool:
        if self.allow and not any(f(doc) for f in self.allow):
            return False
        return not any(f(doc) for f in self.deny)


# ---- field filters --------------------------------------------------------------------------

@dataclass
class FieldFilter:
    event_set: set[str]
    paths: list[list[str]]
    include: bool
    invert_event_set: bool

    def applies(self, doc: Doc) -> bool:
        if not self.event_set:
            return True
        return (event_type_name(doc) in self.event_set) != self.invert_event_set

    def apply(self, doc: Doc) -> Doc:
        if not self.applies(doc):
            return doc
        key = event_key(doc)
        if not key:
            return doc
        src = doc[key]
        if self.include:
            dst: Doc = {}
            for path in self.paths:
                _copy_path(src, dst, path)
        else:
            dst = _deep_copy_dicts(src)
            for path in self.paths:
                _drop_path(dst, path)
        out = dict(doc)
        out[key] = dst
        return out


def _deep_copy_dicts(d: Doc) -> Doc:
    return {k: _deep_copy_dicts(v) if isinstance(v, dict) else v for k, v in d.items()}


def _copy_path(src: Doc, dst: Doc, parts: list[str]) -> None:
    head = parts[0]
    if head not in src:
        return
    if len(parts) == 1:
        dst[head] = src[head]
    elif isinstance(src[head], dict):
        sub = dst.get(head)
        if not isinstance(sub, dict):
            sub = dst[head] = {}
        _copy_path(src[head], sub, parts[1:])


def _drop_path(d: Doc, parts: list[str]) -> None:
    if len(parts) == 1:
        d.pop(parts[0], None)
    elif isinstance(d.get(parts[0]), dict):
        _drop_path(d[parts[0]], parts[1:])


def parse_field_filters(text: str, option: str = "field_filters") -> list[FieldFilter]:
    out = []
    for line, obj in iter_json_objects(text, option):
        where = f"{option}: line {line}"
        unknown = set(obj) - {"event_set", "fields", "action", "invert_event_set"}
        if unknown:
            raise FilterError(f"{where}: unknown field filter field(s) {', '.join(sorted(unknown))}")
        action = str(obj.get("action", "")).upper()
        if action not in ("INCLUDE", "EXCLUDE"):
            raise FilterError(f"{where}: action must be INCLUDE or EXCLUDE, got {obj.get('action')!r}")
        fields = obj.get("fields", "")
        if isinstance(fields, dict):  # a FieldMask written as {"paths": [...]}
            fields = ",".join(fields.get("paths", []))
        if not isinstance(fields, str):
            raise FilterError(f"{where}: fields must be a comma-separated string of field paths")
        paths = [p.strip().split(".") for p in fields.split(",") if p.strip()]
        invert = obj.get("invert_event_set", False)
        if not isinstance(invert, bool):
            raise FilterError(f"{where}: invert_event_set must be true or false")
        out.append(FieldFilter(_event_set(obj.get("event_set"), f"{where}: event_set"), paths,
                               action == "INCLUDE", invert))
    return out


def apply_field_filters(filters: list[FieldFilter], doc: Doc) -> Doc:
    for f in filters:
        doc = f.apply(doc)
    return doc


# ---- redaction filters ----------------------------------------------------------------------

def apply_redaction(filters: list[RedactionFilter], doc: Doc) -> Doc:
    """Redact in place the processes of ``doc`` (the protojson dict is ours to change)."""
    if not filters:
        return doc
    b = body(doc)
    for key in ("process", "parent"):
        if isinstance(b.get(key), dict):
            redact_process(filters, b[key])
    for anc in b.get("ancestors") or []:
        if isinstance(anc, dict):
            redact_process(filters, anc)
    return doc


# ---- all export options together --------------------------------------------------------------

@dataclass
class ExportFilters:
    """Allow/deny, redaction and field filters of the JSON export, in Tetragon's order."""

    events: EventFilter
    fields: list[FieldFilter]
    redaction: list[RedactionFilter]

    @classmethod
    def parse(cls, allowlist: str = "", denylist: str = "", field_filters: str = "",
              redaction_filters: str = "") -> ExportFilters:
        return cls(EventFilter.parse(allowlist, denylist), parse_field_filters(field_filters),
                   parse_redaction_filters(redaction_filters))

    def __call__(self, doc: Doc) -> Doc | None:
        """The document to write, or None when the lists drop it."""
        if not self.events(doc):
            return None
        doc = apply_redaction(self.redaction, doc)
        return apply_field_filters(self.fields, doc)
