"""Bad input on the raw topic goes to the dead-letter topic, is counted, and the enricher goes on."""

from __future__ import annotations

import asyncio

from harness import Pipeline, wait_until

from bpf import records
from collector.batcher import Batcher
from tetrapipe import kafka
from tetrapipe.config import Config


def _exec_record(pid: int, ktime: int, binary: bytes) -> bytes:
    rec = records.ExecRecord(
        records.Header(records.REC_EXEC, 1, 0, pid, pid, ktime), ppid=1, flags=0, start_time=ktime,
        parent_start_time=0, cgroup_id=0, uid=0, gid=0, euid=0, egid=0, suid=0, sgid=0, fsuid=0,
        fsgid=0, auid=0xFFFFFFFF, securebits=0, cap_permitted=0, cap_effective=0, cap_inheritable=0,
        ns=(0,) * 10, user_ns_level=0, nspid=pid, exe_ino=0, exe_nlink=1, exe_mode=0o755,
        comm=b"x", filename=binary, args=binary + b"\0a\0", cwd=b"/", cgroup_name=b"")
    return records.encode_exec(rec)


async def _produce(cfg: Config, values: list[bytes]) -> None:
    await kafka.ensure_topics(cfg, [cfg.raw_topic])
    p = await kafka.start_producer(cfg)
    try:
        for v in values:
            await p.send_and_wait(cfg.raw_topic, v, key=b"n")
    finally:
        await p.stop()


async def _read_all(cfg: Config, topic: str, n: int) -> list:
    c = kafka.make_consumer(cfg, None, [topic])  # type: ignore[arg-type]
    await c.start()
    out: list = []
    try:
        for _ in range(50):
            got = await c.getmany(timeout_ms=200)
            for msgs in got.values():
                out.extend(msgs)
            if len(out) >= n:
                break
    finally:
        await c.stop()
    return out


def test_corrupt_batches_go_to_deadletter(pipeline: Pipeline) -> None:
    enricher = pipeline.start("enricher", "enricher")
    b = pipeline.base
    cfg = Config(kafka=b["kafka"], raw_topic=b["raw_topic"], events_topic=b["events_topic"],
                 deadletter_topic=b["deadletter_topic"])
    batcher = Batcher(pipeline.node_name, records.layout_id())
    good1 = batcher.frame([_exec_record(100, 1000, b"/bin/good1")])
    wrong_layout = Batcher(pipeline.node_name, "0000000000000000").frame([_exec_record(101, 1001, b"/x")])
    garbage = b"\xc3\x01not avro at all"
    bad_record = batcher.frame([_exec_record(102, 1002, b"/bin/good2"), b"\x01\x00\x01\x00short"])
    truncated = good1[: len(good1) // 2]
    good2 = batcher.frame([_exec_record(103, 1003, b"/bin/good3")])
    asyncio.run(_produce(cfg, [good1, wrong_layout, garbage, bad_record, truncated, good2]))

    def binaries() -> set[str]:
        return {e["process_exec"]["process"]["binary"] for e in _events(pipeline) if "process_exec" in e}

    wait_until(lambda: {"/bin/good1", "/bin/good2", "/bin/good3"} <= binaries(), what="good events")
    dead = asyncio.run(_read_all(cfg, cfg.deadletter_topic, 4))
    assert len(dead) == 4
    values = {m.value for m in dead}
    assert garbage in values and wrong_layout in values and truncated in values
    assert b"\x01\x00\x01\x00short" in values  # the bad record alone, its batch-mates delivered
    errors = [dict(m.headers)["tetrapipe-error"].decode() for m in dead]
    assert any("unknown record layout" in e for e in errors)
    assert enricher.metric("tetrapipe_deadletter_messages_total", stage="enricher") == 4
    assert enricher.proc is not None and enricher.proc.poll() is None


def _events(pipeline: Pipeline) -> list[dict]:
    from exporters import protojson
    from schemas import codec

    b = pipeline.base
    cfg = Config(kafka=b["kafka"])
    msgs = asyncio.run(_read_all(cfg, b["events_topic"], 10**9 if False else 3))
    return [protojson.to_protojson(codec.decode("event", m.value)) for m in msgs]
