"""Post's ``kernelStackTrace``/``userStackTrace`` on this kernel (bpf_get_stackid into the policy's
stack map, symbolised by the collector's drain: collector/stacks.py).

A kprobe policy on ``sys_openat`` (served by the syscall tracepoint here) with two selectors: one
asks for both stacks, the other for none. ``tests/data/stack_probe.c``, built here with frame
pointers, opens a file by a raw syscall instruction in ``tetrapipe_stack_leaf`` and waits on stdin
(the user stack is symbolised while it lives). Checked through the enricher's code, the Avro
codec, Tetragon's JSON, Tetragon's protobuf (gRPC) and tetra's compact ``--stack-traces`` lines:
the kernel stack has the syscall path (``do_syscall_64``, kernel image, offset inside it), the user
stack starts in ``tetrapipe_stack_leaf`` then ``main`` of the probe binary. Also: a process gone
before it is symbolised keeps its addresses with no symbols (counted); the record layout round
trip; events of the schema before the stack fields still decode."""

from __future__ import annotations

import asyncio
import io
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import fastavro
import pytest
from conftest import bpf_unavailable_reason, skip_or_fail
from json_events import kprobe_event

from bpf import records as r
from collector import loader, procfs, stacks
from collector.drain import RecordQueue
from collector.policy.manager import PolicyManager
from enricher.event_builder import EventBuilder
from enricher.policy_events import PolicyEvents
from enricher.process_cache import ProcessCache
from exporters import compact, grpc_api, protojson
from schemas import codec

DATA = Path(__file__).parent / "data"
POLICY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: stack-traces
spec:
  kprobes:
  - call: sys_openat
    syscall: true
    args: [{index: 1, type: string, label: name}]
    selectors:
    - matchArgs: [{index: 1, operator: Prefix, values: ["/tmp/tetrapipe-stacks-with-"]}]
      matchActions: [{action: Post, kernelStackTrace: true, userStackTrace: true}]
    - matchArgs: [{index: 1, operator: Prefix, values: ["/tmp/tetrapipe-stacks-none-"]}]
      matchActions: [{action: Post}]
"""


RAW: list[r.HookRecord] = []   # hook records seen, in order
ENRICH = (PolicyEvents(expose_stack_addresses=True), EventBuilder(ProcessCache(100)))   # one for the module


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stacks") / "stack-probe"
    subprocess.run(["gcc", "-O0", "-fno-omit-frame-pointer", "-o", str(out), str(DATA / "stack_probe.c")],
                   check=True)
    return out


@pytest.fixture(scope="module")
def mgr() -> Iterator[PolicyManager]:
    reason = bpf_unavailable_reason()
    if reason:
        skip_or_fail(reason)
    loader.prepare()
    m = PolicyManager(RecordQueue(1_000_000, asyncio.new_event_loop()), procfs.host_namespaces())
    try:
        m.load_text(POLICY, "stack-traces.yaml")
        yield m
    finally:
        m.stop()


def _drain(m: PolicyManager, pe: PolicyEvents, b: EventBuilder) -> list[dict]:
    out = []
    for raw in m.queue.take(1_000_000):
        rec = r.decode(raw)
        if isinstance(rec, r.PolicyRecord):
            pe.on_catalog(rec, "n")
        elif isinstance(rec, r.HookRecord):
            RAW.append(rec)
            ev = codec.decode("event", codec.encode("event", pe.on_hook(rec, "n", 0, b)))
            if ev["process_kprobe"]["policy_name"] == "stack-traces":
                out.append(ev)
    return out


def _open_and_wait(m: PolicyManager, probe: Path, name: str) -> list[dict]:
    """The probe opens ``name`` and waits until its event is in (or 10 s), then exits."""
    pe, b = ENRICH
    _drain(m, pe, b)
    got: list[dict] = []
    with subprocess.Popen([str(probe), name, "wait"], stdin=subprocess.PIPE) as p:
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
            got = _drain(m, pe, b)
        p.communicate(b"done\n", timeout=10)
    return got


def test_kernel_and_user_stacks_symbolised(mgr: PolicyManager, probe: Path) -> None:
    evs = _open_and_wait(mgr, probe, "/tmp/tetrapipe-stacks-with-1")
    assert len(evs) == 1
    kp = evs[0]["process_kprobe"]
    kernel = kp["kernel_stack_trace"]
    syms = [f["symbol"] for f in kernel]
    assert "do_syscall_64" in syms, syms
    dsc = kernel[syms.index("do_syscall_64")]
    assert dsc["module"] == "" and 0 < dsc["offset"] < 0x10000    # the kernel image, inside the function
    user = kp["user_stack_trace"]
    assert [f["symbol"] for f in user[:2]] == ["tetrapipe_stack_leaf", "main"], user
    assert user[0]["module"] == str(probe) and user[0]["offset"] > 0

    doc = protojson.to_protojson(evs[0])
    jk = doc["process_kprobe"]["kernel_stack_trace"]
    assert int(jk[0]["address"]) >= 1 << 63      # a kernel address, unsigned as Tetragon's uint64
    assert doc["process_kprobe"]["user_stack_trace"][0]["symbol"] == "tetrapipe_stack_leaf"
    msg = grpc_api.to_message(doc)                # Tetragon's protobuf has the fields
    assert msg.process_kprobe.user_stack_trace[1].symbol == "main"
    assert msg.process_kprobe.kernel_stack_trace[syms.index("do_syscall_64")].symbol == "do_syscall_64"
    lines = compact.Compact(stack_traces=True).output(doc)   # tetra --stack-traces
    assert "do_syscall_64" in lines and "tetrapipe_stack_leaf" in lines
    # by default, as Tetragon without --expose-stack-addresses: frames without their addresses
    hidden = PolicyEvents()
    hidden.catalog = ENRICH[0].catalog
    kp0 = hidden.on_hook(RAW[-1], "n", 0, ENRICH[1])["process_kprobe"]
    assert [f["symbol"] for f in kp0["kernel_stack_trace"]] == syms
    assert {f["address"] for f in kp0["kernel_stack_trace"] + kp0["user_stack_trace"]} == {0}


def test_selector_without_stack_actions_has_none(mgr: PolicyManager, probe: Path) -> None:
    evs = _open_and_wait(mgr, probe, "/tmp/tetrapipe-stacks-none-1")
    assert len(evs) == 1
    kp = evs[0]["process_kprobe"]
    assert kp["kernel_stack_trace"] == [] and kp["user_stack_trace"] == []
    assert "kernel_stack_trace" not in protojson.to_protojson(evs[0])["process_kprobe"]


def test_gone_process_keeps_addresses_without_symbols() -> None:
    pid = subprocess.Popen(["true"])
    pid.wait()
    before = stacks.UNRESOLVED.labels("user")._value.get()
    frames = stacks.user_frames(pid.pid, [0x401000, 0x401234])
    assert [(f.address, f.symbol) for f in frames] == [(0x401000, ""), (0x401234, "")]
    assert stacks.UNRESOLVED.labels("user")._value.get() == before   # counted by the symbolizer, below

    class Map:
        def walk(self, sid: int) -> Iterator[int]:
            if sid != 7:
                raise KeyError(sid)
            return iter([0x401000, 0x401234])

    sym = stacks.StackSymbolizer({"stack_traces": Map()}, kernel=stacks.KernelSymbols(Path("/dev/null")),
                                 user=stacks.user_frames)
    body = r.HookBody(1, 0, 0, 1, 0, 0, [r.HookArg(r.ARG_STRING, 0, 3, b"abc")],
                      kernel_stack=r.StackTrace([], -17, symbolised=False),     # -EEXIST: not captured
                      user_stack=r.StackTrace([], 7, symbolised=False))
    rec = sym.rewrite(r.encode_hook(pid.pid, pid.pid, 5, body))
    got = r.decode_hook(r.decode(rec))
    assert got.args[0].data == b"abc" and got.kernel_stack.frames == []
    assert [f.address for f in got.user_stack.frames] == [0x401000, 0x401234]
    assert stacks.UNRESOLVED.labels("user")._value.get() == before + 2
    # an older record (stack ids, not symbolised) and a symbolised one both decode
    again = r.decode_hook(r.decode(r.encode_hook(1, 1, 5, body)))
    assert again.user_stack.stack_id == 7 and not again.user_stack.symbolised


def test_events_of_the_schema_before_stacks_decode() -> None:
    v3 = fastavro.parse_schema(__import__("json").loads((Path(codec.__file__).parent / "history" /
                                                          "event.v3.avsc").read_text()), _force=True)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, v3, kprobe_event(pid=99))
    fp = struct.pack("<Q", codec.crc64_avro(fastavro.schema.to_parsing_canonical_form(v3).encode()))
    got = codec.decode("event", codec.SINGLE_OBJECT_MAGIC + fp + buf.getvalue())
    assert got["process_kprobe"]["process"]["pid"] == 99
    assert got["process_kprobe"]["kernel_stack_trace"] == [] and got["process_kprobe"]["user_stack_trace"] == []
