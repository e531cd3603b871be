"""Avro binary reader generated from one schema: the fast path of ``codec.decode``.

fastavro's reader walks the schema for every value (a dict lookup per field, its type dispatched
by name, one ``BytesIO.read`` per byte of every varint): ≈ 180-210 µs for a 2.8 kB enricher event
here, 58 % of the JSON exporter's busy time. This module turns a parsed schema into Python source,
one function per record type with every field's read inline on a ``bytes`` object and a position,
and compiles it once (as ``schemas/compiled_writer.py`` does for the writer).

Contract: ``reader(body)`` returns ``(value, end)``: exactly the value
``fastavro.schemaless_reader`` returns for ``body`` read with the same writer and reader schema
(dicts with every field in schema order; a ``["null", T]`` union gives None or the bare value,
not a ``(name, value)`` pair; ``int`` as fastavro reads it, i.e. any 64-bit long; ``bytes`` as
``bytes``; a boolean byte other than 0 is True as in fastavro), and ``end``, the position after
the value, where fastavro's stream would be. Or it raises (``Refused``, or ``IndexError`` /
``UnicodeDecodeError`` on cut or bad bytes). It raises, and leaves the decision to fastavro, on
everything outside the plain encoding our writers produce: a union index other than 0 or 1 (fastavro
reads -1 as the last branch), a negative array/map block count (a block with a byte size), a
negative string length, a varint longer than 10 bytes, a body shorter than what it declares.
``codec.decode`` sends whatever this raises on through fastavro, so fastavro alone decides what
is refused and with which message; the fast path only ever returns what fastavro would return.

Memo (bounded, keyed by the bytes read, never by position): arrays of strings (the capability
names: 84 % of an event's bytes, the same few lists in every event) and the record types named in
``memo_records`` (namespaces, credentials, capabilities, pod), by their complete encoding indexed
by its first ``PREFIX`` bytes. An Avro read is decided by the bytes it consumes, so bytes that
start with a complete encoding read as exactly its value: a hit is a ``startswith``. Only
encodings read wholly within the body are kept. A hit returns fresh copies (a new list, new
dicts): callers may change what they get, as with fastavro's fresh objects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from schemas.schema_gen import SchemaGen, Unsupported, short

MEMO_LIMIT = 4096  # encodings kept per memo; a full memo is emptied and refilled
PREFIX = 12  # bytes of an encoding that index it
BUCKET_LIMIT = 8  # encodings kept per prefix (the oldest goes)


class Refused(ValueError):
    """Bytes the fast path does not read (fastavro decides what they are)."""


# ---- primitives shared by the generated code -------------------------------------------------

# the longs whose zig-zag varint is one byte, by that byte (0..127)
_SMALL = [(b >> 1) ^ -(b & 1) for b in range(128)]


def read_long(d: bytes, p: int) -> tuple[int, int]:
    """An Avro long at ``d[p]`` (a varint of any length up to 10 bytes) → (value, next position).
    As fastavro's C reader: the varint's bits past the 64th are dropped, the result is a signed
    64-bit value. Longer varints (undefined behaviour in fastavro's C shift) are refused."""
    n = 0
    for shift in _SHIFTS:
        b = d[p]
        p += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            n &= 0xFFFFFFFFFFFFFFFF
            return (n >> 1) ^ -(n & 1), p
    raise Refused("varint longer than 10 bytes")


_SHIFTS = tuple(range(0, 64, 7))  # the 10 bytes of the longest varint


def read_length(d: bytes, p: int) -> tuple[int, int]:
    """A string/bytes length or a block count: a long that must not be negative here."""
    n, q = read_long(d, p)
    if n < 0:
        raise Refused("negative length or block count")
    return n, q


class _Memo(dict):  # type: ignore[type-arg]
    """Complete encodings of values, indexed by their first PREFIX bytes: ``{prefix: [(encoding,
    value), ...]}``. The bytes at a position that start with a complete encoding read as exactly
    that value (an Avro read is decided by the bytes it consumes), so a hit needs no parse."""

    entries = 0

    def find(self, d: bytes, p: int) -> tuple[bytes, Any] | None:
        for hit in self.get(d[p:p + PREFIX], ()):
            if d.startswith(hit[0], p):
                return hit  # type: ignore[no-any-return]
        return None

    def put(self, enc: bytes, value: Any) -> None:
        if len(enc) < PREFIX:
            return  # too short to index (and cheap to read anyway)
        if self.entries >= MEMO_LIMIT:
            self.clear()
            self.entries = 0
        bucket = self.setdefault(enc[:PREFIX], [])
        if len(bucket) >= BUCKET_LIMIT:
            bucket.pop(0)
            self.entries -= 1
        bucket.append((enc, value))
        self.entries += 1


# ---- code generation ---------------------------------------------------------------------------

class _Gen(SchemaGen):
    def __init__(self, parsed: dict[str, Any], memo_records: frozenset[str]) -> None:
        super().__init__(parsed, memo_records)
        self.memos: list[_Memo] = []
        self.top = self.record_func(parsed)

    def memo(self) -> str:
        self.memos.append(_Memo())
        return f"M[{len(self.memos) - 1}]"

    def memoised(self, fname: str, inner: str, keep: str, give: str) -> list[str]:
        """A function reading through the memo first: ``keep`` makes the private copy the memo
        holds of a value just read, ``give`` the caller's copy of a value the memo holds."""
        memo = self.memo()
        return [f"def {fname}(d, p):",
                f"    hit = {memo}.find(d, p)",
                "    if hit is not None:",
                f"        return {give.format('hit[1]')}, p + len(hit[0])",
                f"    v, q = {inner}(d, p)",
                "    if q <= len(d):  # read within the body: d[p:q] is its whole encoding",
                f"        {memo}.put(d[p:q], {keep.format('v')})",
                "    return v, q"]

    def copy(self, x: str, t: Any) -> str | None:
        """An expression making a fresh copy of the value in ``x`` of type ``t`` (None: immutable)."""
        t = self.resolve(t)
        if isinstance(t, list):
            inner = self.copy(x, t[1])
            return None if inner is None else f"(None if {x} is None else {inner})"
        if isinstance(t, dict) and t.get("type") == "record":
            self.copy_func(t)
            made = self.funcs["k_" + short(t["name"])]  # empty while a recursive one is made
            if made and made[-1].endswith("x.copy()"):
                return f"{x}.copy()"  # a flat record: inline
            return f"k_{short(t['name'])}({x})"
        if isinstance(t, dict) and t.get("type") == "array":
            inner = self.copy("y", t["items"])
            return f"list({x})" if inner is None else f"[{inner} for y in {x}]"
        if isinstance(t, dict) and t.get("type") == "map":
            inner = self.copy("y", t["values"])
            return f"dict({x})" if inner is None else f"{{k: {inner} for k, y in {x}.items()}}"
        if isinstance(t, dict):
            return self.copy(x, t["type"])
        return None

    def copy_func(self, rec: dict[str, Any]) -> bool:
        """Defines ``k_<Record>(x)`` (a fresh copy of a record value); always needed (a dict)."""
        fname = "k_" + short(rec["name"])
        if fname not in self.funcs:
            self.funcs[fname] = []
            parts, deep = [], False
            for f in rec["fields"]:
                fx = f"x[{f['name']!r}]"
                c = self.copy(fx, f["type"])
                deep = deep or c is not None
                parts.append(f"{f['name']!r}: {c or fx}")
            made = "{" + ", ".join(parts) + "}" if deep else "x.copy()"  # flat: a shallow copy
            self.funcs[fname] = [f"def {fname}(x):", f"    return {made}"]
        return True

    def record_func(self, rec: dict[str, Any]) -> str:
        name = rec["name"]
        fname = "r_" + short(name)
        if fname in self.funcs:
            return fname
        self.funcs[fname] = []  # placeholder: recursive references see the name
        body: list[str] = []
        out: list[str] = []
        for f in rec["fields"]:
            v = self.var()
            body += self.value(v, f["type"])
            out.append(f"{f['name']!r}: {v}")
        body.append("return {" + ", ".join(out) + "}, p")
        if short(name) not in self.memo_records:
            self.funcs[fname] = [f"def {fname}(d, p):", *("    " + ln for ln in body)]
        else:
            inner = fname + "_read"
            self.funcs[inner] = [f"def {inner}(d, p):", *("    " + ln for ln in body)]
            self.copy_func(rec)
            k = "k_" + short(name) + "({})"
            self.funcs[fname] = self.memoised(fname, inner, k, k)
        return fname

    def record(self, v: str, rec: dict[str, Any]) -> list[str]:
        return [f"{v}, p = {self.record_func(rec)}(d, p)"]

    def primitive(self, v: str, t: Any) -> list[str]:
        """Lines reading a value of primitive type ``t`` at ``d[p]`` into variable ``v``, advancing p."""
        if t == "null":
            return [f"{v} = None"]
        if t == "boolean":  # fastavro: any byte but 0 is True
            return [f"{v} = d[p] != 0", "p += 1"]
        if t in ("int", "long"):  # fastavro reads an int as a long, without a range check
            return [f"{v} = d[p]", f"if {v} < 0x80:", f"    {v} = SMALL[{v}]", "    p += 1",
                    "else:", f"    {v}, p = LONG(d, p)"]
        if t in ("string", "bytes"):
            n = self.var()
            tail = ".decode()" if t == "string" else ""
            return [f"{n} = d[p]", f"if {n} < 0x80 and not {n} & 1:", f"    {n} = p + 1 + ({n} >> 1)",
                    f"    {v} = d[p + 1:{n}]{tail}", "else:", f"    {n}, p = LEN(d, p)",
                    f"    {n} += p", f"    {v} = d[p:{n}]{tail}", f"p = {n}"]
        raise Unsupported(f"schema type {t!r}")

    def union(self, v: str, branches: list[Any]) -> list[str]:
        if len(branches) != 2 or branches[0] != "null":
            raise Unsupported(f"union {branches!r} (only [\"null\", T] is compiled)")
        return [f"{v} = d[p]", "p += 1", f"if {v} == 2:", *("    " + ln for ln in self.value(v, branches[1])),
                f"elif {v}:", "    raise Refused('union index')", "else:", f"    {v} = None"]

    def array(self, v: str, items: Any) -> list[str]:
        if self.resolve(items) == "string":  # capability names: the same lists in every event
            if "a_strings" not in self.funcs:
                self.funcs["a_strings"] = []
                self.funcs["a_strings_read"] = ["def a_strings_read(d, p):",
                                                *("    " + ln for ln in self.array_lines("v", items)),
                                                "    return v, p"]
                self.funcs["a_strings"] = self.memoised("a_strings", "a_strings_read", "tuple({})",
                                                        "list({})")
            return [f"{v}, p = a_strings(d, p)"]
        return self.array_lines(v, items)

    def array_lines(self, v: str, items: Any) -> list[str]:
        n, x = self.var(), self.var()
        return [f"{v} = []", *self.count(n), f"while {n}:", f"    for _ in range({n}):",
                *("        " + ln for ln in self.value(x, items)),
                f"        {v}.append({x})", *("    " + ln for ln in self.count(n))]

    def map(self, v: str, values: Any) -> list[str]:
        n, k, x = self.var(), self.var(), self.var()
        return [f"{v} = {{}}", *self.count(n), f"while {n}:", f"    for _ in range({n}):",
                *("        " + ln for ln in self.value(k, "string")),
                *("        " + ln for ln in self.value(x, values)),
                f"        {v}[{k}] = {x}", *("    " + ln for ln in self.count(n))]

    @staticmethod
    def count(n: str) -> list[str]:
        """A block count (not negative: a block with a byte size is left to fastavro)."""
        return [f"{n} = d[p]", f"if {n} < 0x80 and not {n} & 1:", f"    {n} >>= 1", "    p += 1",
                "else:", f"    {n}, p = LEN(d, p)"]

    def source(self) -> str:
        return "\n\n".join("\n".join(lines) for lines in self.funcs.values()) + "\n"


def compile_reader(parsed: dict[str, Any], memo_records: frozenset[str] = frozenset()
                   ) -> Callable[[bytes], tuple[Any, int]]:
    """A function reading Avro binary of the (fastavro-parsed) record schema ``parsed`` from
    ``bytes``: ``read(body) -> (value, end)``; raises Unsupported when the schema has a construct
    this module does not compile. ``memo_records``: short names of record types whose values are
    memoised by their encoding (arrays of strings always are)."""
    if parsed.get("type") != "record":
        raise Unsupported("top-level schema is not a record")
    gen = _Gen(parsed, memo_records)
    env: dict[str, Any] = {
        "Refused": Refused, "SMALL": _SMALL, "LONG": read_long, "LEN": read_length, "M": gen.memos,
    }
    src = gen.source()
    exec(compile(src, f"<avro reader {parsed.get('name')}>", "exec"), env)  # noqa: S102  our own generated code
    top = env[gen.top]

    def read(body: bytes) -> tuple[Any, int]:
        if type(body) is not bytes:
            raise Refused("not bytes")
        value, end = top(body, 0)
        if end > len(body):  # a string or bytes value cut short: sliced, not read
            raise Refused("body cut short")
        return value, end

    read.source = src  # type: ignore[attr-defined]  for reading what was generated
    return read
