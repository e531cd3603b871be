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
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

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


def encode_body(name: str, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema(name).parsed, record)
    return buf.getvalue()


def encode(name: str, record: dict[str, Any]) -> bytes:
    """Single-object encoding of ``record`` with the current schema ``name``."""
    return SINGLE_OBJECT_MAGIC + schema(name).fingerprint + encode_body(name, record)


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
