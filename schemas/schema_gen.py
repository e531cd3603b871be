"""What the generated Avro writer (schemas/compiled_writer.py) and reader
(schemas/compiled_reader.py) share: the walk of a parsed schema's types, named types resolved,
each kind handed to the generator's own method, and what neither compiles refused as
:class:`Unsupported` (the caller then uses fastavro)."""

from __future__ import annotations

from typing import Any

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "string", "bytes"})


class Unsupported(ValueError):
    """The schema has a construct the generated code does not handle."""


def short(fullname: str) -> str:
    return fullname.rsplit(".", 1)[-1]


class SchemaGen:
    """Generated Python, one function per record (``funcs``): a subclass writes the lines of each
    kind (``record``, ``array``, ``map``, ``union``, ``primitive``) for the value in variable ``v``."""

    def __init__(self, parsed: dict[str, Any], memo_records: frozenset[str]) -> None:
        self.named: dict[str, Any] = dict(parsed.get("__named_schemas", {}))
        self.memo_records = memo_records
        self.funcs: dict[str, list[str]] = {}
        self.tmp = 0

    def var(self) -> str:
        self.tmp += 1
        return f"v{self.tmp}"

    def resolve(self, t: Any) -> Any:
        if isinstance(t, str) and t in self.named:
            return self.named[t]
        return t

    def value(self, v: str, t: Any) -> list[str]:
        """The lines for a value of Avro type ``t`` in variable ``v``."""
        t = self.resolve(t)
        if isinstance(t, list):
            return self.union(v, t)
        if isinstance(t, dict):
            kind = t.get("type")
            if kind == "record":
                return self.record(v, t)
            if kind == "array":
                return self.array(v, t["items"])
            if kind == "map":
                return self.map(v, t["values"])
            if isinstance(kind, str) and kind in PRIMITIVES and t.get("logicalType") is None:
                return self.value(v, kind)
            raise Unsupported(f"schema type {kind!r}")
        return self.primitive(v, t)

    def record(self, v: str, rec: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    def array(self, v: str, items: Any) -> list[str]:
        raise NotImplementedError

    def map(self, v: str, values: Any) -> list[str]:
        raise NotImplementedError

    def union(self, v: str, branches: list[Any]) -> list[str]:
        raise NotImplementedError

    def primitive(self, v: str, t: Any) -> list[str]:
        raise NotImplementedError
