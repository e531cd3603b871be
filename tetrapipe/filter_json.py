"""Reading Tetragon's filter options: JSON objects one after another (Tetragon puts one per line),
lists of regexes in them, and the error that names the option, line and field of a bad one.

Shared by the enricher (redaction filters, tetrapipe/redaction.py) and the exporters (allow/deny,
field and redaction filters, exporters/filters.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

Doc = dict[str, Any]


class FilterError(ValueError):
    """A filter option that does not parse; the message names the option, object and field."""


def iter_json_objects(text: str, option: str) -> Iterator[tuple[int, Doc]]:
    """JSON objects one after another (newline-separated or not) → (line number, object)."""
    dec = json.JSONDecoder()
    pos = 0
    n = len(text)
    while True:
        while pos < n and text[pos] in " \t\r\n":
            pos += 1
        if pos >= n:
            return
        line = text.count("\n", 0, pos) + 1
        try:
            obj, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise FilterError(f"{option}: line {line}: not JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise FilterError(f"{option}: line {line}: expected a JSON object, got {type(obj).__name__}")
        yield line, obj


def as_list(values: Any, where: str) -> list[Any]:
    if values is None:
        return []
    if not isinstance(values, list):
        raise FilterError(f"{where}: expected a list, got {json.dumps(values)}")
    return values


def compile_regexes(values: Any, where: str) -> list[re.Pattern[str]]:
    out = []
    for v in as_list(values, where):
        try:
            out.append(re.compile(str(v)))
        except re.error as exc:
            raise FilterError(f"{where}: bad regex {v!r}: {exc}") from None
    return out
