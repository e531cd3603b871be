"""Avro on the bus through the real enricher and exporter: single-object encoding by default, and
with a schema registry Confluent framing (00 + big-endian id, subject <topic>-value). A consumer
written with another Avro library (the official ``avro``) and only the .avsc files decodes the
messages the enricher really produced."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import pytest
from fake_schema_registry import FakeSchemaRegistry
from harness import Pipeline, wait_until

from bpf import records
from collector.batcher import Batcher
from schemas import codec
from schemas.registry import EventSerializer, RegistryClient, RegistryError, decoder_for
from tetrapipe import kafka
from tetrapipe.config import Config

SCHEMAS = Path(codec.__file__).parent


def exec_record(pid: int, ktime: int, binary: bytes, args: bytes) -> bytes:
    rec = records.ExecRecord(
        records.Header(records.REC_EXEC, 1, 0, pid, pid, ktime), ppid=1, flags=0, start_time=ktime,
        parent_start_time=0, cgroup_id=0, uid=0, gid=0, euid=0, egid=0, suid=0, sgid=0, fsuid=0,
        fsgid=0, auid=0xFFFFFFFF, securebits=0, cap_permitted=0, cap_effective=0, cap_inheritable=0,
        ns=(0,) * 10, user_ns_level=0, nspid=pid, exe_ino=0, exe_nlink=1, exe_mode=0o755,
        comm=b"x", filename=binary, args=binary + b"\0" + args + b"\0", cwd=b"/", cgroup_name=b"")
    return records.encode_exec(rec)


def cfg_of(p: Pipeline) -> Config:
    b = p.base
    return Config(kafka=b["kafka"], raw_topic=b["raw_topic"], events_topic=b["events_topic"],
                  deadletter_topic=b["deadletter_topic"])


async def produce_raw(cfg: Config, node: str, pids: list[int]) -> None:
    batcher = Batcher(node, records.layout_id())
    batch = batcher.frame([exec_record(pid, 10_000 + pid, b"/usr/bin/avro-test", f"arg{pid}".encode())
                           for pid in pids])
    await kafka.ensure_topics(cfg, [cfg.raw_topic])
    prod = await kafka.start_producer(cfg)
    try:
        await prod.send_and_wait(cfg.raw_topic, batch, key=node.encode())
    finally:
        await prod.stop()


async def read_topic(cfg: Config, topic: str, n: int, timeout: float = 20.0) -> list[bytes]:
    c = kafka.make_consumer(cfg, None, [topic])  # type: ignore[arg-type]
    await c.start()
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n and time.monotonic() < deadline:
            got = await c.getmany(timeout_ms=200)
            for msgs in got.values():
                out.extend(m.value for m in msgs)
    finally:
        await c.stop()
    return out


def our_pids(docs: list[dict[str, Any]]) -> set[int]:
    return {d["process_exec"]["process"]["pid"] for d in docs
            if d.get("process_exec", {}).get("process", {}).get("binary") == "/usr/bin/avro-test"}


def avro_lib_decode_single_object(msg: bytes) -> dict[str, Any]:
    """What a consumer with the official avro library and only the .avsc files does."""
    assert msg[:2] == b"\xc3\x01", msg[:4].hex()
    writers = {}
    for path in [SCHEMAS / "event.avsc", *sorted((SCHEMAS / "history").glob("event.v*.avsc"))]:
        s = avro.schema.parse(path.read_text())
        writers[s.fingerprint("CRC-64-AVRO")] = s
    writer = writers[msg[2:10]]
    reader = avro.schema.parse((SCHEMAS / "event.avsc").read_text())
    dec = avro.io.BinaryDecoder(io.BytesIO(msg[10:]))
    return avro.io.DatumReader(writer, reader).read(dec)


def test_single_object_messages_decode_with_another_avro_library(pipeline: Pipeline) -> None:
    pipeline.start("enricher", "enricher")
    cfg = cfg_of(pipeline)
    pids = [31001, 31002, 31003]
    asyncio.run(produce_raw(cfg, pipeline.node_name, pids))
    msgs = asyncio.run(read_topic(cfg, cfg.events_topic, len(pids)))
    decoded = [avro_lib_decode_single_object(m) for m in msgs]
    ours = [codec.decode("event", m) for m in msgs]
    assert our_pids(decoded) == set(pids)
    by_pid = {d["process_exec"]["process"]["pid"]: d for d in decoded if d.get("process_exec")}
    for o in ours:
        if not o.get("process_exec"):
            continue
        theirs = by_pid[o["process_exec"]["process"]["pid"]]
        assert theirs["process_exec"]["process"]["exec_id"] == o["process_exec"]["process"]["exec_id"]
        assert theirs["process_exec"]["process"]["arguments"] == f"arg{o['process_exec']['process']['pid']}"
        assert theirs["node_name"] == pipeline.node_name and theirs["time"] == o["time"]


def kcat_values(bootstrap: str, topic: str) -> list[bytes]:
    """Debian's kcat (librdkafka, no Avro in its build), a consumer that is not ours: the message
    values as they are on the wire, each printed as ``<length>:<bytes>``."""
    out = subprocess.run(["kcat", "-C", "-b", bootstrap.split(",")[0], "-t", topic, "-o", "beginning", "-e",
                          "-q", "-f", "%S:%s"], capture_output=True, timeout=30, check=True).stdout
    values, i = [], 0
    while i < len(out):
        colon = out.index(b":", i)
        n = int(out[i:colon])
        values.append(out[colon + 1:colon + 1 + n])
        i = colon + 1 + n
    return values


def test_registry_framing_end_to_end(kafka_pipeline: Pipeline) -> None:
    """On Apache Kafka. The registry is the stand-in (tests/fake_schema_registry.py): no real
    Confluent-compatible registry can be fetched from the registries this project uses (README,
    "Avro on the bus and the schema registry")."""
    pipeline = kafka_pipeline
    with FakeSchemaRegistry() as reg:
        reg.up = False  # the registry is down when the enricher starts: it waits and retries
        pipeline.settings["schema_registry_url"] = reg.url
        enricher = pipeline.start("enricher", "enricher", wait=False)
        wait_until(lambda: len(reg.requests) >= 2, timeout=30, what="registration retries")
        assert enricher.proc is not None and enricher.proc.poll() is None
        reg.up = True
        enricher.wait_ready()
        pipeline.start("export-json", "export", "json")
        cfg = cfg_of(pipeline)
        subject = f"{cfg.events_topic}-value"
        assert list(reg.subjects) == [subject]
        (sid,) = reg.subjects[subject]
        assert json.loads(reg.schemas[sid]) == json.loads((SCHEMAS / "event.avsc").read_text())

        pids = [32001, 32002]
        asyncio.run(produce_raw(cfg, pipeline.node_name, pids))
        wait_until(lambda: our_pids(pipeline.exported()) == set(pids), timeout=30,
                   what="events exported through Confluent framing")

        msgs = asyncio.run(read_topic(cfg, cfg.events_topic, 2))
        assert msgs and all(m[:5] == b"\x00" + struct.pack(">I", sid) for m in msgs)
        assert sorted(kcat_values(pipeline.bootstrap, cfg.events_topic)) == sorted(msgs)  # the same bytes
        # a Confluent consumer with the other library: writer schema from the registry by id
        text = RegistryClient(reg.url)._request("GET", f"/schemas/ids/{sid}")["schema"]
        writer = avro.schema.parse(text)
        got = [avro.io.DatumReader(writer).read(avro.io.BinaryDecoder(io.BytesIO(m[5:]))) for m in msgs]
        assert our_pids(got) == set(pids)
        # the exporter asked for the schema once, not once per message
        id_gets = [p for m, p in reg.requests if m == "GET" and p.startswith("/schemas/ids/")]
        assert len(id_gets) <= 2, id_gets

        # an exporter that cannot reach the registry waits: no dead letter, nothing lost
        pipeline.services["export-json"].stop()
        reg.up = False
        exporter = pipeline.start("export-json", "export", "json")
        asyncio.run(produce_raw(cfg, pipeline.node_name, [32003]))
        wait_until(lambda: "unreachable" in exporter.log() or "HTTP 503" in exporter.log(), timeout=30,
                   what="the exporter retrying the registry")
        assert 32003 not in our_pids(pipeline.exported())
        reg.up = True
        wait_until(lambda: 32003 in our_pids(pipeline.exported()), timeout=30, what="export after the outage")
        assert exporter.metric("tetrapipe_deadletter_messages_total") == 0
        assert asyncio.run(read_topic(cfg, cfg.deadletter_topic, 1, timeout=2)) == []


def test_registry_basic_auth_from_the_url() -> None:
    with FakeSchemaRegistry(basic_auth="key:s3cr/t") as reg:
        authed = reg.url.replace("http://", "http://key:s3cr%2Ft@")
        assert RegistryClient(authed).register("a-value", codec.schema("event").raw) == 1
        assert RegistryClient(authed).url == reg.url
        with pytest.raises(RegistryError, match="HTTP 401") as err:
            RegistryClient(reg.url).register("a-value", codec.schema("event").raw)
        assert not err.value.unreachable


def test_serializer_and_decoder_units() -> None:
    from json_events import exec_event

    ev = exec_event(pid=5)
    plain = EventSerializer("event", "t.events")
    assert plain.framing == "single-object" and plain.encode(ev)[:2] == b"\xc3\x01"
    with FakeSchemaRegistry() as reg:
        client = RegistryClient(reg.url)
        ser = EventSerializer("event", "t.events", client)
        msg = ser.encode(ev)
        assert msg[:1] == b"\x00" and struct.unpack(">I", msg[1:5])[0] == ser.schema_id
        assert reg.subjects == {"t.events-value": [ser.schema_id]}
        assert RegistryClient(reg.url).register("t.events-value", codec.schema("event").raw) == ser.schema_id
        latest = client.latest("t.events-value")
        assert latest["version"] == 1 and latest["id"] == ser.schema_id
        cfg = Config(schema_registry_url=reg.url, events_topic="t.events")
        decode = decoder_for(cfg)
        assert decode(msg)["process_exec"]["process"]["pid"] == 5
        assert decode(plain.encode(ev))["process_exec"]["process"]["pid"] == 5  # both framings
        with pytest.raises(codec.CodecError, match="Schema not found"):
            decode(b"\x00" + struct.pack(">I", 999) + msg[5:])
        with pytest.raises(codec.CodecError, match="not an Avro message"):
            decoder_for(Config())(msg)  # Confluent framing without a registry configured
        reg.up = False
        with pytest.raises(RegistryError) as err:
            decoder_for(cfg)(msg)  # a fresh decoder has no cache: the outage is not a bad message
        assert err.value.unreachable
