"""``tetrapipe getevents``: read events from the events topic, a JSON export file or stdin, filter
them as ``tetra getevents`` does, print compact lines or protojson.

The flags become Tetragon filters, as tetra sends them to the agent: ``--event-types`` →
``event_set``, ``--namespace`` → ``namespace``, ``--pod`` → ``pod_regex``, ``--process`` →
``binary_regex``, ``--policy-names`` → ``policy_names`` (all AND'd); ``-f``/``-F`` become an
INCLUDE/EXCLUDE field filter. ``--allowlist``/``--denylist`` take the same filter JSON as the
JSON export options.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

from exporters import compact, filters, protojson
from tetrapipe.config import Config

EVENT_TYPES = {name.lower(): name for name in filters.EVENT_TYPE_NUMBERS}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", choices=["json", "compact"], default="json")
    p.add_argument("--file", help="read a JSON export file ('-' = stdin) instead of Kafka")
    p.add_argument("-e", "--event-types", action="append", default=[],
                   help="event types, comma-separated or repeated (PROCESS_EXEC, process_exit, ...)")
    p.add_argument("-n", "--namespace", "--namespaces", dest="namespace", action="append", default=[],
                   help="pod namespace (comma-separated or repeated)")
    p.add_argument("--pod", "--pods", dest="pod", action="append", default=[],
                   help="pod name regex (repeatable)")
    p.add_argument("--process", "--processes", dest="process", action="append", default=[],
                   help="binary regex (repeatable)")
    p.add_argument("--policy-names", action="append", default=[], help="policy names (comma-separated)")
    p.add_argument("-f", "--include-fields", action="append", default=[],
                   help="field paths to keep, e.g. process.binary,parent.pid")
    p.add_argument("-F", "--exclude-fields", action="append", default=[], help="field paths to drop")
    p.add_argument("--allowlist", default="", help="Tetragon filter JSON, one per line")
    p.add_argument("--denylist", default="", help="Tetragon filter JSON, one per line")
    p.add_argument("--follow", action="store_true", help="keep reading new events (Kafka)")
    p.add_argument("--from-start", action="store_true", help="Kafka: start at the oldest event")
    p.add_argument("--timeout", type=float, default=2.0, help="Kafka: stop after this long idle")


def _split(values: list[str]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def flag_filter(args: argparse.Namespace) -> dict[str, Any]:
    """The Tetragon ``Filter`` the flags stand for (empty = everything)."""
    f: dict[str, Any] = {}
    types = _split(args.event_types)
    if types:
        unknown = [t for t in types if t.lower() not in EVENT_TYPES]
        if unknown:
            raise filters.FilterError(f"--event-types: unknown {', '.join(unknown)} "
                                      f"(one of {', '.join(filters.EVENT_TYPE_NUMBERS)})")
        f["event_set"] = [EVENT_TYPES[t.lower()] for t in types]
    if args.namespace:
        f["namespace"] = _split(args.namespace)
    if args.pod:
        f["pod_regex"] = list(args.pod)
    if args.process:
        f["binary_regex"] = list(args.process)
    if args.policy_names:
        f["policy_names"] = _split(args.policy_names)
    return f


def build(args: argparse.Namespace) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
    """protojson doc → the doc to print (field filters applied) or None. Raises FilterError."""
    allow = args.allowlist
    flags = flag_filter(args)
    if flags:
        # the flags AND with each allowlist line; alone they are the allow list
        lines = [obj for _, obj in filters.iter_json_objects(allow, "--allowlist")] or [{}]
        allow = "\n".join(json.dumps({**obj, **flags}) for obj in lines)
    events = filters.EventFilter.parse(allow, args.denylist)
    field_filters: list[filters.FieldFilter] = []
    include, exclude = _split(args.include_fields), _split(args.exclude_fields)
    if include:
        field_filters += filters.parse_field_filters(
            json.dumps({"fields": ",".join(include), "action": "INCLUDE"}), "--include-fields")
    if exclude:
        field_filters += filters.parse_field_filters(
            json.dumps({"fields": ",".join(exclude), "action": "EXCLUDE"}), "--exclude-fields")

    def apply(doc: dict[str, Any]) -> dict[str, Any] | None:
        if not events(doc):
            return None
        return filters.apply_field_filters(field_filters, doc)

    return apply


def read_lines(stream: Any) -> Iterator[dict[str, Any]]:
    """JSON objects from a stream: one per line (an export file) or pretty-printed over many
    lines. A bad line is reported on stderr with its number and skipped."""
    dec = json.JSONDecoder()
    buf = ""
    start_line = 0
    for n, line in enumerate(stream, 1):
        if not buf.strip():
            buf, start_line = "", n
        buf += line
        while buf.strip():
            text = buf.lstrip()
            try:
                doc, end = dec.raw_decode(text)
            except json.JSONDecodeError as exc:
                if not text[exc.pos:].strip():
                    break  # an object continued on the next line
                print(f"getevents: line {start_line} is not JSON: {exc.msg}", file=sys.stderr)
                buf = ""
                break
            buf = text[end:]
            start_line = n
            if isinstance(doc, dict):
                yield doc
            else:
                print(f"getevents: line {n} is not a JSON object", file=sys.stderr)
    if buf.strip():
        print(f"getevents: line {start_line}: incomplete JSON at the end of the input", file=sys.stderr)


async def _read_kafka(cfg: Config, args: argparse.Namespace, out: Callable[[dict[str, Any]], None]) -> None:
    from schemas import codec, registry
    from tetrapipe import kafka

    decode = registry.decoder_for(cfg)
    consumer = kafka.make_consumer(cfg, None, [cfg.events_topic],  # type: ignore[arg-type]
                                   auto_offset_reset="earliest" if args.from_start else "latest")
    try:
        await consumer.start()
    except BaseException:
        await consumer.stop()  # an unreachable broker: the caller says so in one line
        raise
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
                        out(protojson.to_protojson(decode(m.value)))
                    except (codec.CodecError, registry.RegistryError) as exc:
                        print(f"getevents: skipping message {m.partition}/{m.offset}: {exc}", file=sys.stderr)
    finally:
        await consumer.stop()


def main(cfg: Config, args: argparse.Namespace) -> int:
    try:
        select = build(args)
    except filters.FilterError as exc:
        print(f"tetrapipe getevents: {exc}", file=sys.stderr)
        return 2

    def out(doc: dict[str, Any]) -> None:
        shown = select(doc)
        if shown is None:
            return
        if args.output == "compact":
            line = compact.render(doc)  # the compact view shows the event as it is
            if line:
                print(line, flush=True)
        else:
            print(json.dumps(shown, ensure_ascii=False, separators=(",", ":")), flush=True)

    try:
        if args.file == "-":
            for doc in read_lines(sys.stdin):
                out(doc)
        elif args.file:
            try:
                with open(args.file, encoding="utf-8", errors="replace") as f:
                    for doc in read_lines(f):
                        out(doc)
            except OSError as exc:
                print(f"tetrapipe getevents: {exc}", file=sys.stderr)
                return 1
        else:
            asyncio.run(_read_kafka(cfg, args, out))
    except BrokenPipeError:
        pass
    except KeyboardInterrupt:
        return 130
    return 0
