"""Tetragon's filter JSON on real events: every Filter field, OR across lines, AND within a line,
deny over allow, field filter and redaction semantics, and clear errors on bad filters."""

from __future__ import annotations

import re

import pytest
from json_events import exec_event, exit_event, kprobe_event

from exporters import protojson
from exporters.filters import EventFilter, FilterError, parse_field_filters, parse_redaction_filters, redact_string


def doc(ev: dict) -> dict:
    return protojson.to_protojson(ev)


def allowed(allow: str, ev: dict, deny: str = "") -> bool:
    return EventFilter.parse(allow, deny)(doc(ev))


@pytest.mark.parametrize(("flt", "yes", "no"), [
    ('{"event_set":["PROCESS_EXIT"]}', exit_event(), exec_event()),
    ('{"event_set":[9]}', kprobe_event(), exec_event()),
    ('{"namespace":["default"]}', exec_event(), exec_event(namespace="other")),
    ('{"namespace":[""]}', exec_event(namespace=None), exec_event()),
    ('{"namespace_regex":["^kube-"]}', exec_event(namespace="kube-system"), exec_event()),
    ('{"pod_regex":["^xw"]}', exec_event(), exec_event(pod="tiefighter")),
    ('{"binary_regex":["bash$"]}', exec_event(), exec_event(binary="/bin/sh")),
    ('{"parent_binary_regex":["runc"]}', exec_event(), exit_event() | {"process_exit": {
        **exit_event()["process_exit"], "parent": None}}),
    ('{"arguments_regex":["^-c "]}', exec_event(args="-c ls"), exec_event(args="ls -c ")),
    ('{"pid":[42,43]}', exec_event(pid=43), exec_event(pid=44)),
    ('{"pid_set":[13594]}', exec_event(pid=1), exec_event(pid=1) | {"process_exec": {
        **exec_event(pid=1)["process_exec"], "parent": None}}),
    ('{"policy_names":["fd-install"]}', kprobe_event(), kprobe_event(policy="other")),
    ('{"labels":["org=alliance,class in (xwing, ywing)"]}', exec_event(),
     exec_event(labels={"org": "empire", "class": "xwing"})),
    ('{"labels":["!canary","app.kubernetes.io/name"]}', exec_event(), exec_event(labels={"canary": "1"})),
    ('{"container_id":["^4cb1e9"]}', exec_event(), exec_event(docker="ffff")),
    ('{"container_name_regex":["^space"]}', exec_event(), exec_event(namespace=None)),
    ('{"health_check":false}', exec_event(), None),
])
def test_each_filter_field(flt: str, yes: dict, no: dict | None) -> None:
    assert allowed(flt, yes)
    if no is not None:
        assert not allowed(flt, no)


def test_health_check_matches_exec_probes() -> None:
    ev = exec_event()
    ev["process_exec"]["process"]["pod"]["container"]["maybe_exec_probe"] = True
    assert allowed('{"health_check":true}', ev)
    assert not allowed('{"health_check":true}', exec_event())
    # Tetragon's Helm default deny list
    deny = '{"health_check":true}\n{"namespace":["","cilium","kube-system"]}'
    assert not allowed("", ev, deny)
    assert not allowed("", exec_event(namespace="kube-system"), deny)
    assert not allowed("", exec_event(namespace=None), deny)
    assert allowed("", exec_event(), deny)


def test_and_within_or_across_deny_wins() -> None:
    allow = '{"namespace":["default"],"binary_regex":["vi"]}\n{"pid":[7]}'
    assert allowed(allow, exec_event(binary="/usr/bin/vi"))
    assert not allowed(allow, exec_event(binary="/bin/ls"))          # AND: binary fails
    assert allowed(allow, exec_event(pid=7, binary="/bin/ls"))       # OR: second line
    assert not allowed(allow, exec_event(pid=7), deny='{"pid":[7]}')  # deny wins
    assert allowed("", exec_event())                                 # no allow list: all
    # objects may also follow one another on one line, as Go's json.Decoder reads them
    assert allowed('{"pid":[1]} {"pid":[2]}', exec_event(pid=2))


def test_rate_limit_info_has_no_process() -> None:
    ev = {"rate_limit_info": {"number_of_dropped_process_events": 3}, "node_name": "n", "time": 1}
    assert not allowed('{"namespace":["default"]}', ev)
    assert allowed('{"event_set":["RATE_LIMIT_INFO"]}', ev)


@pytest.mark.parametrize(("text", "message"), [
    ('{"namespace":["a"]}\n{"pid":[1]', "export_allowlist: line 2: not JSON"),
    ('{"binary_regex":["("]}', "export_allowlist: line 1: binary_regex: bad regex"),
    ('{"event_set":["PROCESS_FOO"]}', "unknown event type 'PROCESS_FOO'"),
    ('{"namespace":"default"}', "namespace: expected a list"),
    ('{"cel_expression":["true"]}', "not supported"),
    ('["pid"]', "expected a JSON object"),
    ('{"labels":["a in b"]}', "cannot parse label selector"),
])
def test_bad_filters_are_refused_with_line_and_reason(text: str, message: str) -> None:
    with pytest.raises(FilterError, match=re.escape(message)):
        EventFilter.parse(text, "")


def test_field_filter_errors_and_fieldmask_object() -> None:
    with pytest.raises(FilterError, match="action must be INCLUDE or EXCLUDE"):
        parse_field_filters('{"fields":"process.pid","action":"KEEP"}')
    with pytest.raises(FilterError, match="unknown field filter field"):
        parse_field_filters('{"fields":"process.pid","action":"INCLUDE","evnt_set":[]}')
    (ff,) = parse_field_filters('{"fields":{"paths":["process.pid"]},"action":"INCLUDE"}')
    assert ff.apply(doc(exit_event(pid=5)))["process_exit"] == {"process": {"pid": 5}}


def test_redaction_groups_and_nesting() -> None:
    pat = re.compile(r"(pass(word)?)=(\S+)")
    assert redact_string(pat, "a password=x b pass=y") == "a *****=***** b *****=*****"
    assert redact_string(re.compile(r"--key (\S+)"), "--key a --key b") == "--key ***** --key *****"
    with pytest.raises(FilterError, match="redaction_filters: line 1: redact: bad regex"):
        parse_redaction_filters('{"redact":["(unclosed"]}')
