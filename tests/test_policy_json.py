"""TracingPolicy documents as JSON: the same policies as YAML, errors pointing at the JSON path and
line, strict JSON; through the control socket, a watched directory and a file loaded in the
kernel (a Sigkill that fires)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import bpf_unavailable_reason, skip_or_fail
from hypothesis import given, settings
from hypothesis import strategies as st

from collector import loader, procfs
from collector.drain import RecordQueue
from collector.policy import control, jsondoc, parser
from collector.policy.manager import PolicyManager
from collector.policy.model import PolicyError

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "tests/data/seed/deny-tmp-forbidden-write.yaml"


def seed_json(indent: int | str = 2) -> tuple[dict, str]:
    d = yaml.safe_load(SEED.read_text())
    return d, json.dumps(d, indent=indent)


@pytest.mark.parametrize("path", sorted((ROOT / "examples/policies").glob("*.yaml")) + [SEED], ids=lambda p: p.name)
def test_json_is_the_same_policy_as_yaml(path: Path) -> None:
    from_yaml = parser.parse_text(path.read_text(), "p.yaml")
    docs = list(yaml.safe_load_all(path.read_text()))
    text = json.dumps(docs[0] if len(docs) == 1 else docs, indent="\t")   # tabs: not YAML
    from_json = parser.parse_text(text, "p.json")
    for a, b in zip(from_yaml, from_json, strict=True):
        a.source = b.source = ""
        a.lines = b.lines = {}
        assert a == b


def test_errors_point_at_the_json_path_and_line() -> None:
    d, _ = seed_json()
    d["spec"]["kprobes"][0]["selectors"][0]["matchArgs"][0]["operator"] = "Prefx"
    text = json.dumps(d, indent=2)
    with pytest.raises(PolicyError) as e:
        parser.parse_text(text, "p.json")
    assert e.value.path == "spec.kprobes[0].selectors[0].matchArgs[0].operator"
    assert '"operator": "Prefx"' in text.splitlines()[e.value.line - 1]
    assert str(e.value).startswith(f"p.json:{e.value.line}: spec.kprobes[0]")


@pytest.mark.parametrize("text, line, reason", [
    ('{"apiVersion": "cilium.io/v1alpha1",\n "kind": "TracingPolicy",}', 2, "expected a key in double quotes"),
    ('{"kind": "TracingPolicy",\n\n "kind": "TracingPolicy"}', 3, "key 'kind' appears twice"),
    ('{"a": NaN}', 1, "expected a value"),
    ('{"a": 1} // comment', 1, "text after the JSON value"),
    ('{"a": "unterminated', 1, "Unterminated string"),
    ('[' * 100 + ']' * 100, 1, "nested deeper than 64"),
])
def test_strict_json_with_line_and_column(text: str, line: int, reason: str) -> None:
    with pytest.raises(PolicyError) as e:
        parser.parse_text(text, "bad.json")
    assert e.value.line == line and reason in e.value.reason and "column" in e.value.reason


def test_a_list_of_policies_and_a_kubectl_list() -> None:
    d, _ = seed_json()
    other = json.loads(json.dumps(d))
    other["metadata"]["name"] = "second"
    other["spec"]["kprobes"][0]["selectors"][0]["matchArgs"][0]["operator"] = "Prefx"
    text = json.dumps({"apiVersion": "v1", "kind": "List", "items": [d, other]}, indent=2)
    with pytest.raises(PolicyError) as e:
        parser.parse_text(text, "list.json")
    assert e.value.path == "spec.kprobes[0].selectors[0].matchArgs[0].operator"
    assert '"Prefx"' in text.splitlines()[e.value.line - 1]  # the line of the second item
    assert [p.name for p in parser.parse_text(json.dumps([d]), "a.json")] == ["deny-tmp-forbidden-write"]
    with pytest.raises(PolicyError, match="appears twice in one file"):
        parser.parse_text(json.dumps([d, d]), "a.json")


def test_control_socket_and_watched_directory_refuse_with_the_json_line(tmp_path: Path) -> None:
    mgr = PolicyManager(RecordQueue(100, asyncio.new_event_loop()), [0] * 10)
    d, _ = seed_json()
    d["spec"]["kprobes"][1]["args"][0]["type"] = "int128"
    text = json.dumps(d, indent=2)
    reply = asyncio.run(control.handle({"op": "add", "yaml": text, "source": "p.json"}, mgr))
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "int128" in s)
    assert reply == {"ok": False, "error": f'p.json:{line}: spec.kprobes[1].args[0].type: unknown argument type '
                                           f'"int128" (one of {", ".join(sorted(parser.ARG_TYPES))})'}
    (tmp_path / "p.json").write_text(text)
    os.chmod(tmp_path / "p.json", 0o644)
    mgr.scan_dir(str(tmp_path))
    assert mgr.errors[str(tmp_path / "p.json")].startswith(f"{tmp_path / 'p.json'}:{line}: spec.kprobes[1].args[0]")
    assert not mgr.loaded


def test_a_json_policy_file_acts_in_the_kernel(tmp_path: Path) -> None:
    reason = bpf_unavailable_reason()
    if reason:
        skip_or_fail(reason)
    target = Path(f"/tmp/tp-json-{uuid.uuid4().hex[:8]}.txt")
    pol = {"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": "json-kill"},
           "spec": {"kprobes": [{"call": "sys_write", "syscall": True, "args": [{"index": 0, "type": "fd"}],
                                 "selectors": [{"matchArgs": [{"index": 0, "operator": "Equal",
                                                               "values": [str(target)]}],
                                                "matchActions": [{"action": "Sigkill"}]}]}]}}
    f = tmp_path / "json-kill.json"
    f.write_text(json.dumps(pol, indent=1))
    os.chmod(f, 0o644)
    loader.prepare()
    mgr = PolicyManager(RecordQueue(1_000_000, asyncio.new_event_loop()), procfs.host_namespaces())
    try:
        mgr.load_file(str(f))
        r = subprocess.run(["/usr/bin/dash", "-c", f"echo x >> {target}"], timeout=30)
        assert r.returncode == -9
        mgr.delete("json-kill")
        assert subprocess.run(["/usr/bin/dash", "-c", f"echo x >> {target}"], timeout=30).returncode == 0
    finally:
        mgr.stop()
        target.unlink(missing_ok=True)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES, st.sampled_from([None, 1, "\t"]))
def test_jsondoc_reads_what_json_writes(value: object, indent: object) -> None:
    doc = jsondoc.documents(json.dumps({"v": value}, indent=indent), "f.json")[0]  # type: ignore[arg-type]
    assert doc.value == {"v": value}
    assert all(line >= 1 for line in doc.lines.values())


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_jsondoc_never_fails_other_than_with_a_policy_error(text: str) -> None:
    try:
        jsondoc.documents("{" + text, "f.json")
    except PolicyError as exc:
        assert exc.line >= 1 and exc.reason.startswith("not valid JSON")
