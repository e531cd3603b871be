"""Typed kernel-object arguments (Tetragon's skb, sockaddr, bpf_attr, cred, module, ...).

On this kernel (no kprobes, trampolines refused) the objects are reached where a tracepoint
hands them over: ``net:net_dev_queue``'s ``skbaddr`` (skb), ``sys_enter_connect``'s sockaddr
and ``sys_enter_bpf``'s ``union bpf_attr`` (both in the caller's memory). A program compiled
here connects a UDP socket to a loopback listener, sends a datagram and loads a BPF program;
one policy with the three hooks (real bcc programs, the collector's PolicyManager) reports it,
the enricher's code turns the records into events, rendered as Tetragon's JSON and parsed by
Tetragon's protobuf. The same program started from another path is not reported (the
selectors' matchBinaries). The kernel-function types (cred, kernel_cap_t, perf_event, bpf_map,
module, load_info, user_namespace, iov_iter, kiocb, linux_binprm) run in the stock 6.12 guest
(tests/guest/test_guest_kargs.py); their decoding is checked below from packed records.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import bpf_unavailable_reason, skip_or_fail
from google.protobuf import json_format

from bpf import records as r
from collector import loader, procfs
from collector.drain import RecordQueue
from collector.policy.manager import PolicyManager
from collector.policy.model import PolicyError
from enricher.event_builder import EventBuilder
from enricher.policy_events import PolicyEvents
from enricher.process_cache import ProcessCache
from exporters import compact, prometheus, protojson
from schemas import codec
from tetragon import events_pb2

PROBE_C = r"""
#include <arpa/inet.h>
#include <linux/bpf.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

/* connect a UDP socket to 127.0.0.1:argv[1], send a datagram, load a 2-instruction BPF program */
int main(int argc, char **argv) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons(atoi(argv[1]));
    a.sin_addr.s_addr = htonl(0x7f000001);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof(a)) < 0 || send(s, "hello", 5, 0) != 5)
        return 1;
    struct bpf_insn insns[2] = {{.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 0, .imm = 0},
                                {.code = BPF_JMP | BPF_EXIT}};
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
    attr.insn_cnt = 2;
    attr.insns = (unsigned long)insns;
    attr.license = (unsigned long)"GPL";
    strcpy(attr.prog_name, "kargs_probe");
    syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof(attr));
    return 0;
}
"""

POLICY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: kernel-args
spec:
  tracepoints:
  - subsystem: net
    event: net_dev_queue
    args: [{index: 0, type: skb, label: packet}]
    selectors: [{matchBinaries: [{operator: In, values: ["BIN"]}]}]
  kprobes:
  - call: sys_connect
    syscall: true
    args: [{index: 1, type: sockaddr, label: addr}]
    selectors: [{matchBinaries: [{operator: In, values: ["BIN"]}]}]
  - call: sys_bpf
    syscall: true
    args: [{index: 0, type: int, label: cmd}, {index: 1, type: bpf_attr, label: attr}]
    selectors: [{matchBinaries: [{operator: In, values: ["BIN"]}]}]
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("kargs")
    (d / "probe.c").write_text(PROBE_C)
    subprocess.run(["gcc", "-O1", "-o", str(d / "kargs-probe"), str(d / "probe.c")], check=True)
    shutil.copy(d / "kargs-probe", d / "other-probe")
    return d / "kargs-probe"


@pytest.fixture(scope="module")
def mgr(probe: Path) -> Iterator[PolicyManager]:
    reason = bpf_unavailable_reason()
    if reason:
        skip_or_fail(reason)
    loader.prepare()
    m = PolicyManager(RecordQueue(1_000_000, asyncio.new_event_loop()), procfs.host_namespaces())
    try:
        m.load_text(POLICY.replace("BIN", str(probe)), "kernel-args.yaml")
        yield m
    finally:
        m.stop()


def _events(m: PolicyManager, pe: PolicyEvents, b: EventBuilder, out: list[dict]) -> None:
    for raw in m.queue.take(1_000_000):
        rec = r.decode(raw)
        if isinstance(rec, r.PolicyRecord):
            pe.on_catalog(rec, "n")
        elif isinstance(rec, r.HookRecord):
            out.append(protojson.to_protojson(codec.decode("event", codec.encode("event", pe.on_hook(rec, "n", 0, b)))))


def _run(m: PolicyManager, binary: Path) -> tuple[int, list[dict]]:
    pe, b, out = PolicyEvents(), EventBuilder(ProcessCache(100)), []
    _events(m, pe, b, out)   # catalog, and anything before
    out.clear()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv:
        srv.bind(("127.0.0.1", 0))
        port = srv.getsockname()[1]
        p = subprocess.run([str(binary), str(port)], timeout=30, check=False)
        assert p.returncode == 0
        assert srv.recv(16) == b"hello"
    time.sleep(0.5)
    _events(m, pe, b, out)
    return port, [e for e in out if e["process_kprobe" if "process_kprobe" in e else "process_tracepoint"]
                  ["policy_name"] == "kernel-args"]


def _arg(ev: dict, label: str) -> dict:
    body = ev.get("process_kprobe") or ev.get("process_tracepoint")
    return next(a for a in body["args"] if a.get("label") == label)


@pytest.mark.kernel
def test_skb_sockaddr_bpf_attr_read_at_tracepoints(mgr: PolicyManager, probe: Path) -> None:
    port, evs = _run(mgr, probe)
    connects = [e for e in evs if e.get("process_kprobe", {}).get("function_name") == "sys_connect"]
    assert [_arg(e, "addr")["sockaddr_arg"] for e in connects] == [
        {"family": "AF_INET", "addr": "127.0.0.1", "port": port}]
    loads = [e for e in evs if e.get("process_kprobe", {}).get("function_name") == "sys_bpf"]
    assert len(loads) == 1
    assert _arg(loads[0], "cmd")["int_arg"] == 5    # BPF_PROG_LOAD
    assert _arg(loads[0], "attr")["bpf_attr_arg"] == {
        "ProgType": "BPF_PROG_TYPE_SOCKET_FILTER", "InsnCnt": 2, "ProgName": "kargs_probe"}
    packets = [_arg(e, "packet")["skb_arg"] for e in evs if "process_tracepoint" in e]
    mine = [s for s in packets if s.get("dport") == port]
    assert len(mine) == 1, packets
    s = mine[0]
    assert (s["family"], s["protocol"], s["proto"], s["saddr"], s["daddr"]) == \
        ("AF_INET", "IPPROTO_UDP", 17, "127.0.0.1", "127.0.0.1")
    assert s["len"] == 14 + 20 + 8 + 5 and s["sport"] > 0     # lo's Ethernet, IP, UDP headers + "hello"
    # the same event through Tetragon's protobuf (gRPC) and the compact line
    msg = json_format.ParseDict(loads[0], events_pb2.GetEventsResponse())
    assert msg.process_kprobe.args[1].bpf_attr_arg.ProgName == "kargs_probe"
    assert msg.process_kprobe.args[1].WhichOneof("arg") == "bpf_attr_arg"


@pytest.mark.kernel
def test_another_binary_is_not_reported(mgr: PolicyManager, probe: Path) -> None:
    _port, evs = _run(mgr, probe.parent / "other-probe")
    assert evs == []


def test_types_refused_where_the_object_is_not_reachable() -> None:
    from collector.policy import compiler, parser
    text = POLICY.replace("BIN", "/bin/true").replace("type: sockaddr", "type: cred")
    (p,) = parser.parse_text(text, "k.yaml")
    with pytest.raises(PolicyError, match="a cred argument is read at kernel functions and LSM hooks only"):
        compiler.compile_policy(p, 1, procfs.host_namespaces())
    text = POLICY.replace("BIN", "/bin/true").replace("type: bpf_attr", "type: sockaddr")
    (p,) = parser.parse_text(text, "k.yaml")
    with pytest.raises(PolicyError, match=r"a sockaddr argument reads struct sockaddr \*.*union bpf_attr \*"):
        compiler.compile_policy(p, 1, procfs.host_namespaces())


# -- decoding (records packed as bpf/kargs.h writes them) ---------------------------------------
CATALOG = {"policy_id": 5, "name": "p", "namespace": "", "mode": "enforce", "state": "loaded", "hooks": [
    {"id": 0, "kind": "kprobe", "function_name": "commit_creds", "args": []},
    {"id": 1, "kind": "lsmhook", "function_name": "bprm_check_security",
     "args": [{"index": 0, "type": "linux_binprm", "label": "bprm"}], "message": "exec", "tags": ["t"]}]}


def _event(hook_id: int, args: list[r.HookArg]) -> dict:
    pe = PolicyEvents()
    pe.on_catalog(r.decode(r.encode_policy(1, json.dumps(CATALOG).encode())), "n")
    rec = r.decode(r.encode_hook(9, 9, 100, r.HookBody(5, hook_id, 0, 1, 0, 0, args)))
    ev = pe.on_hook(rec, "n", 0, EventBuilder(ProcessCache(10)))
    doc = protojson.to_protojson(codec.decode("event", codec.encode("event", ev)))
    json_format.ParseDict(doc, events_pb2.GetEventsResponse())   # Tetragon's proto takes it
    return doc


def ev_of_lsm() -> dict:
    pe = PolicyEvents()
    pe.on_catalog(r.decode(r.encode_policy(1, json.dumps(CATALOG).encode())), "n")
    rec = r.decode(r.encode_hook(9, 9, 100, r.HookBody(5, 1, 0, 1, 0, 0, [_a(r.ARG_BINPRM, b"/usr/bin/id")])))
    return pe.on_hook(rec, "n", 0, EventBuilder(ProcessCache(10)))


def _a(t: int, data: bytes) -> r.HookArg:
    return r.HookArg(t, 0, len(data), data)


def test_kernel_objects_render_as_tetragon() -> None:
    cred = r.CRED_ARG.pack(1000, 1000, 0, 1000, 0, 1000, 0, 1000, 1, 0, (1 << 21) | 1, 1 << 21, 0) \
        + r.USERNS_ARG.pack(0, 0, 0, 4026531837)
    args = [_a(r.ARG_CRED, cred), _a(r.ARG_KERNEL_CAP, (0x1FF).to_bytes(8, "little")),
            _a(r.ARG_CAP_EFF, (1 << 21).to_bytes(8, "little")),
            _a(r.ARG_PERF_EVENT, r.PERF_EVENT_ARG.pack(0, 16, 6, 0, b"tcp_connect")),
            _a(r.ARG_BPF_MAP, r.BPF_MAP_ARG.pack(27, 0, 0, 4096, b"events")),
            _a(r.ARG_MODULE, r.MODULE_ARG.pack(r.MODULE_SIG_KNOWN, 0, (1 << 12) | (1 << 13), b"evil")),
            _a(r.ARG_MODULE, r.MODULE_ARG.pack(0, 0, 0, b"xfs")),
            _a(r.ARG_USER_NS, r.USERNS_ARG.pack(1, 1000, 1000, 4026532000)),
            _a(r.ARG_SOCKADDR, r.SOCKADDR_ARG.pack(10, 443, 0, bytes(15) + b"\1"))]
    got = [{k: v for k, v in a.items() if k != "label"} for a in _event(0, args)["process_kprobe"]["args"]]
    assert got[0] == {"process_credentials_arg": {
        "uid": 1000, "gid": 1000, "euid": 0, "egid": 1000, "suid": 0, "sgid": 1000, "fsuid": 0, "fsgid": 1000,
        "securebits": ["SecBitNoRoot"], "caps": {"permitted": ["CAP_CHOWN", "CAP_SYS_ADMIN"],
                                                  "effective": ["CAP_SYS_ADMIN"]},
        "user_ns": {"level": 0, "uid": 0, "gid": 0, "ns": {"inum": 4026531837, "is_host": True}}}}
    assert got[1] == {"kernel_cap_t_arg": "00000000000001ff"}
    assert got[2] == {"cap_effective_arg": "0000000000200000"}
    assert got[3] == {"perf_event_arg": {"KprobeFunc": "tcp_connect", "Type": "PERF_TYPE_MAX", "ProbeOffset": "16"}}
    assert got[4] == {"bpf_map_arg": {"MapType": "BPF_MAP_TYPE_RINGBUF", "MaxEntries": 4096, "MapName": "events"}}
    assert got[5] == {"module_arg": {"name": "evil", "signature_ok": False,
                                     "tainted": ["TAINT_OUT_OF_TREE_MODULE", "TAINT_UNSIGNED_MODULE"]}}
    assert got[6] == {"module_arg": {"name": "xfs"}}   # struct module: no signature to report
    assert got[7] == {"user_ns_arg": {"level": 1, "uid": 1000, "gid": 1000, "ns": {"inum": 4026532000}}}
    assert got[8] == {"sockaddr_arg": {"family": "AF_INET6", "addr": "::1", "port": 443}}


def test_lsmhook_records_become_process_lsm() -> None:
    doc = _event(1, [_a(r.ARG_BINPRM, b"/usr/bin/id")])
    assert set(doc) == {"process_lsm", "node_name", "time"}
    lsm = doc["process_lsm"]
    assert lsm["function_name"] == "bprm_check_security" and lsm["policy_name"] == "p"
    assert lsm["args"] == [{"label": "bprm", "linux_binprm_arg": {"path": "/usr/bin/id"}}]
    assert lsm["action"] == "KPROBE_ACTION_POST" and lsm["message"] == "exec" and lsm["tags"] == ["t"]
    assert compact.render(doc).startswith("🔒 LSM")
    # the Prometheus exporter's labels (type PROCESS_LSM, hook lsm:<hook>) come from these
    # (its counters share names with the enricher's in this process, so it runs in its own tests)
    ev = codec.decode("event", codec.encode("event", ev_of_lsm()))
    assert protojson.event_type(ev) == "process_lsm"
    assert prometheus.hook_of("process_lsm", ev["process_lsm"]) == "lsm:bprm_check_security"


def test_file_path_binprm_permission_and_flags() -> None:
    """ARGF_MODE records (kernel functions, LSM hooks) carry the inode's mode before the path:
    Tetragon's ``permission``; a cut path walk is Tetragon's ``unresolvedPathComponents``; records
    without the mode (syscall tracepoints, older collectors) still decode as a bare path."""
    def moded(t: int, mode: int, path: bytes, flags: int = 0) -> r.HookArg:
        return r.HookArg(t, r.ARGF_MODE | flags, len(path), path, mode)

    args = [moded(r.ARG_FILE, 0o100600, b"/tmp/x"), moded(r.ARG_PATH, 0o041777, b"/tmp"),
            moded(r.ARG_FILE, 0o104755, b"/usr/bin/su"), moded(r.ARG_PATH, 0o102644, b"/a/b", r.ARGF_TRUNC),
            moded(r.ARG_FILE, 0, b"/deleted"), _a(r.ARG_FILE, b"/old/record"),
            r.HookArg(r.ARG_PATH, r.ARGF_TRUNC, 4, b"/cut"), moded(r.ARG_FILE, 0o020620, b"/dev/tty1")]
    got = [{k: v for k, v in a.items() if k != "label"} for a in _event(0, args)["process_kprobe"]["args"]]
    assert got == [{"file_arg": {"path": "/tmp/x", "permission": "-rw-------"}},
                   {"path_arg": {"path": "/tmp", "permission": "drwxrwxrwt"}},
                   {"file_arg": {"path": "/usr/bin/su", "permission": "-rwsr-xr-x"}},
                   {"path_arg": {"path": "/a/b", "permission": "-rw-r-Sr--", "flags": "unresolvedPathComponents"}},
                   {"file_arg": {"path": "/deleted"}},          # no inode: no permission
                   {"file_arg": {"path": "/old/record"}},
                   {"path_arg": {"path": "/cut", "flags": "unresolvedPathComponents"}},
                   {"file_arg": {"path": "/dev/tty1", "permission": "crw--w----"}}]
    # decode_hook takes the mode off: the data is the path, as without the flag
    raw = r.encode_hook(9, 9, 100, r.HookBody(5, 0, 0, 1, 0, 0, [moded(r.ARG_FILE, 0o100644, b"/etc/passwd")]))
    (a,) = r.decode_hook(r.decode(raw)).args
    assert (a.data, a.mode, a.orig_size, a.flags) == (b"/etc/passwd", 0o100644, 11, r.ARGF_MODE)
    lsm = _event(1, [moded(r.ARG_BINPRM, 0o100755, b"/usr/bin/id")])["process_lsm"]
    assert lsm["args"] == [{"label": "bprm", "linux_binprm_arg": {"path": "/usr/bin/id", "permission": "-rwxr-xr-x"}}]
