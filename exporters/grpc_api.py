"""Tetragon's gRPC messages ⇄ tetrapipe's forms: a ``GetEventsRequest`` becomes the same event and
field filters the JSON export uses (exporters/filters.py), an event's protojson dict becomes a
``GetEventsResponse``, the collector's policy list becomes ``TracingPolicyStatus`` messages.

The generated modules of the API live in the top-level ``tetragon`` package (made from
schemas/proto/ by scripts/gen-proto.sh).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from functools import cache
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from exporters import filters, protojson
from tetragon import events_pb2, sensors_pb2

Doc = dict[str, Any]

STATES = {"enabled": sensors_pb2.TP_STATE_ENABLED, "disabled": sensors_pb2.TP_STATE_DISABLED,
          "load_error": sensors_pb2.TP_STATE_LOAD_ERROR, "error": sensors_pb2.TP_STATE_ERROR}
MODES = {"enforce": sensors_pb2.TP_MODE_ENFORCE, "monitor": sensors_pb2.TP_MODE_MONITOR}


def _filter_lines(items: Any) -> str:
    """Filter messages → the JSON lines the export options take (proto field names)."""
    return "\n".join(json.dumps(json_format.MessageToDict(f, preserving_proto_field_name=True)) for f in items)


def _field_filter_lines(items: Any) -> str:
    # a FieldMask's JSON form is camelCase; filters.py takes the paths as written (snake_case)
    out = []
    for ff in items:
        obj: Doc = {"fields": ",".join(ff.fields.paths),
                    "action": events_pb2.FieldFilterAction.Name(ff.action)}
        if ff.event_set:
            obj["event_set"] = [events_pb2.EventType.Name(t) for t in ff.event_set]
        if ff.HasField("invert_event_set"):
            obj["invert_event_set"] = ff.invert_event_set.value
        out.append(json.dumps(obj))
    return "\n".join(out)


def request_selector(req: events_pb2.GetEventsRequest,
                     redaction: list[filters.RedactionFilter] | None = None) -> Callable[[Doc], Doc | None]:
    """The request's allow_list, deny_list and field_filters as one function: protojson dict → the
    dict to send (field filters applied) or None. Raises filters.FilterError for a filter it cannot
    serve (a bad regex, a CEL expression). ``aggregation_options`` is accepted and has no effect:
    Tetragon aggregates only its retired process_accept/process_connect events. ``redaction``: the
    configured redaction filters, applied again as the JSON export does (the enricher applies them
    first, to every output)."""
    chosen = filters.EventFilter.parse(_filter_lines(req.allow_list), _filter_lines(req.deny_list))
    field_filters = filters.parse_field_filters(_field_filter_lines(req.field_filters), "field_filters")

    def select(doc: Doc) -> Doc | None:
        if not chosen(doc):
            return None
        doc = filters.apply_redaction(redaction or [], doc)  # as the JSON export, after the allow/deny lists
        return filters.apply_field_filters(field_filters, doc) if field_filters else doc

    return select


class NotInApi(ValueError):
    """The event has a field or value Tetragon's API has no place for."""


_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}
_WRAPPERS = {"google.protobuf." + n for n in ("BoolValue", "Int32Value", "UInt32Value", "Int64Value",
                                             "UInt64Value", "StringValue", "BytesValue", "FloatValue",
                                             "DoubleValue")}
Conv = Callable[[Any], Any]


def _scalar(fd: FieldDescriptor) -> Conv:
    if fd.type in _INT64:
        return int  # protojson writes 64-bit integers as strings
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return lambda v: base64.b64decode(v, validate=False)
    return lambda v: v


def _field(fd: FieldDescriptor) -> Conv:
    if fd.message_type is None:
        return _scalar(fd)
    full = fd.message_type.full_name
    if full == "google.protobuf.Timestamp":
        def ts(v: Any) -> dict[str, int]:
            secs, nanos = divmod(protojson.parse_rfc3339(v), 1_000_000_000)
            return {"seconds": secs, "nanos": nanos}
        return ts
    if full in _WRAPPERS:
        inner = _scalar(fd.message_type.fields_by_name["value"])
        return lambda v: {"value": inner(v)}
    if fd.message_type.GetOptions().map_entry:
        val = _field(fd.message_type.fields_by_name["value"])
        return lambda v: {k: val(x) for k, x in v.items()}
    return _message(fd.message_type)


@cache
def _message(desc: Descriptor) -> Conv:
    """protojson dict of ``desc`` → keyword arguments of its constructor (nested dicts), built
    once per message type. The generated (upb) constructors build the whole tree in C, about 20
    times faster than json_format.ParseDict."""
    convs: dict[str, Conv] = {}

    def conv(d: Any) -> dict[str, Any]:
        if not convs:  # filled on first use: message types refer to each other
            for fd in desc.fields:
                one = _field(fd)
                repeated = fd.is_repeated and not (
                    fd.message_type is not None and fd.message_type.GetOptions().map_entry)
                convs[fd.name] = (lambda v, one=one: [one(x) for x in v]) if repeated else one
        if not isinstance(d, dict):
            raise NotInApi(f"{desc.name}: expected an object, got {type(d).__name__}")
        out = {}
        for k, v in d.items():
            c = convs.get(k)
            if c is None:
                raise NotInApi(f"{desc.name} has no field {k!r}")
            if v is not None:
                out[k] = c(v)
        return out

    return conv


def to_message(doc: Doc) -> events_pb2.GetEventsResponse:
    """A protojson event (our export's JSON line) → Tetragon's GetEventsResponse, the same message
    json_format.ParseDict makes (tests/test_grpc_proto.py). Raises NotInApi for a field or value
    Tetragon's API has no place for."""
    try:
        return events_pb2.GetEventsResponse(**_message(events_pb2.GetEventsResponse.DESCRIPTOR)(doc))
    except (TypeError, ValueError, binascii.Error) as exc:
        if isinstance(exc, NotInApi):
            raise
        raise NotInApi(str(exc)) from exc


def to_doc(msg: events_pb2.GetEventsResponse) -> Doc:
    """The other way: what Tetragon's own JSON encoder prints (proto names, zero values left out)."""
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def policy_status(info: Doc) -> sensors_pb2.TracingPolicyStatus:
    """One entry of the collector's ``list`` answer (collector/policy/manager.py) → Tetragon's."""
    state = STATES.get(str(info.get("state", "")), sensors_pb2.TP_STATE_UNKNOWN)
    return sensors_pb2.TracingPolicyStatus(
        id=int(info.get("id") or 0), name=str(info.get("name") or ""),
        namespace=str(info.get("namespace") or ""), info=str(info.get("source") or ""),
        sensors=[f"{h.get('function_name', '')} via {h.get('serve', '')}" for h in info.get("hooks") or []],
        enabled=state == sensors_pb2.TP_STATE_ENABLED, error=str(info.get("error") or ""), state=state,
        mode=MODES.get(str(info.get("mode") or ""), sensors_pb2.TP_MODE_UNKNOWN))
