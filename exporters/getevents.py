"""``tetrapipe getevents``: read events from the events topic, a JSON export file or stdin, filter
them as ``tetra getevents`` does, print compact lines or protojson."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Iterator
from typing import Any

from exporters import compact, protojson
from tetrapipe.config import Config

EVENT_TYPES = {
    "PROCESS_EXEC": "process_exec", "PROCESS_EXIT": "process_exit",
    "PROCESS_KPROBE": "process_kprobe", "PROCESS_TRACEPOINT": "process_tracepoint",
    "PROCESS_LSM": "process_lsm", "PROCESS_UPROBE": "process_uprobe",
    "PROCESS_LOADER": "process_loader", "RATE_LIMIT_INFO": "rate_limit_info",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", choices=["json", "compact"], default="json")
    p.add_argument("--file", help="read a JSON export file ('-' = stdin) instead of Kafka")
    p.add_argument("-e", "--event-types", default="", help="comma list, e.g. PROCESS_EXEC,PROCESS_EXIT")
    p.add_argument("-n", "--namespace", action="append", default=[], help="pod namespace (repeatable)")
    p.add_argument("--pod", action="append", default=[], help="pod name regex (repeatable)")
    p.add_argument("--process", action="append", default=[], help="binary regex (repeatable)")
    p.add_argument("--policy-names", default="", help="comma list of policy names")
    p.add_argument("-f", "--include-fields", default="", help="comma list of field paths to keep")
    p.add_argument("-F", "--exclude-fields", default="", help="comma list of field paths to drop")
    p.add_argument("--follow", action="store_true", help="keep reading new events (Kafka)")
    p.add_argument("--from-start", action="store_true", help="Kafka: start at the oldest event")
    p.add_argument("--timeout", type=float, default=2.0, help="Kafka: stop after this long idle")


def _body(doc: dict[str, Any]) -> dict[str, Any]:
    return doc.get(protojson.event_type(doc)) or {}


def matches(doc: dict[str, Any], args: argparse.Namespace) -> bool:
    etype = protojson.event_type(doc)
    if args.event_types:
        wanted = {EVENT_TYPES.get(t.strip().upper(), t.strip().lower()) for t in args.event_types.split(",")}
        if etype not in wanted:
            return False
    proc = _body(doc).get("process") or {}
    pod = proc.get("pod") or {}
    if args.namespace and pod.get("namespace", "") not in args.namespace:
        return False
    if args.pod and not any(re.search(r, pod.get("name", "")) for r in args.pod):
        return False
    if args.process and not any(re.search(r, proc.get("binary", "")) for r in args.process):
        return False
    if args.policy_names:
        names = set(args.policy_names.split(","))
        if _body(doc).get("policy_name", "") not in names:
            return False
    return True


def select_fields(doc: dict[str, Any], include: list[str], exclude: list[str]) -> dict[str, Any]:
    """Keep only ``include`` paths (dot-separated, below the event body) and drop ``exclude``."""
    etype = protojson.event_type(doc)
    body = _body(doc)
    if include:
        kept: dict[str, Any] = {}
        for path in include:
            _copy_path(body, kept, path.split("."))
        body = kept
    for path in exclude:
        _drop_path(body, path.split("."))
    out = {k: v for k, v in doc.items() if k != etype}
    out[etype] = body
    return out


def _copy_path(src: dict[str, Any], dst: dict[str, Any], parts: list[str]) -> None:
    if parts[0] not in src:
        return
    if len(parts) == 1:
        dst[parts[0]] = src[parts[0]]
    elif isinstance(src[parts[0]], dict):
        _copy_path(src[parts[0]], dst.setdefault(parts[0], {}), parts[1:])


def _drop_path(d: dict[str, Any], parts: list[str]) -> None:
    if len(parts) == 1:
        d.pop(parts[0], None)
    elif isinstance(d.get(parts[0]), dict):
        _drop_path(d[parts[0]], parts[1:])


def read_lines(stream: Any) -> Iterator[dict[str, Any]]:
    for n, line in enumerate(stream, 1):
        line = line.strip()
        if not line:
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as exc:
            print(f"getevents: line {n} is not JSON: {exc}", file=sys.stderr)


async def _read_kafka(cfg: Config, args: argparse.Namespace, out: Any) -> None:
    from schemas import codec
    from tetrapipe import kafka

    consumer = kafka.make_consumer(cfg, None, [cfg.events_topic],  # type: ignore[arg-type]
                                   auto_offset_reset="earliest" if args.from_start else "latest")
    await consumer.start()
    try:
        idle = 0.0
        while args.follow or idle < args.timeout:
            got = await consumer.getmany(timeout_ms=200)
            if not got:
                idle += 0.2
                continue
            idle = 0.0
            for msgs in got.values():
                for m in msgs:
                    try:
                        out(protojson.to_protojson(codec.decode("event", m.value)))
                    except codec.CodecError as exc:
                        print(f"getevents: skipping message {m.offset}: {exc}", file=sys.stderr)
    finally:
        await consumer.stop()


def main(cfg: Config, args: argparse.Namespace) -> int:
    include = [f for f in args.include_fields.split(",") if f]
    exclude = [f for f in args.exclude_fields.split(",") if f]

    def out(doc: dict[str, Any]) -> None:
        if not matches(doc, args):
            return
        if args.output == "compact":
            line = compact.render(doc)
            if line:
                print(line, flush=True)
        else:
            if include or exclude:
                doc = select_fields(doc, include, exclude)
            print(json.dumps(doc, ensure_ascii=False, separators=(",", ":")), flush=True)

    try:
        if args.file == "-":
            for doc in read_lines(sys.stdin):
                out(doc)
        elif args.file:
            with open(args.file, encoding="utf-8", errors="replace") as f:
                for doc in read_lines(f):
                    out(doc)
        else:
            asyncio.run(_read_kafka(cfg, args, out))
    except BrokenPipeError:
        pass
    return 0
