"""Tetragon's gRPC messages ⇄ tetrapipe's forms: a ``GetEventsRequest`` becomes the same event and
field filters the JSON export uses (exporters/filters.py), an event's protojson dict becomes a
``GetEventsResponse``, the collector's policy list becomes ``TracingPolicyStatus`` messages.

The generated modules of the API live in the top-level ``tetragon`` package (made from
schemas/proto/ by scripts/gen-proto.sh).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format

from exporters import filters
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


def request_selector(req: events_pb2.GetEventsRequest) -> Callable[[Doc], Doc | None]:
    """The request's allow_list, deny_list and field_filters as one function: protojson dict → the
    dict to send (field filters applied) or None. Raises filters.FilterError for a filter it cannot
    serve (a bad regex, a CEL expression). ``aggregation_options`` is accepted and has no effect:
    Tetragon aggregates only its retired process_accept/process_connect events."""
    chosen = filters.EventFilter.parse(_filter_lines(req.allow_list), _filter_lines(req.deny_list))
    field_filters = filters.parse_field_filters(_field_filter_lines(req.field_filters), "field_filters")

    def select(doc: Doc) -> Doc | None:
        if not chosen(doc):
            return None
        return filters.apply_field_filters(field_filters, doc) if field_filters else doc

    return select


def to_message(doc: Doc) -> events_pb2.GetEventsResponse:
    """A protojson event (our export's JSON line) → Tetragon's GetEventsResponse. Raises
    json_format.ParseError for a field Tetragon's API does not have."""
    return json_format.ParseDict(doc, events_pb2.GetEventsResponse())


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
