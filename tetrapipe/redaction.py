"""Tetragon's redaction filters (``--redaction-filters``, setting ``redaction_filters``).

One JSON object per line: ``{"redact": [regex, ...], "binary_regex": [regex, ...]}``. For a
process whose ``binary`` matches one of ``binary_regex`` (every process when it is empty), every
capture group of every match of a ``redact`` regex in its ``arguments`` and in each of its
environment variables (as ``KEY=VALUE``) becomes ``*****``. As in Tetragon, this is done where
the process is made: the enricher redacts each process-cache entry once (exec, /proc bootstrap,
entries replayed from the state topic; a clone copies its parent's already redacted entry), so
every event on the events topic (``process``, ``parent``, ``ancestors`` of every event type), the
state topic and every sink downstream only ever hold the redacted text. The JSON file sink applies
the same filters again to what it reads (exporters/filters.py), for events written by an enricher
that had none configured.

Regexes use Python's ``re`` with ``search`` semantics, as Go's ``MatchString``; RE2 syntax is a
subset of it for the patterns filters use. Redacting twice with the same filter gives the same
text unless a capture group can match inside ``*****`` itself (e.g. ``(.)``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tetrapipe.filter_json import FilterError, compile_regexes, iter_json_objects

REDACTED = "*****"

__all__ = ["REDACTED", "FilterError", "RedactionFilter", "parse_redaction_filters", "redact_process",
           "redact_string"]


@dataclass(frozen=True, slots=True)
class RedactionFilter:
    binary_regex: list[re.Pattern[str]]
    redact: list[re.Pattern[str]]

    def applies_to(self, binary: str) -> bool:
        return not self.binary_regex or any(p.search(binary) for p in self.binary_regex)

    def redact_text(self, binary: str, text: str) -> str:
        if not self.applies_to(binary):
            return text
        for pat in self.redact:
            text = redact_string(pat, text)
        return text


def redact_string(pat: re.Pattern[str], text: str) -> str:
    """Replace every capture group of every match by ``*****`` (nested groups once)."""
    if not pat.groups:
        return text

    def repl(m: re.Match[str]) -> str:
        s = m.group(0)
        base = m.start()
        out = []
        last = 0
        for i in range(1, pat.groups + 1):
            start, end = m.span(i)
            if start < 0 or start - base < last:
                continue
            out.append(s[last:start - base])
            out.append(REDACTED)
            last = end - base
        out.append(s[last:])
        return "".join(out)

    return pat.sub(repl, text)


def parse_redaction_filters(text: str, option: str = "redaction_filters") -> list[RedactionFilter]:
    """The filters of the option's text (empty: none); FilterError names line, field and reason."""
    out = []
    for line, obj in iter_json_objects(text, option):
        where = f"{option}: line {line}"
        unknown = set(obj) - {"redact", "binary_regex"}
        if unknown:
            raise FilterError(f"{where}: unknown redaction filter field(s) {', '.join(sorted(unknown))}")
        out.append(RedactionFilter(compile_regexes(obj.get("binary_regex"), f"{where}: binary_regex"),
                                   compile_regexes(obj.get("redact"), f"{where}: redact")))
    return out


def _redact_all(pats: list[re.Pattern[str]], text: str) -> str:
    for pat in pats:
        text = redact_string(pat, text)
    return text


def redact_process(filters: list[RedactionFilter], proc: dict[str, Any]) -> bool:
    """Redact, in place, the ``arguments`` and ``environment_variables`` of one Process (the Avro
    record dict or its protojson form: same keys). True when something was replaced."""
    if not filters:
        return False
    binary = proc.get("binary") or ""
    pats = [p for f in filters if f.applies_to(binary) for p in f.redact]
    if not pats:
        return False
    changed = False
    args = proc.get("arguments")
    if args:
        new = _redact_all(pats, args)
        if new != args:
            proc["arguments"] = new
            changed = True
    envs = proc.get("environment_variables")
    if envs:
        out = []
        envs_changed = False
        for env in envs:
            text = f"{env.get('Key', '')}={env.get('Value', '')}"
            new = _redact_all(pats, text)
            if new == text:
                out.append(env)
                continue
            k, _, v = new.partition("=")
            out.append({**env, "Key": k, "Value": v})
            envs_changed = True
        if envs_changed:
            proc["environment_variables"] = out
            changed = True
    return changed
