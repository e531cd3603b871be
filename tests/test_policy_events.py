"""Enricher side of policies: hook records + catalog → Tetragon-shaped events (no kernel, no Kafka:
records are packed with bpf/records.py as the kernel lays them out)."""

from __future__ import annotations

import json

import pytest

from bpf import records as r
from enricher.event_builder import EventBuilder
from enricher.policy_events import PolicyEventError, PolicyEvents
from enricher.process_cache import ProcessCache
from exporters import compact, protojson
from schemas import codec

NODE = "node-a"
CATALOG = {
    "policy_id": 77, "name": "deny-tmp-forbidden-write", "namespace": "", "mode": "enforce", "state": "loaded",
    "hooks": [
        {"id": 0, "kind": "kprobe", "function_name": "fd_install", "args": [
            {"index": 0, "type": "int", "label": ""}, {"index": 1, "type": "file", "label": "f"}],
         "message": "", "tags": []},
        {"id": 3, "kind": "kprobe", "function_name": "__x64_sys_write", "args": [
            {"index": 0, "type": "fd", "label": ""}, {"index": 1, "type": "char_buf", "label": ""},
            {"index": 2, "type": "size_t", "label": ""}], "message": "write denied", "tags": ["fim"]},
        {"id": 4, "kind": "tracepoint", "function_name": "sched_process_exec", "subsys": "sched",
         "event": "sched_process_exec", "args": [], "message": "", "tags": []},
    ],
}


def catalog(doc: dict) -> r.PolicyRecord:
    rec = r.decode(r.encode_policy(1, json.dumps(doc).encode()))
    assert isinstance(rec, r.PolicyRecord)
    return rec


def hook(policy_id: int, hook_id: int, action: int, args: list[r.HookArg], flags: int = 0, ret: int = 0,
         pid: int = 4242) -> r.HookRecord:
    body = r.HookBody(policy_id, hook_id, 0, action, flags, ret, args)
    rec = r.decode(r.encode_hook(pid, pid, 5_000, body))
    assert isinstance(rec, r.HookRecord)
    return rec


def u64(v: int) -> bytes:
    return (v & (2**64 - 1)).to_bytes(8, "little")


@pytest.fixture
def built() -> tuple[PolicyEvents, EventBuilder]:
    pe = PolicyEvents()
    pe.on_catalog(catalog(CATALOG), NODE)
    return pe, EventBuilder(ProcessCache(100))


def test_write_event_typed_args_and_compact(built: tuple[PolicyEvents, EventBuilder]) -> None:
    pe, b = built
    data = b"hello world\n" * 3
    ev = pe.on_hook(hook(77, 3, 3, [r.HookArg(r.ARG_FILE, 0, 28, b"/tmp/forbidden/donotchange.me"),
                                    r.HookArg(r.ARG_BYTES, 0, len(data), data),
                                    r.HookArg(r.ARG_SIZE, 0, 8, u64(len(data)))]), NODE, 10**18, b)
    k = ev["process_kprobe"]
    assert k["function_name"] == "__x64_sys_write" and k["action"] == "KPROBE_ACTION_SIGKILL"
    assert k["policy_name"] == "deny-tmp-forbidden-write" and k["message"] == "write denied" and k["tags"] == ["fim"]
    assert k["args"][0]["file_arg"] == {"path": "/tmp/forbidden/donotchange.me"}
    assert k["args"][1]["bytes_arg"] == data and k["args"][2]["size_arg"] == 36
    assert k["process"]["pid"] == 4242 and k["process"]["flags"] == "miss"   # no exec seen for it
    assert ev["time"] == 10**18 + 5_000
    doc = protojson.to_protojson(codec.decode("event", codec.encode("event", ev)))
    assert compact.render(doc).endswith("/tmp/forbidden/donotchange.me 36 bytes")
    assert compact.render(doc).startswith("📝 write")


def test_truncated_bytes_negative_int_and_monitor_tag(built: tuple[PolicyEvents, EventBuilder]) -> None:
    pe, b = built
    ev = pe.on_hook(hook(77, 0, 2, [r.HookArg(r.ARG_INT, 0, 8, u64(-9)), r.HookArg(r.ARG_FILE, 0, 4, b"/a/b")],
                         flags=r.HOOK_MONITOR), NODE, 0, b)
    k = ev["process_kprobe"]
    assert k["args"][0]["int_arg"] == -9 and k["args"][1]["label"] == "f"
    assert "policy-mode:monitor" in k["tags"] and k["action"] == "KPROBE_ACTION_FOLLOWFD"
    trunc = pe.on_hook(hook(77, 3, 1, [r.HookArg(r.ARG_BYTES, r.ARGF_TRUNC, 10_000, b"x" * 4096)]), NODE, 0, b)
    assert trunc["process_kprobe"]["args"][0]["truncated_bytes_arg"] == {"bytes_arg": b"x" * 4096, "orig_size": 10_000}


def test_return_value_and_tracepoint(built: tuple[PolicyEvents, EventBuilder]) -> None:
    pe, b = built
    ev = pe.on_hook(hook(77, 3, 1, [], flags=r.HOOK_RETURN, ret=-13), NODE, 0, b)
    assert ev["process_kprobe"]["return"]["int_arg"] == -13
    tp = pe.on_hook(hook(77, 4, 3, []), NODE, 0, b)["process_tracepoint"]
    assert (tp["subsys"], tp["event"], tp["action"]) == ("sched", "sched_process_exec", "KPROBE_ACTION_SIGKILL")


def test_io_uring_request_tags(built: tuple[PolicyEvents, EventBuilder]) -> None:
    """An io_uring request judged as the hook's syscall: tagged io_uring and its opcode, no return."""
    pe, b = built
    k = pe.on_hook(hook(77, 3, 3, [r.HookArg(r.ARG_FILE, 0, 4, b"/a/b")], flags=r.HOOK_IO_URING, ret=23),
                   NODE, 0, b)["process_kprobe"]
    assert k["tags"] == ["fim", "io_uring", "io_uring.WRITE"] and "return" not in k
    k = pe.on_hook(hook(77, 3, 3, [], flags=r.HOOK_IO_URING, ret=99), NODE, 0, b)["process_kprobe"]
    assert k["tags"][-1] == "io_uring.99"
    assert pe.on_hook(hook(77, 3, 3, []), NODE, 0, b)["process_kprobe"]["tags"] == ["fim"]


def test_unknown_policy_and_deleted_catalog(built: tuple[PolicyEvents, EventBuilder]) -> None:
    pe, b = built
    with pytest.raises(PolicyEventError, match="unknown policy id 5"):
        pe.on_hook(hook(5, 0, 1, []), NODE, 0, b)
    with pytest.raises(PolicyEventError, match="unknown policy id 77"):  # catalogs are per node
        pe.on_hook(hook(77, 0, 1, []), "other-node", 0, b)
    pe.on_catalog(catalog({**CATALOG, "state": "deleted"}), NODE)
    with pytest.raises(PolicyEventError):
        pe.on_hook(hook(77, 3, 1, []), NODE, 0, b)


def test_malformed_hook_record_is_refused() -> None:
    rec = hook(77, 3, 1, [r.HookArg(r.ARG_BYTES, 0, 5, b"hello")])
    broken = r.HookRecord(rec.header, rec.body[:-2])
    with pytest.raises(r.RecordError):
        r.decode_hook(broken)
