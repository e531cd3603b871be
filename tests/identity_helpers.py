"""Helpers of the identity tests: raw exec/fork/exit records as the kernel frames them, produced
to a pipeline's raw topic, and the exported events of given pids."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from harness import Pipeline

from bpf import records
from collector.batcher import Batcher
from tetrapipe import kafka
from tetrapipe.config import Config


def ids() -> tuple[str, str]:
    """(container id: 64 hex digits, pod uid)"""
    return uuid.uuid4().hex + uuid.uuid4().hex, str(uuid.uuid4())


def exec_record(pid: int, ppid: int, binary: str, args: list[str], cg_leaf: str = "",
                cg_ancestors: tuple[str, ...] = (), nspid: int = 0, ktime: int = 0) -> bytes:
    kt = ktime or time.monotonic_ns()
    argv = b"\0".join(a.encode() for a in [binary, *args]) + b"\0"
    rec = records.ExecRecord(
        records.Header(records.REC_EXEC, 1, 0, pid, pid, kt), ppid=ppid, flags=0, start_time=kt,
        parent_start_time=0, cgroup_id=0, uid=0, gid=0, euid=0, egid=0, suid=0, sgid=0, fsuid=0,
        fsgid=0, auid=0xFFFFFFFF, securebits=0, cap_permitted=0x1FF, cap_effective=0x1FF,
        cap_inheritable=0, ns=(0,) * 10, user_ns_level=0, nspid=nspid or pid, exe_ino=1, exe_nlink=1,
        exe_mode=0o755, comm=binary.rsplit("/", 1)[-1].encode()[:15], filename=binary.encode(),
        args=argv, cwd=b"/", cgroup_name=cg_leaf.encode(),
        cgroup_ancestors=b"\0".join(a.encode() for a in cg_ancestors))
    return records.encode_exec(rec)


def fork_record(pid: int, ppid: int) -> bytes:
    kt = time.monotonic_ns()
    return records.encode_fork(pid, kt, ppid, kt)


def exit_record(pid: int, ppid: int, code: int = 0) -> bytes:
    return records.encode_exit(pid, pid, time.monotonic_ns(), code << 8, ppid, 0)


class RawProducer:
    """Frames records into batches of the pipeline's node and produces them to its raw topic."""

    def __init__(self, pipeline: Pipeline) -> None:
        b = pipeline.base
        self.cfg = Config(kafka=b["kafka"], raw_topic=b["raw_topic"])
        self.batcher = Batcher(pipeline.node_name, records.layout_id())

    def send(self, *recs: bytes, partition: int | None = None) -> None:
        asyncio.run(self._send(list(recs), partition))

    async def _send(self, recs: list[bytes], partition: int | None) -> None:
        await kafka.ensure_topics(self.cfg, [self.cfg.raw_topic])
        p = await kafka.start_producer(self.cfg)
        try:
            await p.send_and_wait(self.cfg.raw_topic, self.batcher.frame(recs),
                                  key=self.batcher.node_name.encode(), partition=partition)
        finally:
            await p.stop()


def events_of(pipeline: Pipeline, kind: str, pid: int) -> list[dict[str, Any]]:
    return [e[kind] for e in pipeline.exported() if kind in e and e[kind]["process"]["pid"] == pid]


def one(pipeline: Pipeline, kind: str, pid: int) -> dict[str, Any] | None:
    evs = events_of(pipeline, kind, pid)
    return evs[-1] if evs else None
