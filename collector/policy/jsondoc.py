"""TracingPolicy documents as JSON, with the line of every JSON path, so a refused policy names
where it is as the YAML form does:

    p.json:14: spec.kprobes[0].selectors[0].matchArgs[0].operator: unknown operator "Prefx"

A JSON text holds one policy object, an array of them, or a Kubernetes ``List`` (``kubectl get
tracingpolicies -o json``: ``{"kind": "List", "items": [...]}``). Strict JSON (RFC 8259):
duplicate keys, comments, trailing commas and NaN are refused with line and column. The objects
go through the same parser as YAML (collector/policy/parser.py ``parse_document``).
"""

from __future__ import annotations

import bisect
import json
import re
from json.decoder import scanstring
from typing import Any

from collector.policy.model import PolicyError

_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?")
_LITERALS = {"true": True, "false": False, "null": None}
MAX_DEPTH = 64


def looks_like_json(text: str) -> bool:
    """JSON texts start with ``{`` or ``[`` (after blanks); YAML policies start with a key."""
    return text.lstrip()[:1] in ("{", "[")


class JsonDoc:
    """One policy object: ``value`` (plain Python), ``lines`` (path → line), ``source``: what
    parser.parse_document takes."""

    def __init__(self, value: Any, lines: dict[str, int], source: str) -> None:
        self.value = value
        self.lines = lines
        self.source = source


class _Reader:
    def __init__(self, text: str, source: str) -> None:
        self.s = text
        self.source = source
        self.nl = [i for i, ch in enumerate(text) if ch == "\n"]
        self.lines: dict[str, int] = {}

    def line(self, pos: int) -> int:
        return bisect.bisect_left(self.nl, pos) + 1

    def fail(self, pos: int, reason: str) -> PolicyError:
        line = self.line(pos)
        col = pos - (self.nl[line - 2] if line > 1 else -1)
        return PolicyError("", f"not valid JSON: {reason} (column {col})", line, self.source)

    def ws(self, pos: int) -> int:
        return _WS.match(self.s, pos).end()  # type: ignore[union-attr]

    def value(self, pos: int, path: str, depth: int) -> tuple[Any, int]:
        if depth > MAX_DEPTH:
            raise self.fail(pos, f"nested deeper than {MAX_DEPTH} levels")
        pos = self.ws(pos)
        self.lines.setdefault(path, self.line(pos))
        ch = self.s[pos:pos + 1]
        if ch == "{":
            return self.obj(pos + 1, path, depth)
        if ch == "[":
            return self.arr(pos + 1, path, depth)
        if ch == '"':
            return self.string(pos)
        m = _NUMBER.match(self.s, pos)
        if m and m.end() > pos:
            txt = m.group(0)
            return (float(txt) if m.group(1) or m.group(2) else int(txt)), m.end()
        for word, val in _LITERALS.items():
            if self.s.startswith(word, pos):
                return val, pos + len(word)
        raise self.fail(pos, "expected a value" if ch else "unexpected end of text")

    def string(self, pos: int) -> tuple[str, int]:
        try:
            return scanstring(self.s, pos + 1, True)
        except json.JSONDecodeError as exc:
            raise self.fail(exc.pos, exc.msg) from None

    def obj(self, pos: int, path: str, depth: int) -> tuple[dict[str, Any], int]:
        out: dict[str, Any] = {}
        pos = self.ws(pos)
        if self.s.startswith("}", pos):
            return out, pos + 1
        while True:
            pos = self.ws(pos)
            if not self.s.startswith('"', pos):
                raise self.fail(pos, "expected a key in double quotes")
            key_pos = pos
            key, pos = self.string(pos)
            if key in out:
                raise self.fail(key_pos, f"key {key!r} appears twice")
            sub = f"{path}.{key}" if path else key
            pos = self.ws(pos)
            if not self.s.startswith(":", pos):
                raise self.fail(pos, "expected ':' after a key")
            out[key], pos = self.value(pos + 1, sub, depth + 1)
            self.lines[sub] = self.line(key_pos)  # the key's line, as for YAML
            pos = self.ws(pos)
            if self.s.startswith(",", pos):
                pos += 1
                continue
            if self.s.startswith("}", pos):
                return out, pos + 1
            raise self.fail(pos, "expected ',' or '}'")

    def arr(self, pos: int, path: str, depth: int) -> tuple[list[Any], int]:
        out: list[Any] = []
        pos = self.ws(pos)
        if self.s.startswith("]", pos):
            return out, pos + 1
        while True:
            v, pos = self.value(pos, f"{path}[{len(out)}]", depth + 1)
            out.append(v)
            pos = self.ws(pos)
            if self.s.startswith(",", pos):
                pos += 1
                continue
            if self.s.startswith("]", pos):
                return out, pos + 1
            raise self.fail(pos, "expected ',' or ']'")


def documents(text: str, source: str = "") -> list[JsonDoc]:
    """The policy objects of a JSON text, each with its own path → line map."""
    r = _Reader(text, source)
    value, pos = r.value(0, "", 0)
    pos = r.ws(pos)
    if pos < len(text):
        raise r.fail(pos, "text after the JSON value")
    prefix = ""
    if isinstance(value, dict) and value.get("kind") == "List" and isinstance(value.get("items"), list):
        value, prefix = value["items"], "items"
    if not isinstance(value, list):
        return [JsonDoc(value, r.lines, source)]
    docs = []
    for i, item in enumerate(value):
        head = f"{prefix}[{i}]"
        lines = {k[len(head):].lstrip("."): v for k, v in r.lines.items() if k.startswith(head)
                 and (len(k) == len(head) or k[len(head)] in ".[")}
        docs.append(JsonDoc(item, lines, source))
    return docs
