"""Events for the exporter tests: real Avro events on a real events topic, each with a unique
marker (``arguments`` = ``seq=<n>``) so a test can tell exactly which arrived where."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from schemas import codec
from tetrapipe import kafka
from tetrapipe.config import Config


def make_event(seq: int, node: str, kind: str = "process_exec", binary: str = "/usr/bin/true",
               namespace: str = "", pod: str = "", workload: str = "", policy: str = "",
               function: str = "", action: str = "", time_ns: int | None = None) -> dict[str, Any]:
    proc: dict[str, Any] = {"exec_id": f"{node}:{seq}", "pid": 1000 + seq, "uid": 0, "binary": binary,
                            "arguments": f"seq={seq}", "cwd": "/", "flags": "execve"}
    if namespace or pod:
        proc["pod"] = {"namespace": namespace, "name": pod, "workload": workload}
    body: dict[str, Any] = {"process": proc}
    if kind == "process_exit":
        body["status"] = 0
    if kind == "process_kprobe":
        body.update(function_name=function, policy_name=policy, action=action)
    if kind == "process_tracepoint":
        sub, _, ev = function.partition(":")
        body.update(subsys=sub, event=ev, policy_name=policy, action=action)
    return {kind: body, "node_name": node,
            "time": time_ns if time_ns is not None else time.time_ns() + seq}


def seq_of(record: dict[str, Any]) -> int:
    """The marker of an exported event (protojson or Avro form)."""
    body = next(v for k, v in record.items() if k.startswith("process_") and v)
    return int(body["process"]["arguments"].split("=", 1)[1])


async def produce(cfg: Config, events: list[dict[str, Any]]) -> None:
    await kafka.ensure_topics(cfg, [cfg.events_topic])
    p = await kafka.start_producer(cfg)
    try:
        futs = [await p.send(cfg.events_topic, codec.encode("event", e), key=e["node_name"].encode())
                for e in events]
        await asyncio.gather(*futs)
    finally:
        await p.stop()


def produce_sync(cfg: Config, events: list[dict[str, Any]]) -> None:
    asyncio.run(produce(cfg, events))


def cfg_of(base: dict[str, str]) -> Config:
    return Config(kafka=base["kafka"], events_topic=base["events_topic"],
                  deadletter_topic=base["deadletter_topic"], raw_topic=base["raw_topic"])
