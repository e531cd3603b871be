"""Schema evolution is BACKWARD: new readers read data written with every older schema version
(schemas/history), and an old reader reads new data once it has the writer schema (from the
registry or a history file). Checked with fastavro (ours) and the official ``avro`` library."""

from __future__ import annotations

import copy
import io
import json
import struct
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import fastavro
import pytest
from fake_schema_registry import FakeSchemaRegistry, backward_problems
from json_events import exec_event, kprobe_event

from schemas import codec
from schemas.registry import RegistryClient, RegistryError

SCHEMAS = Path(codec.__file__).parent


def history() -> list[Path]:
    return sorted((SCHEMAS / "history").glob("event.v*.avsc"))


def evolved(raw: dict[str, Any]) -> dict[str, Any]:
    """The current event schema with fields added as the rules say: optional, default null."""
    new = copy.deepcopy(raw)
    new["fields"].append({"name": "tetrapipe_future", "type": ["null", "string"], "default": None})
    proc = new["fields"][0]["type"][1]["fields"][0]["type"][1]  # ProcessExec.process → Process
    assert proc["name"] == "Process"
    proc["fields"].append({"name": "future_flag", "type": ["null", "boolean"], "default": None})
    return new


def fa_write(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema, _force=True), record)
    return buf.getvalue()


def avro_read(writer: dict[str, Any], reader: dict[str, Any], body: bytes) -> dict[str, Any]:
    r = avro.io.DatumReader(avro.schema.parse(json.dumps(writer)), avro.schema.parse(json.dumps(reader)))
    return r.read(avro.io.BinaryDecoder(io.BytesIO(body)))


def test_there_is_a_v1_and_every_version_is_backward_compatible() -> None:
    assert history(), "schemas/history must hold the released versions of event.avsc"
    current = codec.schema("event").raw
    for path in history():
        old = json.loads(path.read_text())
        assert backward_problems(old, current) == [], path.name


@pytest.mark.parametrize("path", history(), ids=lambda p: p.name)
def test_current_reader_reads_every_history_version(path: Path) -> None:
    old = json.loads(path.read_text())
    ev = exec_event(pid=4242, args="-c true")
    parsed_old = fastavro.parse_schema(old, _force=True)
    fp = struct.pack("<Q", codec.crc64_avro(fastavro.schema.to_parsing_canonical_form(parsed_old).encode()))
    msg = codec.SINGLE_OBJECT_MAGIC + fp + fa_write(old, ev)
    got = codec.decode("event", msg)
    assert got["process_exec"]["process"]["pid"] == 4242
    assert got["process_exec"]["process"]["arguments"] == "-c true"


def test_new_reader_reads_old_data_and_old_reader_reads_new_data() -> None:
    v1 = json.loads(history()[0].read_text())
    v2 = evolved(v1)
    assert backward_problems(v1, v2) == []
    ev = kprobe_event(pid=77)
    old_body = fa_write(v1, ev)

    # BACKWARD: a v2 reader reads v1 data; the new fields take their defaults
    got = fastavro.schemaless_reader(io.BytesIO(old_body), fastavro.parse_schema(v1, _force=True),
                                     fastavro.parse_schema(v2, _force=True))
    assert got["tetrapipe_future"] is None and got["process_kprobe"]["process"]["pid"] == 77
    got2 = avro_read(v1, v2, old_body)
    assert got2["tetrapipe_future"] is None and got2["process_kprobe"]["function_name"] == "__x64_sys_write"

    # an old reader reads new data, given the writer schema: the new fields are skipped
    ev_new = copy.deepcopy(ev)
    ev_new["tetrapipe_future"] = "hello"
    new_body = fa_write(v2, ev_new)
    old_view = avro_read(v2, v1, new_body)
    assert "tetrapipe_future" not in old_view and old_view["process_kprobe"]["process"]["pid"] == 77
    # ... and through our codec, as a consumer on Confluent framing gets it: writer from the registry
    framed = codec.CONFLUENT_MAGIC + struct.pack(">I", 9) + new_body
    dec = codec.decode("event", framed, registry_lookup=lambda i: fastavro.parse_schema(v2, _force=True))
    assert dec["process_kprobe"]["policy_name"] == "fd-install" and "tetrapipe_future" not in dec


def test_registry_refuses_an_incompatible_version() -> None:
    v1 = codec.schema("event").raw
    bad = copy.deepcopy(v1)
    bad["fields"].append({"name": "required_now", "type": "string"})  # no default: breaks BACKWARD
    with FakeSchemaRegistry() as reg:
        client = RegistryClient(reg.url)
        first = client.register("t.events-value", v1)
        assert client.register("t.events-value", evolved(v1)) == first + 1
        with pytest.raises(RegistryError, match="incompatible") as err:
            client.register("t.events-value", bad)
        assert err.value.status == 409 and not err.value.unreachable
