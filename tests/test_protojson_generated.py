"""The generated protojson renderer (exporters/protojson.py, to_protojson) against the tree of
closures it replaced (kept as the reference): the same dict, and the same export line bytes, for
generated events (valid and with odd values), decoded events, the seed and the enricher's events."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings

from exporters import json_file, protojson
from schemas import codec
from tests import json_events
from tests.test_codec_writer import _exec_rec, events

REFERENCE = protojson._event_renderers()[0]
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


def outcome(fn: Any, ev: Any) -> tuple[str, Any]:
    try:
        return ("doc", fn(ev))
    except Exception as exc:  # noqa: BLE001  the failure itself is compared
        return ("raised", type(exc).__name__)


def reference_line(ev: dict[str, Any]) -> bytes:
    return (json.dumps(REFERENCE(ev), ensure_ascii=False, separators=(",", ":")) + "\n").encode()


@SETTINGS
@given(events(odd=False))
def test_generated_events_render_as_before(ev: dict[str, Any]) -> None:
    assert protojson.to_protojson(ev) == REFERENCE(ev)
    assert json_file._line(protojson.to_protojson(ev)) == reference_line(ev)
    try:
        decoded = codec.decode("event", codec.encode("event", ev))
    except ValueError:
        return  # not writable (e.g. a lone surrogate): nothing is exported
    assert protojson.dumps(decoded) + "\n" == reference_line(decoded).decode()


@SETTINGS
@given(events(odd=True))
def test_odd_values_render_or_raise_as_before(ev: dict[str, Any]) -> None:
    """Values of other types (what a caller might pass by hand): same dict or same exception."""
    assert outcome(protojson.to_protojson, ev) == outcome(REFERENCE, ev)


def test_seed_and_enricher_events_render_as_before() -> None:
    from enricher.event_builder import EventBuilder
    from enricher.process_cache import ProcessCache

    b = EventBuilder(ProcessCache())
    evs = [json_events.exec_event(), json_events.exit_event(), json_events.kprobe_event(),
           json_events.exec_event(namespace=None), json_events.exec_event(labels={"a": "b", "c": ""}),
           b.on_record(_exec_rec(500, 1, 10, procfs=True), "n", 1_700_000_000_000_000_000, []),
           b.on_record(_exec_rec(501, 500, 11_000_000_001, nspid=1), "n", 1_700_000_000_000_000_000, [])]
    for ev in evs:
        for e in (ev, codec.decode("event", codec.encode("event", ev))):
            assert protojson.to_protojson(e) == REFERENCE(e)
            assert protojson.dumps(e).encode() + b"\n" == reference_line(e)
    # the seed's own line comes back as the seed wrote it
    seed = json_events.seed_doc()
    assert protojson.to_protojson(protojson.from_protojson(seed)) == seed


def test_timestamps_across_seconds_and_fractions() -> None:
    for ns in (0, 1, 999_999_999, 1_000_000_000, 1_700_000_000_123_000_000, 1_700_000_000_123_456_000,
               1_700_000_000_123_456_789, 1_700_000_001_000_000_000, -1, True):
        ev = {"time": ns, "process_exec": {"process": {"start_time": ns}}}
        assert protojson.to_protojson(ev) == REFERENCE(ev)
