"""Network selectors (collector/policy/netsel.py) on this kernel, with real sockets on loopback.

Where a tracepoint hands the object over: ``sys_connect``'s sockaddr (the caller's memory),
``net:net_dev_queue``'s skb, and the ``tcp_connect`` socket hook's sock (fd → struct sock at
connect's exit, collector/sock_hooks.py). One policy, six hooks: for each object a hook whose
selectors must match (positive: the events checked field by field) and one whose selectors must
not (negative: each of its selectors fails on one operator family only). A compiled probe sends
a UDP datagram to 127.0.0.1 over AF_INET and over a dual-stack AF_INET6 socket
(``::ffff:127.0.0.1``: an IPv4 rule must still hold) and connects over TCP to 127.0.0.2.
Kernel-function hooks (tcp_connect with kprobes, security_socket_connect, TrackSock) run in the
stock 6.12/6.1 guests (tests/guest/test_guest_netsel.py).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import bpf_unavailable_reason, skip_or_fail

from bpf import records as r
from collector import loader, procfs
from collector.drain import RecordQueue
from collector.policy import compiler, parser
from collector.policy.manager import PolicyManager
from collector.policy.model import PolicyError
from enricher.event_builder import EventBuilder
from enricher.policy_events import PolicyEvents
from enricher.process_cache import ProcessCache
from exporters import protojson
from schemas import codec

PROBE_C = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* argv: udp_port tcp_port. UDP to 127.0.0.1:udp over AF_INET and over a dual-stack AF_INET6
 * socket (::ffff:127.0.0.1), then TCP to 127.0.0.2:tcp */
int main(int argc, char **argv) {
    int u = atoi(argv[1]), t = atoi(argv[2]);
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons(u);
    a.sin_addr.s_addr = htonl(0x7f000001);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof(a)) < 0 || send(s, "four", 4, 0) != 4)
        return 1;
    int s6 = socket(AF_INET6, SOCK_DGRAM, 0);
    struct sockaddr_in6 b;
    memset(&b, 0, sizeof(b));
    b.sin6_family = AF_INET6;
    b.sin6_port = htons(u);
    inet_pton(AF_INET6, "::ffff:127.0.0.1", &b.sin6_addr);
    if (s6 < 0 || connect(s6, (struct sockaddr *)&b, sizeof(b)) < 0 || send(s6, "mapped", 6, 0) != 6)
        return 2;
    int c = socket(AF_INET, SOCK_STREAM, 0);
    a.sin_port = htons(t);
    a.sin_addr.s_addr = htonl(0x7f000002);
    if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof(a)) < 0)
        return 3;
    close(c);
    return 0;
}
"""

# UPORT/TPORT: the listeners' ports; MANY: more ports than are compared inline (the intset map)
POLICY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: netsel
spec:
  kprobes:
  - call: sys_connect
    syscall: true
    args: [{index: 1, type: sockaddr, label: pos}]
    selectors:
    - matchArgs:
      - {index: 1, operator: DAddr, values: ["10.0.0.0/8", "127.0.0.0/8", "::1"]}
      - {index: 1, operator: DPort, values: [UPORT]}
      - {index: 1, operator: NotDPortPriv, values: ["0"]}
      matchBinaries: [{operator: In, values: ["BIN"]}]
  - call: sys_connect
    syscall: true
    args: [{index: 1, type: sockaddr, label: neg}]
    selectors:
    - matchArgs: [{index: 1, operator: NotDAddr, values: ["127.0.0.0/8"]}, {index: 1, operator: DPort, values: [UPORT]}]
      matchBinaries: [{operator: In, values: ["BIN"]}]
    - matchArgs: [{index: 1, operator: Family, values: [AF_UNIX]}, {index: 1, operator: DPort, values: [UPORT]}]
      matchBinaries: [{operator: In, values: ["BIN"]}]
    - matchArgs: [{index: 1, operator: DAddr, values: ["127.0.0.1"]}, {index: 1, operator: NotSPort, values: [UPORT]}]
      matchBinaries: [{operator: In, values: ["BIN"]}]
  - call: tcp_connect
    args: [{index: 0, type: sock, label: pos}]
    selectors:
    - matchArgs:
      - {index: 0, operator: DAddr, values: ["127.0.0.2/32", "fd00::/8"]}
      - {index: 0, operator: SAddr, values: ["127.0.0.0/8"]}
      - {index: 0, operator: DPort, values: [MANY]}
      - {index: 0, operator: SPort, values: ["1024:65535"]}
      - {index: 0, operator: State, values: [TCP_SYN_SENT, TCP_ESTABLISHED]}
      - {index: 0, operator: Protocol, values: [IPPROTO_TCP]}
      - {index: 0, operator: Family, values: [AF_INET]}
      matchBinaries: [{operator: In, values: ["BIN"]}]
  - call: tcp_connect
    args: [{index: 0, type: sock, label: neg}]
    selectors:
    - matchArgs: [{index: 0, operator: State, values: [TCP_CLOSE]}, {index: 0, operator: DPort, values: [TPORT]}]
    - matchArgs: [{index: 0, operator: NotDAddr, values: ["127.0.0.2"]}, {index: 0, operator: DPort, values: [TPORT]}]
    - matchArgs: [{index: 0, operator: DPortPriv, values: [0]}, {index: 0, operator: DPort, values: ["0:1023", TPORT]}]
    - matchArgs: [{index: 0, operator: Protocol, values: [IPPROTO_UDP]}, {index: 0, operator: DPort, values: [TPORT]}]
  tracepoints:
  - subsystem: net
    event: net_dev_queue
    args: [{index: 0, type: skb, label: pos}]
    selectors:
    - matchArgs:
      - {index: 0, operator: Protocol, values: [IPPROTO_UDP]}
      - {index: 0, operator: DPort, values: [MANY]}
      - {index: 0, operator: SAddr, values: ["127.0.0.1/32"]}
      - {index: 0, operator: DAddr, values: ["127.0.0.0/24", "2001:db8::/32"]}
      - {index: 0, operator: Family, values: ["2"]}
      matchBinaries: [{operator: In, values: ["BIN"]}]
  - subsystem: net
    event: net_dev_queue
    args: [{index: 0, type: skb, label: neg}]
    selectors:
    - matchArgs: [{index: 0, operator: Protocol, values: [IPPROTO_TCP]}, {index: 0, operator: DPort, values: [UPORT]}]
    - matchArgs: [{index: 0, operator: DAddr, values: ["::1/128"]}, {index: 0, operator: DPort, values: [UPORT]}]
    - matchArgs: [{index: 0, operator: NotSAddr, values: ["127.0.0.1"]}, {index: 0, operator: DPort, values: [UPORT]}]
    - matchArgs: [{index: 0, operator: Family, values: [AF_INET6]}, {index: 0, operator: DPort, values: [UPORT]}]
"""


def _policy(binary: str, uport: int, tport: int) -> str:
    many = ", ".join(f'"{p}"' for p in [*range(40000, 40010), uport, tport])
    return (POLICY.replace("BIN", binary).replace("UPORT", str(uport)).replace("TPORT", str(tport))
            .replace("MANY", many))


def _free_port(kind: int, addr: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, kind)
    s.bind((addr, 0))
    return s


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("netsel")
    (d / "probe.c").write_text(PROBE_C)
    subprocess.run(["gcc", "-O1", "-o", str(d / "net-probe"), str(d / "probe.c")], check=True)
    return d / "net-probe"


@pytest.fixture(scope="module")
def run(probe: Path) -> Iterator[tuple[int, int, int, list[dict]]]:
    reason = bpf_unavailable_reason()
    if reason:
        skip_or_fail(reason)
    loader.prepare()
    udp = _free_port(socket.SOCK_DGRAM, "127.0.0.1")
    tcp = _free_port(socket.SOCK_STREAM, "127.0.0.2")
    tcp.listen(4)
    uport, tport = udp.getsockname()[1], tcp.getsockname()[1]
    m = PolicyManager(RecordQueue(1_000_000, asyncio.new_event_loop()), procfs.host_namespaces())
    try:
        m.load_text(_policy(str(probe), uport, tport), "netsel.yaml")
        pe, b, out = PolicyEvents(), EventBuilder(ProcessCache(100)), []
        _drain(m, pe, b, out)
        out.clear()
        p = subprocess.run([str(probe), str(uport), str(tport)], timeout=30, check=False)
        assert p.returncode == 0
        assert sorted([udp.recv(16), udp.recv(16)]) == [b"four", b"mapped"]
        time.sleep(0.5)
        _drain(m, pe, b, out)
        yield uport, tport, 0, out
    finally:
        m.stop()
        udp.close()
        tcp.close()


def _drain(m: PolicyManager, pe: PolicyEvents, b: EventBuilder, out: list[dict]) -> None:
    for raw in m.queue.take(1_000_000):
        rec = r.decode(raw)
        if isinstance(rec, r.PolicyRecord):
            pe.on_catalog(rec, "n")
        elif isinstance(rec, r.HookRecord):
            out.append(protojson.to_protojson(codec.decode("event", codec.encode("event", pe.on_hook(rec, "n", 0, b)))))


def _of(evs: list[dict], label: str, fn: str) -> list[dict]:
    got = []
    for e in evs:
        body = e.get("process_kprobe") or e.get("process_tracepoint") or {}
        if body.get("policy_name") != "netsel":
            continue
        name = body.get("function_name") or f"{body.get('subsys')}/{body.get('event')}"
        if fn not in name:
            continue
        for a in body.get("args", []):
            if a.get("label") == label:
                got.append(a)
    return got


@pytest.mark.kernel
def test_sockaddr_daddr_dport(run) -> None:
    uport, _tport, _pid, evs = run
    got = [a["sockaddr_arg"] for a in _of(evs, "pos", "connect") if "sockaddr_arg" in a]
    # the IPv4-mapped address of the dual-stack socket matches 127.0.0.0/8 as the IPv4 it is
    assert sorted(got, key=lambda s: s["family"]) == [
        {"family": "AF_INET", "addr": "127.0.0.1", "port": uport},
        {"family": "AF_INET6", "addr": "127.0.0.1", "port": uport}]   # rendered as the IPv4 it carries
    assert _of(evs, "neg", "connect") == []


@pytest.mark.kernel
def test_sock_daddr_saddr_ports_state_protocol_family(run) -> None:
    _uport, tport, _pid, evs = run
    got = [a["sock_arg"] for a in _of(evs, "pos", "tcp_connect")]
    assert len(got) == 1, got
    s = got[0]
    assert (s["family"], s["protocol"], s["daddr"], s["saddr"], s["dport"]) == \
        ("AF_INET", "IPPROTO_TCP", "127.0.0.2", "127.0.0.1", tport), s
    # served at connect()'s exit here: a blocking connect has completed the handshake
    assert s["sport"] >= 1024 and s["state"] == "TCP_ESTABLISHED", s
    assert _of(evs, "neg", "tcp_connect") == []


@pytest.mark.kernel
def test_skb_protocol_ports_addresses_family(run) -> None:
    uport, _tport, _pid, evs = run
    got = [a["skb_arg"] for a in _of(evs, "pos", "net_dev_queue")]
    assert len(got) == 2, got   # both datagrams leave as IPv4 packets
    for s in got:
        assert (s["family"], s["protocol"], s["saddr"], s["daddr"], s["dport"]) == \
            ("AF_INET", "IPPROTO_UDP", "127.0.0.1", "127.0.0.1", uport), s
    assert sorted(s["len"] for s in got) == [14 + 20 + 8 + 4, 14 + 20 + 8 + 6]
    assert _of(evs, "neg", "net_dev_queue") == []


REFUSED = [
    ("{index: 1, operator: DAddr, values: ['10.0.0.300']}", "sockaddr", r"values\[0\].*not an IPv4/IPv6 address"),
    ("{index: 1, operator: DPort, values: ['70000']}", "sockaddr", r"not within 0-65535"),
    ("{index: 1, operator: Protocol, values: [IPPROTO_TCP]}", "sockaddr", r"a sockaddr has no protocol"),
    ("{index: 1, operator: DPort, values: [" + ", ".join(f"'{p}:{p + 100}'" for p in range(0, 6600, 100)) + "]}",
     "sockaddr", r"66 port values/ranges spanning more than 4096 ports: at most 64"),
    ("{index: 1, operator: Family, values: [AF_BOGUS]}", "sockaddr", r"family 'AF_BOGUS': one of AF_UNSPEC"),
    ("{index: 1, operator: State, values: [TCP_LISTEN]}", "sockaddr", r"a sockaddr has no TCP state"),
    ("{index: 1, operator: Equal, values: ['1']}", "sockaddr", r"operator Equal does not apply to a sockaddr"),
    ("{index: 1, operator: DAddr, values: ['127.0.0.1']}", "int", r"applies to sock, socket, skb and sockaddr"),
]


@pytest.mark.parametrize(("flt", "typ", "why"), REFUSED)
def test_refused_with_line_and_reason(flt: str, typ: str, why: str) -> None:
    text = ("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: bad}\nspec:\n  kprobes:\n"
            f"  - call: sys_connect\n    syscall: true\n    args: [{{index: 1, type: {typ}}}]\n"
            f"    selectors:\n    - matchArgs:\n      - {flt}\n")
    pol = parser.parse_text(text, "bad.yaml")[0]
    with pytest.raises(PolicyError, match=why) as ei:
        compiler.compile_policy(pol, 1, [0] * 8)
    assert ei.value.line == 11


def test_address_limit_refused() -> None:
    from collector.policy import netsel
    many = ", ".join(f'"10.{i >> 8 & 255}.{i & 255}.0/24"' for i in range(netsel.NET_ADDR_MAX + 1))
    text = ("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: big}\nspec:\n  kprobes:\n"
            "  - call: sys_connect\n    syscall: true\n    args: [{index: 1, type: sockaddr}]\n"
            f"    selectors:\n    - matchArgs:\n      - {{index: 1, operator: DAddr, values: [{many}]}}\n")
    pol = parser.parse_text(text, "big.yaml")[0]
    with pytest.raises(PolicyError, match=f"more than {netsel.NET_ADDR_MAX} CIDRs"):
        compiler.compile_policy(pol, 1, [0] * 8)


def test_track_sock_refused_without_kernel_function_hooks() -> None:
    text = ("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: track}\nspec:\n  kprobes:\n"
            "  - call: tcp_connect\n    args: [{index: 0, type: sock}]\n"
            "    selectors:\n    - matchActions: [{action: TrackSock, argSock: 0}]\n")
    pol = parser.parse_text(text, "track.yaml")[0]
    with pytest.raises(PolicyError, match="TrackSock needs the socket pointer of a kernel function hook.*"
                                          "feature missing: kprobes or BPF trampolines"):
        compiler.compile_policy(pol, 1, [0] * 8)


def test_parser_reads_tetragon_spellings_and_tracking() -> None:
    text = ("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: acc}\nspec:\n  kprobes:\n"
            "  - call: sk_alloc\n    return: true\n    args: [{index: 1, type: int}]\n"
            "    returnArg: {type: sock}\n    returnArgAction: TrackSock\n"
            "  - call: __sk_free\n    args: [{index: 0, type: sock}]\n    selectors:\n"
            "    - matchArgs: [{index: 0, operator: family, values: [AF_INET]}]\n"
            "    - matchActions: [{action: UntrackSock, argSock: 0}]\n")
    pol = parser.parse_text(text, "acc.yaml")[0]
    assert pol.hooks[0].return_arg_action == "TrackSock"
    assert pol.hooks[1].selectors[0].match_args[0].operator == "Family"
    assert pol.hooks[1].selectors[1].match_actions[0].arg_sock == 0
    with pytest.raises(PolicyError, match=r"returnArgAction TrackSock needs return: true") as ei:
        parser.parse_text(text.replace("    return: true\n", ""), "acc.yaml")
    assert ei.value.line == 9
    with pytest.raises(PolicyError, match=r'unknown returnArgAction "Track"'):
        parser.parse_text(text.replace("returnArgAction: TrackSock", "returnArgAction: Track"), "acc.yaml")
    with pytest.raises(PolicyError, match=r"argSock: no argument with index 3"):
        parser.parse_text(text.replace("argSock: 0", "argSock: 3"), "acc.yaml")
