"""``tetrapipe getevents``: read events from the events topic, a JSON export file, stdin or (with
``--server-address``) a gRPC server with Tetragon's API (ours or Tetragon's); filter them as
``tetra getevents`` does, print compact lines (byte-identical to tetra's, see exporters/compact.py)
or protojson.

The flags become Tetragon filters, as tetra sends them to the agent: ``--event-types`` →
``event_set``, ``--namespace`` → ``namespace``, ``--pod`` → ``pod_regex``, ``--process`` →
``binary_regex``, ``--policy-names`` → ``policy_names``, ``--host`` → ``namespace`` "" (processes
outside any pod) (all AND'd); ``-f``/``-F`` become an INCLUDE/EXCLUDE field filter. Against a gRPC
server they are sent in the GetEventsRequest, as tetra sends them. ``--allowlist``/``--denylist``
take the same filter JSON as the JSON export options.
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
    p.add_argument("--host", action="store_true", help="only events of processes outside any pod")
    p.add_argument("--timestamps", action="store_true", help="compact: start each line with the event time")
    p.add_argument("--stack-traces", action="store_true", help="compact: kprobe stack traces under the line")
    p.add_argument("--ima-hash", action="store_true", help="compact: LSM events' IMA hashes under the line")
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto", help="compact: colors")
    p.add_argument("--follow", action="store_true", help="keep reading new events (Kafka)")
    p.add_argument("--from-start", action="store_true", help="Kafka: start at the oldest event")
    p.add_argument("--timeout", type=float, default=None,
                   help="Kafka: stop after this long idle (default 2 s); gRPC: stop after this long (default: never)")


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
    if getattr(args, "host", False):
        f["namespace"] = [*f.get("namespace", []), ""]  # as tetra: the empty namespace is the host's
    return f


def _allow_text(args: argparse.Namespace) -> str:
    """The allow list: the flags AND'd with each --allowlist line; alone they are the allow list."""
    flags = flag_filter(args)
    if not flags:
        return args.allowlist
    lines = [obj for _, obj in filters.iter_json_objects(args.allowlist, "--allowlist")] or [{}]
    return "\n".join(json.dumps({**obj, **flags}) for obj in lines)


def _field_filter_text(args: argparse.Namespace) -> list[str]:
    out = []
    include, exclude = _split(args.include_fields), _split(args.exclude_fields)
    if include:
        out.append(json.dumps({"fields": ",".join(include), "action": "INCLUDE"}))
    if exclude:
        out.append(json.dumps({"fields": ",".join(exclude), "action": "EXCLUDE"}))
    return out


def grpc_request(args: argparse.Namespace) -> Any:
    """The GetEventsRequest tetra would send for these flags. Raises FilterError."""
    from google.protobuf import json_format

    from tetragon import events_pb2

    req = events_pb2.GetEventsRequest()
    build(args)  # the same checks as a local read: a bad regex or flag is refused here
    try:
        for where, text in (("allow_list", _allow_text(args)), ("deny_list", args.denylist)):
            for _, obj in filters.iter_json_objects(text, where):
                json_format.ParseDict(obj, getattr(req, where).add())
        for text in _field_filter_text(args):
            obj = json.loads(text)
            req.field_filters.add(action=events_pb2.FieldFilterAction.Value(obj["action"])).fields.paths.extend(
                obj["fields"].split(","))
    except json_format.ParseError as exc:
        raise filters.FilterError(f"not a Tetragon filter: {exc}") from None
    return req


def build(args: argparse.Namespace) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
    """protojson doc → the doc to print (field filters applied) or None. Raises FilterError."""
    events = filters.EventFilter.parse(_allow_text(args), args.denylist)
    field_filters: list[filters.FieldFilter] = []
    for text in _field_filter_text(args):
        field_filters += filters.parse_field_filters(text, "--include-fields/--exclude-fields")

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
        limit = 2.0 if args.timeout is None else args.timeout
        while args.follow or idle < limit:
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
        request = grpc_request(args) if args.server_address is not None else None
    except filters.FilterError as exc:
        print(f"tetrapipe getevents: {exc}", file=sys.stderr)
        return 2

    view = compact.Compact(color=compact.color_enabled(args.color), timestamps=args.timestamps,
                          stack_traces=args.stack_traces, ima_hash=args.ima_hash)

    def show(doc: dict[str, Any], shown: dict[str, Any]) -> None:
        if args.output == "compact":
            text = view.output(doc)  # the compact view shows the event as it is
            if text:
                sys.stdout.write(text)
                sys.stdout.flush()
        else:
            print(json.dumps(shown, ensure_ascii=False, separators=(",", ":")), flush=True)

    def out(doc: dict[str, Any]) -> None:
        shown = select(doc)
        if shown is not None:
            show(doc, shown)

    try:
        if args.server_address is not None:  # a gRPC server filters (and field-filters) for us
            from exporters import grpc_client

            timeout = None if args.follow or not args.timeout else args.timeout
            return grpc_client.stream(cfg.server_address, request, lambda d: show(d, d), timeout)
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
