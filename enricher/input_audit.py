"""Counts the strange-but-valid strings the kernel hands us, so hostile input is visible on a
dashboard and not only inside events: strings cut at the kernel's limits (the event carries
Tetragon's ``truncFilename`` / ``truncArgs`` / ``truncCWD`` flags), strings the kernel could not
read (``errorFilename`` / ``errorArgs`` / ``errorCWD``), invalid UTF-8 (kept visible as ``\\xNN``
escapes in the event) and control characters such as newlines or terminal escapes (kept as they
are in the event, escaped by every text renderer)."""

from __future__ import annotations

from prometheus_client import Counter

from bpf import records as r

STRINGS_TRUNCATED = Counter(
    "tetrapipe_enricher_strings_truncated",
    "Exec strings cut at the kernel-side limit (4096 bytes)", ["field"],
)
STRINGS_UNREADABLE = Counter(
    "tetrapipe_enricher_strings_unreadable", "Exec strings the kernel program could not read", ["field"],
)
STRINGS_INVALID_UTF8 = Counter(
    "tetrapipe_enricher_strings_invalid_utf8",
    "Exec strings holding bytes that are not UTF-8 (escaped as \\xNN in events)", ["field"],
)
STRINGS_CONTROL_CHARS = Counter(
    "tetrapipe_enricher_strings_control_chars",
    "Exec strings holding control characters (newline, escape, ...)", ["field"],
)

_FLAGS = {
    "filename": (r.F_TRUNC_FILENAME, r.F_ERR_FILENAME),
    "args": (r.F_TRUNC_ARGS, r.F_ERR_ARGS),
    "cwd": (r.F_TRUNC_CWD, r.F_ERR_CWD),
}
# C0 controls and DEL, except the NUL that separates arguments
_CONTROL = bytes(range(1, 32)) + b"\x7f"

for _field in _FLAGS:  # every series exported as 0 from the start
    for _c in (STRINGS_TRUNCATED, STRINGS_UNREADABLE, STRINGS_INVALID_UTF8, STRINGS_CONTROL_CHARS):
        _c.labels(field=_field)


def _has_control(b: bytes) -> bool:
    return bool(b) and len(b.translate(None, _CONTROL)) != len(b)


_ODD_FLAGS = 0
for _bits in _FLAGS.values():
    _ODD_FLAGS |= _bits[0] | _bits[1]


def audit_exec(rec: r.ExecRecord) -> None:
    """Count what is odd about one exec record's strings."""
    if not rec.flags & _ODD_FLAGS:  # the common case, in one pass: nothing cut or unreadable,
        joined = rec.filename + rec.args + rec.cwd  # all ASCII (so UTF-8), no control character
        if joined.isascii() and len(joined.translate(None, _CONTROL)) == len(joined):
            return
    values = {"filename": rec.filename, "args": rec.args, "cwd": rec.cwd}
    for name, value in values.items():
        trunc, err = _FLAGS[name]
        if rec.flags & trunc:
            STRINGS_TRUNCATED.labels(field=name).inc()
        if rec.flags & err:
            STRINGS_UNREADABLE.labels(field=name).inc()
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            # a string cut by the kernel may end inside a multi-byte character: not hostile
            if not (rec.flags & trunc and _valid_but_cut(value)):
                STRINGS_INVALID_UTF8.labels(field=name).inc()
        if _has_control(value):
            STRINGS_CONTROL_CHARS.labels(field=name).inc()


def _valid_but_cut(b: bytes) -> bool:
    for cut in range(1, 4):
        try:
            b[:-cut].decode("utf-8")
            return True
        except UnicodeDecodeError:
            continue
    return False
