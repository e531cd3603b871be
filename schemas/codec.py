"""Avro codec for tetrapipe's Kafka messages.

Framing (ARCHITECTURE.md): Avro single-object encoding by default: ``C3 01`` + the 8-byte
little-endian CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form + the Avro
binary body. With a schema registry, Confluent framing: ``00`` + big-endian 4-byte schema id.

Readers resolve an older writer schema (looked up by fingerprint among ``schemas/history``) to the
current reader schema, so data written with an older schema version stays readable.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form
from fastavro.validation import validate

from schemas.compiled_reader import compile_reader
from schemas.compiled_writer import compile_writer
from schemas.schema_gen import Unsupported

SCHEMA_DIR = Path(__file__).parent
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"


class CodecError(ValueError):
    """A message that is not a valid tetrapipe Avro message."""


def _crc64_table() -> list[int]:
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    return table


_CRC_TABLE = _crc64_table()


def crc64_avro(data: bytes) -> int:
    """The Avro spec's Rabin fingerprint (CRC-64-AVRO)."""
    fp = 0xC15D213AA4D7A795
    for b in data:
        fp = (fp >> 8) ^ _CRC_TABLE[(fp ^ b) & 0xFF]
    return fp


@dataclass(frozen=True)
class Schema:
    name: str
    raw: dict[str, Any]
    parsed: Any
    fingerprint: bytes  # 8 bytes, little-endian, as in single-object encoding

    @property
    def canonical(self) -> str:
        return to_parsing_canonical_form(self.parsed)


def _load(path: Path) -> Schema:
    raw = json.loads(path.read_text())
    parsed = fastavro.parse_schema(raw, _write_hint=True, _force=True)
    fp = crc64_avro(to_parsing_canonical_form(parsed).encode())
    return Schema(path.stem, raw, parsed, struct.pack("<Q", fp))


@cache
def schema(name: str) -> Schema:
    """The current schema by file stem: ``event`` or ``raw_batch``."""
    return _load(SCHEMA_DIR / f"{name}.avsc")


@cache
def _writers(name: str) -> dict[bytes, Schema]:
    """Every known version of a schema, current and historical, by fingerprint."""
    found = {schema(name).fingerprint: schema(name)}
    for path in sorted((SCHEMA_DIR / "history").glob(f"{name}.v*.avsc")):
        s = _load(path)
        found.setdefault(s.fingerprint, s)  # a copy of the current schema: keep the current object,
        # whose identity with the reader lets fastavro skip schema resolution
    return found


# fastavro picks the branch of a ["null", Record] union by validating the value against the
# record, again at every nesting level of an event (event → process_exec → process → cap, ns,
# ...): that was two thirds of encode(). A value that validates once as a whole is written with
# those branches named (fastavro's tuple notation), which skips the repeated validation and gives
# the same bytes; a value that does not validate is written exactly as before (same refusal).
# Measured with `python -m bench.avro_union`.

def _branch_namer(schema_: dict[str, Any]) -> Callable[[Any], Any] | None:
    """A function rewriting a record so its ["null", Record] unions name their branch, or None
    when the schema has no such union."""
    named = schema_.get("__named_schemas", {})
    plans: dict[str, list[tuple[str, Callable[[Any], Any]]]] = {}

    def for_type(t: Any) -> Callable[[Any], Any] | None:
        if isinstance(t, list):
            if len(t) == 2 and t[0] == "null":
                rec = named.get(t[1]) if isinstance(t[1], str) else t[1]
                if isinstance(rec, dict) and rec.get("type") == "record":
                    conv = for_record(rec)
                    branch = rec["name"]
                    return lambda v: v if v is None else (branch, conv(v))
            return None
        if isinstance(t, str):
            t = named.get(t)
        if isinstance(t, dict) and t.get("type") == "record":
            return for_record(t) if _has_plan(t) else None
        if isinstance(t, dict) and t.get("type") == "array":
            item = for_type(t["items"])
            return None if item is None else (lambda v: [item(x) for x in v])
        return None

    def _has_plan(rec: dict[str, Any]) -> bool:
        for_record(rec)
        return bool(plans[rec["name"]])

    def for_record(rec: dict[str, Any]) -> Callable[[Any], Any]:
        name = rec["name"]
        if name not in plans:
            plans[name] = []  # filled below; recursive references see it through the table
            plans[name].extend((f["name"], c) for f in rec["fields"] if (c := for_type(f["type"])))
        plan = plans[name]

        def conv(v: Any) -> Any:
            if not isinstance(v, dict):
                return v
            out = dict(v)
            for key, c in plan:
                if out.get(key) is not None:
                    out[key] = c(out[key])
            return out
        return conv

    top = for_record(schema_)
    return top if plans[schema_["name"]] else None


@cache
def _namer(name: str) -> Callable[[Any], Any] | None:
    return _branch_namer(schema(name).parsed)


# The writer generated from the schema (schemas/compiled_writer.py) writes the same bytes as
# fastavro ≈ 10× faster; what it refuses (anything not of exactly the types the schema asks for)
# goes through fastavro as before, so fastavro alone decides what is valid and how it is refused.
# Measured with `python -m bench.avro_union`.
MEMO_RECORDS = {"event": frozenset({"Namespaces", "ProcessCredentials", "Pod"})}


@cache
def _compiled(name: str) -> Callable[[Any], bytes] | None:
    try:
        return compile_writer(schema(name).parsed, MEMO_RECORDS.get(name, frozenset()))
    except Unsupported:
        return None


@cache
def _native(name: str) -> Callable[[Any], bytes] | None:
    """The compiled writer (schemas/native_writer.py), or None: switched off
    (TETRAPIPE_NO_EXTENSIONS=1), not buildable, or a schema it does not compile."""
    from schemas import native_writer  # loads (or builds) the C module at first use

    return native_writer.writer(schema(name).parsed)


def encode_body(name: str, record: dict[str, Any]) -> bytes:
    native = _native(name)
    if native is not None:
        try:
            return native(record)
        except Exception:  # noqa: BLE001, S110  refused: the Python writer, then fastavro, decide
            pass
    fast = _compiled(name)
    if fast is not None:
        try:
            return fast(record)
        except Exception:  # noqa: BLE001, S110  refused (or odd: unhashable, bad UTF-8): fastavro decides
            pass
    return encode_body_fastavro(name, record)


def encode_body_fastavro(name: str, record: dict[str, Any]) -> bytes:
    """fastavro's encoding of ``record`` (validated once, union branches named)."""
    parsed = schema(name).parsed
    namer = _namer(name)
    if namer is not None and validate(record, parsed, raise_errors=False):
        record = namer(record)  # same bytes, without fastavro re-validating at every level
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, record)
    return buf.getvalue()


def encode(name: str, record: dict[str, Any]) -> bytes:
    """Single-object encoding of ``record`` with the current schema ``name``."""
    return SINGLE_OBJECT_MAGIC + schema(name).fingerprint + encode_body(name, record)


# The reader generated from the schema (schemas/compiled_reader.py) returns what fastavro's reader
# returns ≈ 3-4× faster, for messages written with the current schema (single-object with its
# fingerprint, or a Confluent id whose schema has the same canonical form); older writer schemas go
# through fastavro's schema resolution. Whatever the generated reader does not read (cut or
# garbage bytes, encodings our writers never produce) is read again by fastavro, so fastavro alone
# decides what is refused and how. Measured with `python -m bench.avro_read`.
MEMO_READ_RECORDS = {"event": frozenset({"Namespaces", "ProcessCredentials", "Capabilities", "Pod"})}
_CURRENT_LIMIT = 256


@cache
def _reader(name: str) -> Callable[[bytes], tuple[Any, int]] | None:
    try:
        return compile_reader(schema(name).parsed, MEMO_READ_RECORDS.get(name, frozenset()))
    except Unsupported:
        return None


_current: dict[tuple[str, int], tuple[Any, bool]] = {}


def _is_current(name: str, writer_parsed: Any) -> bool:
    """Whether a writer schema is the current schema ``name`` (same Parsing Canonical Form).
    Registry clients keep one parsed object per schema id: the answer is kept per object (the
    object held with it, so its id cannot be reused meanwhile)."""
    current = schema(name).parsed
    if writer_parsed is current:
        return True
    key = (name, id(writer_parsed))
    known = _current.get(key)
    if known is not None and known[0] is writer_parsed:
        return known[1]
    try:
        same = to_parsing_canonical_form(writer_parsed) == schema(name).canonical
    except Exception:  # noqa: BLE001  not a schema fastavro can print: not ours
        same = False
    if len(_current) >= _CURRENT_LIMIT:
        _current.clear()
    _current[key] = (writer_parsed, same)
    return same


def decode(name: str, data: bytes, registry_lookup: Any = None) -> dict[str, Any]:
    """Decode a single-object or Confluent-framed message into a dict of the current schema.

    ``registry_lookup(schema_id) -> dict`` resolves Confluent schema ids; without it such a
    message is refused.
    """
    reader = schema(name)
    if data[:2] == SINGLE_OBJECT_MAGIC:
        if len(data) < 10:
            raise CodecError("single-object message shorter than its 10-byte header")
        writer = _writers(name).get(data[2:10])
        if writer is None:
            raise CodecError(f"unknown schema fingerprint {data[2:10].hex()} for {name}")
        body = data[10:]
        writer_parsed = writer.parsed
    elif data[:1] == CONFLUENT_MAGIC and registry_lookup is not None:
        if len(data) < 5:
            raise CodecError("Confluent-framed message shorter than its 5-byte header")
        (schema_id,) = struct.unpack(">I", data[1:5])
        writer_parsed = fastavro.parse_schema(registry_lookup(schema_id))
        body = data[5:]
    else:
        raise CodecError(f"not an Avro message of ours (starts with {data[:2].hex() or 'nothing'})")
    fast = _reader(name) if _is_current(name, writer_parsed) else None
    if fast is not None:
        try:
            rec, end = fast(body)
        except Exception:  # noqa: BLE001, S110  refused (cut, garbage, odd encoding): fastavro decides
            pass
        else:
            if end != len(body):
                raise CodecError(f"{len(body) - end} trailing bytes after the Avro body")
            return rec  # type: ignore[no-any-return]
    try:
        buf = io.BytesIO(body)
        rec = fastavro.schemaless_reader(buf, writer_parsed, reader.parsed)
    except Exception as exc:  # fastavro raises many types on garbage
        raise CodecError(f"Avro body does not decode with schema {name}: {exc}") from exc
    if buf.tell() != len(body):
        raise CodecError(f"{len(body) - buf.tell()} trailing bytes after the Avro body")
    return rec  # type: ignore[return-value]


# ---- raw record framing inside RawBatch.records -------------------------------------------

_LEN = struct.Struct("<I")


def frame_records(records: list[bytes]) -> bytes:
    return b"".join(_LEN.pack(len(r)) + r for r in records)


def split_records(blob: bytes) -> list[bytes]:
    """Inverse of frame_records; raises CodecError when the framing is broken."""
    out = []
    off = 0
    n = len(blob)
    while off < n:
        if off + 4 > n:
            raise CodecError(f"record length prefix cut at byte {off}")
        (size,) = _LEN.unpack_from(blob, off)
        off += 4
        if off + size > n:
            raise CodecError(f"record at byte {off} claims {size} bytes, {n - off} remain")
        out.append(blob[off:off + size])
        off += size
    return out
