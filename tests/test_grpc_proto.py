"""Our .proto of Tetragon's API against our JSON export: a JSON line of the export and the protobuf
message of the same event are the same event, both ways (protobuf's json_format vs our protojson
renderer/reader), and the committed generated modules are what scripts/gen-proto.sh makes from
schemas/proto/. No broker, no kernel (about a second)."""

from __future__ import annotations

import base64
import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, json_format
from json_events import exec_event, exit_event, kprobe_event, seed_doc

from exporters import grpc_api, protojson
from tetragon import capabilities_pb2, events_pb2, sensors_pb2, tetragon_pb2

REPO = Path(__file__).resolve().parent.parent


def _kinds() -> list[dict[str, Any]]:
    """Avro events of every kind our pipeline produces, with the awkward values in them."""
    ex = exec_event(args="-c 'ls \x1b[2J' é", pid=0)
    kp = kprobe_event()
    kpj = protojson.to_protojson(kp)
    body = kpj["process_kprobe"]
    body["args"] += [{"int_arg": -1}, {"uint_arg": 4294967295}, {"long_arg": "-9223372036854775808"},
                     {"truncated_bytes_arg": {"bytes_arg": base64.b64encode(b"\0\xff").decode(), "orig_size": "9"}},
                     {"path_arg": {"path": "/x", "permission": "-rw-r--r--"}, "label": "p"},
                     {"sock_arg": {"family": "AF_INET", "type": "SOCK_STREAM", "protocol": "IPPROTO_TCP",
                                   "saddr": "127.0.0.1", "daddr": "10.0.0.1", "sport": 40000, "dport": 443,
                                   "cookie": "18446744073709551615", "state": "TCP_SYN_SENT"}},
                     {"capability_arg": {"value": 0, "name": "CAP_CHOWN"}}, {"string_arg": ""}]
    body["return"] = {"int_arg": 0}
    body["return_action"] = "KPROBE_ACTION_POST"
    body["tags"] = ["a", "b"]
    body["message"] = "m"
    process = copy.deepcopy(kpj["process_kprobe"]["process"])
    others = [
        {"process_tracepoint": {"process": process, "subsys": "raw_syscalls", "event": "sys_enter",
                                "args": [{"long_arg": "59"}], "policy_name": "p", "action": "KPROBE_ACTION_POST"}},
        {"process_lsm": {"process": process, "function_name": "file_open", "policy_name": "p",
                         "action": "KPROBE_ACTION_SIGKILL"}},
        {"process_loader": {"process": process, "parent": process, "path": "/lib/libc.so.6",
                            "buildid": base64.b64encode(bytes(range(20))).decode()}},
        {"process_uprobe": {"process": process, "path": "/bin/bash", "symbol": "readline", "offset": "4096",
                            "policy_name": "p", "action": "KPROBE_ACTION_SIGKILL"}},
        {"rate_limit_info": {"number_of_dropped_process_events": "12345678901"}},
    ]
    out = [ex, exit_event(status=255), kp, protojson.from_protojson(kpj)]
    for o in others:
        o.update({"node_name": kpj["node_name"], "time": "2026-12-04T13:00:00.000000001Z"})
        out.append(protojson.from_protojson(o))
    return out


@pytest.mark.parametrize("event", _kinds(), ids=lambda e: next(k for k in e if e[k] is not None))
def test_export_line_and_protobuf_are_the_same_event(event: dict[str, Any]) -> None:
    line = protojson.dumps(event)                      # what the JSON export writes
    doc = protojson.to_protojson(event)
    msg = json_format.Parse(line, events_pb2.GetEventsResponse())  # protobuf reads our line
    assert grpc_api.to_message(doc) == msg  # the server's converter makes the same message
    wire = msg.SerializeToString()
    again = events_pb2.GetEventsResponse.FromString(wire)  # as a gRPC client receives it
    assert again == msg
    assert json_format.MessageToDict(again, preserving_proto_field_name=True) == doc  # and back, field for field
    assert protojson.from_protojson(grpc_api.to_doc(again)) == protojson.from_protojson(doc)  # our reader


def test_fields_tetragon_has_no_place_for_are_refused() -> None:
    doc = protojson.to_protojson(exec_event())
    doc["process_exec"]["process"]["not_a_field"] = 1
    with pytest.raises(grpc_api.NotInApi, match="no field 'not_a_field'"):
        grpc_api.to_message(doc)
    doc = protojson.to_protojson(exit_event())
    doc["process_exit"]["status"] = "many"
    with pytest.raises(grpc_api.NotInApi):
        grpc_api.to_message(doc)


def test_seed_tetragon_event_both_ways() -> None:
    """Tetragon's own export line (the seed) → protobuf → our reader → our export line: unchanged."""
    seed = seed_doc()
    msg = json_format.ParseDict(seed, events_pb2.GetEventsResponse())
    assert msg.process_exec.process.pid.value == seed["process_exec"]["process"]["pid"]
    ours = protojson.to_protojson(protojson.from_protojson(grpc_api.to_doc(msg)))
    assert ours == seed


def test_message_built_with_protobuf_reads_back_through_our_codec() -> None:
    """The other direction: a message set field by field in protobuf (zero wrappers, 64-bit values,
    nanosecond times, maps, enums, bytes) → json_format → our Avro codec → our JSON → same message."""
    msg = events_pb2.GetEventsResponse(node_name="n1", cluster_name="c1")
    msg.node_labels["zone"] = "a"
    msg.time.FromNanoseconds(1_764_000_000_123_456_789)
    p = msg.process_kprobe.process
    p.exec_id, p.binary, p.arguments, p.cwd, p.flags = "aWQ=", "/bin/x", "a b", "/", "execve clone"
    p.pid.value, p.uid.value, p.auid.value, p.tid.value = 0, 0, 4294967295, 7
    p.start_time.FromNanoseconds(1_000_000_001)
    p.cap.effective.extend([capabilities_pb2.CAP_SYS_ADMIN, capabilities_pb2.DAC_OVERRIDE])
    p.ns.net.inum, p.ns.net.is_host = 4026531840, True
    p.pod.namespace, p.pod.name = "default", "web"
    p.pod.pod_labels["app"] = "web"
    p.pod.container.id, p.pod.container.name = "containerd://abc", "nginx"
    p.pod.container.pid.value = 1
    p.in_init_tree.value = False
    k = msg.process_kprobe
    k.function_name, k.policy_name, k.action = "__x64_sys_write", "pol", tetragon_pb2.KPROBE_ACTION_SIGKILL
    k.args.add().file_arg.path = "/etc/shadow"
    k.args.add().bytes_arg = b"\x00\x01"
    k.args.add().size_arg = 18446744073709551615
    k.args.add(label="fd").int_arg = 0
    k.tags.append("t")
    text = json_format.MessageToJson(msg, preserving_proto_field_name=True)
    avro = protojson.from_protojson(json.loads(text))
    back = json_format.Parse(protojson.dumps(avro), events_pb2.GetEventsResponse())
    assert back == msg


def test_every_event_of_the_oneof_is_a_tetragon_event_type() -> None:
    oneof = events_pb2.GetEventsResponse.DESCRIPTOR.oneofs_by_name["event"]
    for f in oneof.fields:
        assert events_pb2.EventType.Value(f.name.upper()) == f.number  # Tetragon keeps them in step
    svc = sensors_pb2.DESCRIPTOR.services_by_name["FineGuidanceSensors"]
    assert {"GetEvents", "GetHealth", "AddTracingPolicy", "DeleteTracingPolicy", "ListTracingPolicies",
            "EnableTracingPolicy", "DisableTracingPolicy", "GetVersion"} <= set(svc.methods_by_name)
    assert svc.full_name == "tetragon.FineGuidanceSensors"


def _messages(msgs: Any) -> Any:
    for m in msgs:
        yield m
        yield from _messages(m.nested_type)


def test_committed_modules_match_the_proto_files(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    out = tmp_path / "set.pb"
    protos = sorted(str(p) for p in (REPO / "schemas" / "proto" / "tetragon").glob("*.proto"))
    r = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(REPO / "schemas" / "proto"),
                        f"--descriptor_set_out={out}", *protos], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    fresh = {f.name: f for f in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file}
    for f in fresh.values():  # the generated modules embed descriptors without the derived json_name
        for m in _messages(f.message_type):
            for fld in m.field:
                fld.ClearField("json_name")
    import tetragon.bpf_pb2
    import tetragon.stack_pb2

    for mod in (tetragon_pb2, events_pb2, sensors_pb2, capabilities_pb2, tetragon.bpf_pb2, tetragon.stack_pb2):
        committed = descriptor_pb2.FileDescriptorProto.FromString(mod.DESCRIPTOR.serialized_pb)
        assert committed == fresh[committed.name], f"{committed.name}: run scripts/gen-proto.sh"


def test_request_filters_then_redaction_then_field_filters() -> None:
    """A GetEventsRequest is served with the JSON export's filter code: allow/deny, the configured
    redaction filters again, then field filters."""
    from exporters import filters

    req = events_pb2.GetEventsRequest(allow_list=[events_pb2.Filter(binary_regex=["mysql$"])],
                                      deny_list=[events_pb2.Filter(arguments_regex=["--version"])])
    ff = req.field_filters.add(action=events_pb2.INCLUDE)
    ff.fields.paths.extend(["process.arguments", "process.binary"])
    red = filters.parse_redaction_filters('{"redact": ["--password=(\\\\S+)"]}')
    select = grpc_api.request_selector(req, red)
    doc = protojson.to_protojson(exec_event(binary="/usr/bin/mysql", args="-u root --password=hunter2"))
    assert select(doc) == {**{k: v for k, v in doc.items() if k != "process_exec"},
                           "process_exec": {"process": {"binary": "/usr/bin/mysql",
                                                        "arguments": "-u root --password=*****"}}}
    assert select(protojson.to_protojson(exec_event(binary="/usr/bin/mysql", args="--version"))) is None
    assert select(protojson.to_protojson(exec_event(binary="/bin/ls"))) is None


TETRAGON_API_CACHE = Path("/var/cache/tetrapipe-build/tetragon-client/gopath/pkg/mod/github.com/cilium/tetragon")
# in our .proto, not in Tetragon's v1.7 API: GetStackTraceTree (in Tetragon's API up to v1.6), kept
# so that older clients get a clean UNIMPLEMENTED
ONLY_OURS = {"GetStackTraceTreeRequest", "GetStackTraceTreeResponse", "StackAddress", "StackTrace",
             "StackTraceLabel", "StackTraceNode"}


def _tetragon_api_dir() -> Path:
    """Tetragon's own .proto files: in its Go API module, which scripts/setup-tetragon-client.sh
    fetches (the version tests/tetragon_client/go.mod names)."""
    gomod = (REPO / "tests" / "tetragon_client" / "go.mod").read_text()
    version = next(ln.split()[-1] for ln in gomod.splitlines() if "github.com/cilium/tetragon/api v" in ln)
    d = TETRAGON_API_CACHE / f"api@{version}" / "v1"
    if not (d / "tetragon" / "tetragon.proto").exists():
        from conftest import skip_or_fail

        skip_or_fail(f"Tetragon's API module {version} not fetched: run scripts/setup-tetragon-client.sh")
    return d


def _fields(root: Path, tmp: Path) -> tuple[dict[str, dict[str, tuple[int, int, str, int]]], dict[str, dict[str, int]]]:
    """message → field → (number, type, type name, label), enum → value → number, of package tetragon."""
    import grpc_tools

    out = tmp / f"{root.name}-{abs(hash(str(root)))}.pb"
    protos = sorted(f"tetragon/{p.name}" for p in (root / "tetragon").glob("*.proto"))
    r = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(root),
                        "-I", str(Path(grpc_tools.__file__).parent / "_proto"), f"--descriptor_set_out={out}",
                        *protos], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    msgs: dict[str, dict[str, tuple[int, int, str, int]]] = {}
    enums: dict[str, dict[str, int]] = {}

    def walk(prefix: str, m: descriptor_pb2.DescriptorProto) -> None:
        msgs[prefix + m.name] = {f.name: (f.number, f.type, f.type_name, f.label) for f in m.field}
        for e in m.enum_type:
            enums[f"{prefix}{m.name}.{e.name}"] = {v.name: v.number for v in e.value}
        for n in m.nested_type:
            walk(f"{prefix}{m.name}.", n)

    for f in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        for m in f.message_type:
            walk("", m)
        for e in f.enum_type:
            enums[e.name] = {v.name: v.number for v in e.value}
    return msgs, enums


def test_every_field_number_is_tetragons(tmp_path: Path) -> None:
    """Each message, field (number, type, label) and enum value of our .proto is the same in the
    .proto files of Tetragon's published Go API module: a binary message of ours decodes in
    Tetragon's clients field for field."""
    pytest.importorskip("grpc_tools")
    theirs, their_enums = _fields(_tetragon_api_dir(), tmp_path)
    ours, our_enums = _fields(REPO / "schemas" / "proto", tmp_path)
    diffs = []
    for name, fields in sorted(ours.items()):
        if name not in theirs:
            if name not in ONLY_OURS:
                diffs.append(f"message {name} is not Tetragon's")
            continue
        for f, spec in fields.items():
            if theirs[name].get(f) != spec:
                diffs.append(f"{name}.{f}: ours {spec}, Tetragon's {theirs[name].get(f)}")
    for name, values in sorted(our_enums.items()):
        for v, n in values.items():
            if their_enums.get(name, {}).get(v) != n:
                diffs.append(f"enum {name}.{v}: ours {n}, Tetragon's {their_enums.get(name, {}).get(v)}")
    assert not diffs, "\n".join(diffs)
    assert ours["Pod"]["uid"][0] == 3 and ours["ProcessUsdt"]["action"][0] == 11  # the ones once wrong
