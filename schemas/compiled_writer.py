"""Avro binary writer generated from one schema: the fast path of ``codec.encode_body``.

fastavro's writer walks the schema for every value and picks each union branch by validating the
value (≈ 130 µs for a 2.8 kB event here, plus ≈ 100 µs for the one validation pass codec does);
this module turns a parsed schema into Python source, one function per record type with every
field's checks and writes inline, and compiles it once.

Contract: ``writer(value)`` returns exactly the bytes ``fastavro.schemaless_writer`` writes for
``value``, or raises (``Refused``, or whatever an odd value makes Python raise). It writes only
values whose every part has exactly the type its schema asks for (``type(x) is int`` for
int/long, within range; ``bool``; ``str``; ``bytes``; ``list`` for arrays; ``dict`` with ``str``
keys for maps and records, without fastavro's ``-type`` key; ``None`` for null) and refuses
anything else, including what fastavro would accept (tuples for union branches, other Sequence
or Mapping types, int subclasses): ``codec.encode_body`` sends whatever this refuses through
fastavro, so the fast path never decides what is valid.

Memos (bounded, keyed by value, never by object identity):
- longs outside -64..63 (pids, uids, inode numbers), looked up after the exact-type check;
- strings and lists of strings (capability names: 84 % of an event's bytes) by the value itself
  (the ``str``, or the tuple of a list's items); filled only after the items passed the type
  check, so a hit is a value equal (``==``) to a list of ``str`` that was written;
- the record types named in ``memo_records`` (namespaces, credentials, pod) by
  ``marshal.dumps`` of the value: marshal writes builtin values with their exact type (``1``,
  ``True`` and ``1.0`` differ, subclasses are refused) and ``marshal.loads`` gives the value back,
  so equal keys are alike values. A process whose pod arrives late or whose refcnt changes is a
  different key: no stale hit, nothing to invalidate.
"""

from __future__ import annotations

import marshal
from collections.abc import Callable
from typing import Any

from schemas.schema_gen import SchemaGen, Unsupported, short

INT_MIN, INT_MAX = -(1 << 31), (1 << 31) - 1
LONG_MIN, LONG_MAX = -(1 << 63), (1 << 63) - 1
MEMO_LIMIT = 8192  # entries per memo; a full memo is emptied and refilled


class Refused(ValueError):
    """A value the fast path does not write (fastavro decides what it is)."""


# ---- primitives shared by the generated code -------------------------------------------------

def _zigzag_table() -> list[bytes]:
    """Encodings of the longs -64..63 (one byte each), indexed by value + 64."""
    return [bytes([(v << 1) ^ (v >> 63)]) for v in range(-64, 64)]


_SMALL = _zigzag_table()
# 14 bits of a varint at a time: the two bytes (both with the continuation bit) of each value
_PAIRS = [bytes([(i & 0x7F) | 0x80, (i >> 7) | 0x80]) for i in range(1 << 14)]


def write_long(n: int) -> bytes:
    """Avro long: zig-zag, then base-128 varint (n already checked to be a 64-bit int)."""
    if -64 <= n < 64:
        return _SMALL[n + 64]
    z = (n << 1) ^ (n >> 63)
    out = b""
    while z >= 1 << 14:
        out += _PAIRS[z & 0x3FFF]
        z >>= 14
    if z >= 0x80:
        return out + bytes(((z & 0x7F) | 0x80, z >> 7))
    return out + bytes((z,))


class _Memo(dict):  # type: ignore[type-arg]
    """A dict that empties itself when it reaches MEMO_LIMIT entries."""

    def put(self, key: Any, value: bytes) -> bytes:
        if len(self) >= MEMO_LIMIT:
            self.clear()
        self[key] = value
        return value


def _long_writer(memo: _Memo) -> Callable[[int], bytes]:
    def write_long_kept(n: int) -> bytes:
        return memo.put(n, write_long(n))
    return write_long_kept


def _string_writer(memo: _Memo) -> Callable[[str], bytes]:
    def write_string(s: str) -> bytes:
        b = s.encode()
        n = len(b)
        return memo.put(s, (_SMALL[n + 64] if n < 64 else write_long(n)) + b)
    return write_string


def _string_list_writer(memo: _Memo, strings: _Memo) -> Callable[[list[Any], tuple[Any, ...]], bytes]:
    write_string = _string_writer(strings)

    def write_string_list(items: list[Any], key: tuple[Any, ...]) -> bytes:
        out = [write_long(len(items))] if items else []
        for s in items:
            if type(s) is not str:
                raise Refused("array item is not a str")
            out.append(strings.get(s) or write_string(s))
        out.append(b"\x00")
        return memo.put(key, b"".join(out))
    return write_string_list


# ---- code generation ---------------------------------------------------------------------------

class _Gen(SchemaGen):
    def __init__(self, parsed: dict[str, Any], memo_records: frozenset[str]) -> None:
        super().__init__(parsed, memo_records)
        self.consts: list[Any] = []
        self.top = self.record_func(parsed)

    def const(self, value: Any) -> str:
        if value is None or type(value) in (bool, int, str):
            return repr(value)
        self.consts.append(value)
        return f"C[{len(self.consts) - 1}]"

    def record_func(self, rec: dict[str, Any]) -> str:
        name = rec["name"]
        fname = "w_" + short(name)
        if fname in self.funcs:
            return fname
        self.funcs[fname] = []  # placeholder: recursive references see the name
        body = ['if type(d) is not dict or "-type" in d:', "    raise Refused(" + repr(name) + ")",
                "g = d.get"]
        for f in rec["fields"]:
            v = self.var()
            if "default" in f:
                body.append(f"{v} = g({f['name']!r}, {self.const(f['default'])})")
            else:
                body += [f"{v} = g({f['name']!r}, MISSING)", f"if {v} is MISSING:",
                         f"    raise Refused({f['name']!r})"]
            body += self.value(v, f["type"])
        if short(name) not in self.memo_records:
            self.funcs[fname] = [f"def {fname}(d, o):", *("    " + ln for ln in body)]
        else:  # the record's bytes kept by an exact key of its value: marshal's bytes
            inner = fname + "_write"
            self.funcs[inner] = [f"def {inner}(d, o):", *("    " + ln for ln in body)]
            memo = self.const(_Memo())
            self.funcs[fname] = [
                f"def {fname}(d, o):",
                "    try:",
                "        k = KEY(d)",
                "    except ValueError:  # not marshal's exact builtin types: write it, checked",
                f"        return {inner}(d, o)",
                f"    b = {memo}.get(k)",
                "    if b is None:",
                "        s = bytearray()",
                f"        {inner}(d, s)",
                f"        b = {memo}.put(k, bytes(s))",
                "    o += b",
            ]
        return fname

    def record(self, v: str, rec: dict[str, Any]) -> list[str]:
        return [f"{self.record_func(rec)}({v}, o)"]

    def primitive(self, v: str, t: Any) -> list[str]:
        """Lines writing the value held in variable ``v`` of primitive type ``t`` to bytearray ``o``."""
        if t == "null":
            return [f"if {v} is not None:", f"    raise Refused({v!r})"]
        if t == "boolean":
            return [f"if {v} is True:", "    o += b'\\x01'", f"elif {v} is False:", "    o += b'\\x00'",
                    "else:", f"    raise Refused({v!r})"]
        if t in ("int", "long"):
            lo, hi = (INT_MIN, INT_MAX) if t == "int" else (LONG_MIN, LONG_MAX)
            return [f"if type({v}) is not int or not {lo} <= {v} <= {hi}:", f"    raise Refused({v!r})",
                    f"o += SMALL[{v} + 64] if -64 <= {v} < 64 else (LM.get({v}) or LW({v}))"]
        if t == "string":
            return [f"if type({v}) is not str:", f"    raise Refused({v!r})",
                    f"o += STR.get({v}) or S({v})"]
        if t == "bytes":
            return [f"if type({v}) is not bytes:", f"    raise Refused({v!r})",
                    f"o += L(len({v}))", f"o += {v}"]
        raise Unsupported(f"schema type {t!r}")

    def union(self, v: str, branches: list[Any]) -> list[str]:
        if len(branches) != 2 or branches[0] != "null":
            raise Unsupported(f"union {branches!r} (only [\"null\", T] is compiled)")
        return [f"if {v} is None:", "    o += b'\\x00'", "else:", "    o += b'\\x02'",
                *("    " + ln for ln in self.value(v, branches[1]))]

    def array(self, v: str, items: Any) -> list[str]:
        head = [f"if type({v}) is not list:", f"    raise Refused({v!r})"]
        if self.resolve(items) == "string":
            k = self.var()
            return [*head, f"{k} = tuple({v})", f"o += SL.get({k}) or SLW({v}, {k})"]
        x = self.var()
        return [*head, f"if {v}:", f"    o += L(len({v}))", f"    for {x} in {v}:",
                *("        " + ln for ln in self.value(x, items)), "o += b'\\x00'"]

    def map(self, v: str, values: Any) -> list[str]:
        k, x = self.var(), self.var()
        return [f"if type({v}) is not dict:", f"    raise Refused({v!r})", f"if {v}:",
                f"    o += L(len({v}))", f"    for {k}, {x} in {v}.items():",
                *("        " + ln for ln in self.value(k, "string")),
                *("        " + ln for ln in self.value(x, values)), "o += b'\\x00'"]

    def source(self) -> str:
        return "\n\n".join("\n".join(lines) for lines in self.funcs.values()) + "\n"




class _Missing:
    pass


def compile_writer(parsed: dict[str, Any], memo_records: frozenset[str] = frozenset()) -> Callable[[Any], bytes]:
    """A function writing values of the (fastavro-parsed) record schema ``parsed`` as Avro
    binary; raises Unsupported when the schema has a construct this module does not compile.
    ``memo_records``: short names of record types whose bytes are memoised by value."""
    if parsed.get("type") != "record":
        raise Unsupported("top-level schema is not a record")
    gen = _Gen(parsed, memo_records)
    strings, string_lists, longs = _Memo(), _Memo(), _Memo()
    env: dict[str, Any] = {
        "C": gen.consts, "KEY": marshal.dumps, "MISSING": _Missing(), "Refused": Refused,
        "SMALL": _SMALL, "L": write_long, "LM": longs, "LW": _long_writer(longs),
        "STR": strings, "S": _string_writer(strings), "SL": string_lists,
        "SLW": _string_list_writer(string_lists, strings),
    }
    src = gen.source()
    exec(compile(src, f"<avro writer {parsed.get('name')}>", "exec"), env)  # noqa: S102  our own generated code
    top = env[gen.top]

    def write(value: Any) -> bytes:
        out = bytearray()
        top(value, out)
        return bytes(out)

    write.source = src  # type: ignore[attr-defined]  for reading what was generated
    return write
