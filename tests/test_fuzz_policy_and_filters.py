"""Property-based fuzzing of the two parsers that read operator-written text: the TracingPolicy
parser + compiler (collector/policy) and the JSON export filters (exporters/filters.py).

Whatever the text, each either returns a value or raises its own error (PolicyError with a reason,
FilterError), which the services turn into a refused policy (loaded policies untouched) or an
exporter that stops at start with the option, line and reason. Valid seeds are mutated at any
YAML/JSON path with any value; filters that parse are then applied to arbitrary events, which
must never raise. tests/fuzz_atheris.py has the same targets, coverage-guided."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.policy import compiler, parser
from collector.policy.model import PolicyError
from exporters.filters import ExportFilters, FilterError

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDS = [p.read_text() for p in sorted((Path(__file__).parent / "data" / "seed").glob("*.yaml"))]
HOST_NS = [0xEFFFFFFE] * 10
HAVE_TRACEFS = (compiler.TRACEFS / "events" / "syscalls").is_dir()

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                    st.text(max_size=40), st.sampled_from(["Equal", "Prefix", "In", "NotIn", "Sigkill",
                                                           "fd_install", "sys_write", "char_buf",
                                                           "int", "0", "-1", "host_ns", "CAP_SYS_ADMIN"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                      max_leaves=12)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _replace(doc: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    node = doc
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return doc


def _load_policy(text: str) -> None:
    """What the collector does with a policy file: parse, then compile for this kernel."""
    try:
        policies = parser.parse_text(text, "fuzz.yaml")
    except PolicyError as exc:
        assert exc.reason, "a refusal says why"
        return
    if HAVE_TRACEFS:
        for i, p in enumerate(policies):
            try:
                compiler.compile_policy(p, i + 1, HOST_NS)
            except PolicyError as exc:
                assert exc.reason


@FAST
@given(st.text(max_size=400))
def test_policy_parser_takes_any_text(text: str) -> None:
    _load_policy(text)


@FAST
@given(st.sampled_from(range(len(SEEDS))), st.data())
def test_policy_seed_mutated_at_any_path(seed: int, data: st.DataObject) -> None:
    doc = yaml.safe_load(SEEDS[seed])
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(doc)))
        doc = _replace(doc, path, data.draw(values))
    _load_policy(yaml.safe_dump(doc))


@FAST
@given(st.sampled_from(range(len(SEEDS))), st.data())
def test_policy_seed_text_mutations(seed: int, data: st.DataObject) -> None:
    text = SEEDS[seed]
    i = data.draw(st.integers(0, len(text) - 1))
    j = data.draw(st.integers(i, min(len(text), i + 20)))
    _load_policy(text[:i] + data.draw(st.text(max_size=20)) + text[j:])


FILTER_FIELDS = ["event_set", "namespace", "namespace_regex", "pod_regex", "binary_regex",
                 "parent_binary_regex", "arguments_regex", "parent_arguments_regex",
                 "ancestor_binary_regex", "labels", "policy_names", "pid", "pid_set", "health_check",
                 "container_id", "container_name_regex", "in_init_tree", "capabilities"]
filter_values = st.one_of(values, st.lists(st.sampled_from(["PROCESS_EXEC", "PROCESS_EXIT", "PROCESS_KPROBE",
                                                            "a.*", "(", "[", "kube-system"]), max_size=3),
                          st.sampled_from(["app=x", "app in (a,b)", "!x", "a!=b", "==", ""]))
filter_lines = st.lists(st.dictionaries(st.sampled_from(FILTER_FIELDS), filter_values, max_size=3), max_size=3)
field_filter_lines = st.lists(st.fixed_dictionaries(
    {"fields": st.one_of(st.text(max_size=30), st.sampled_from(["process.pid,parent", "process", "", ".."]))},
    optional={"event_set": st.lists(st.sampled_from(["PROCESS_EXEC", "PROCESS_EXIT", "X"]), max_size=2),
              "action": st.sampled_from(["INCLUDE", "EXCLUDE", "", "x"]),
              "invert_event_set": st.one_of(st.booleans(), st.text(max_size=3))}), max_size=2)
redaction_lines = st.lists(st.fixed_dictionaries(
    {"redact": st.lists(st.sampled_from(["--password[= ](\\S+)", "(x)", "((", "abc", "(a)(b)"]), max_size=2)},
    optional={"binary_regex": st.lists(st.sampled_from(["mysql", ".*", "["]), max_size=2)}), max_size=2)

words = st.text(max_size=30)
processes = st.fixed_dictionaries({}, optional={
    "binary": words, "arguments": words, "pid": st.integers(0, 2**31), "exec_id": words,
    "pod": st.fixed_dictionaries({}, optional={"namespace": words, "name": words,
                                               "pod_labels": st.dictionaries(words, words, max_size=2),
                                               "container": st.fixed_dictionaries({}, optional={
                                                   "id": words, "name": words})}),
    "cap": st.fixed_dictionaries({}, optional={"effective": st.lists(st.sampled_from(
        ["CAP_SYS_ADMIN", "CAP_KILL", "X"]), max_size=2)}),
    "environment_variables": st.lists(st.fixed_dictionaries({"key": words, "value": words}), max_size=2),
    "in_init_tree": st.booleans()})
events = st.builds(lambda kind, p, parent, ancestors, extra: {
    kind: {"process": p, "parent": parent, "ancestors": ancestors, **extra}, "node_name": "n",
    "time": "2026-01-01T00:00:00Z"},
    st.sampled_from(["process_exec", "process_exit", "process_kprobe", "process_tracepoint"]),
    processes, processes, st.lists(processes, max_size=2),
    st.fixed_dictionaries({}, optional={"policy_name": words, "function_name": words}))


def _jsonl(lines: list[dict]) -> str:
    return "\n".join(json.dumps(x) for x in lines)


@FAST
@given(st.text(max_size=300), st.text(max_size=100), st.text(max_size=100), st.text(max_size=100))
def test_filter_options_take_any_text(allow: str, deny: str, fields: str, redact: str) -> None:
    try:
        ExportFilters.parse(allow, deny, fields, redact)
    except FilterError as exc:
        assert str(exc)


@FAST
@given(filter_lines, filter_lines, field_filter_lines, redaction_lines, st.lists(events, min_size=1, max_size=4))
def test_filters_that_parse_never_fail_on_an_event(allow: list, deny: list, fields: list, redact: list,
                                                    evs: list[dict]) -> None:
    try:
        f = ExportFilters.parse(_jsonl(allow), _jsonl(deny), _jsonl(fields), _jsonl(redact))
    except FilterError as exc:
        assert "line" in str(exc) or str(exc)
        return
    for ev in evs:
        out = f(json.loads(json.dumps(ev)))
        if out is not None:
            json.dumps(out)  # still an exportable document


def test_found_by_fuzzing() -> None:
    """Crashes these tests found (fixed): a YAML value tag, and a process id that is no number."""
    import pytest

    with pytest.raises(PolicyError, match="not valid YAML"):
        parser.parse_text("=", "x.yaml")
    with pytest.raises(FilterError, match="export_denylist: line 1: pid: expected process ids"):
        ExportFilters.parse("", '{"pid": ["PROCESS_EXEC"]}')
    with pytest.raises(FilterError, match="pid_set: expected process ids"):
        ExportFilters.parse('{"pid_set": [true]}')
