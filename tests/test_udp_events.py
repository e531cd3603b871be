"""UDP sensor: real datagrams on loopback (IPv4, IPv6, connected and unconnected sockets, bound
and unbound) and between two network namespaces the test creates (veth pair), through the real
pipeline (BPF → collector → broker → enricher → JSON export), checked against what the test's own
sender did: one ``udp_sendmsg`` event per datagram, with its 5-tuple, namespace and process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from harness import Pipeline, wait_until

from bpf import records as r
from enricher.event_builder import EventBuilder
from enricher.process_cache import ProcessCache
from schemas import codec

# sends the datagrams its arguments describe, then prints one JSON line: pid and the
# (kind, family, local address, local port) of each send
SENDER = textwrap.dedent("""
    import json, os, socket, sys
    port, addr4, addr6 = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    out = []
    def note(kind, s):
        host, sport = s.getsockname()[:2]
        out.append([kind, s.family.name, host, sport])
    # unconnected, unbound: the destination is only in the message
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"a", (addr4, port)); note("unconnected", s)
    # unconnected, bound to an address: saddr known
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((addr4, 0))
    s.sendto(b"b", (addr4, port)); note("bound", s)
    # connected: send() and write() both count
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((addr4, port))
    s.send(b"c"); os.write(s.fileno(), b"d"); note("connected", s); note("connected-write", s)
    if addr6:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.sendto(b"e", (addr6, port)); note("unconnected6", s)
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.connect((addr6, port))
        s.send(b"f"); note("connected6", s)
    print(json.dumps({"pid": os.getpid(), "sends": out}), flush=True)
""")


def _receiver(addr4: str, addr6: str, prefix: list[str]) -> tuple[subprocess.Popen[str], int]:
    """A process with UDP sockets bound to the same port on both addresses (so sends succeed)."""
    code = textwrap.dedent("""
        import socket, sys, time
        s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s4.bind((sys.argv[1], 0))
        port = s4.getsockname()[1]
        if sys.argv[2]:
            s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s6.bind((sys.argv[2], port))
        print(port, flush=True)
        sys.stdin.read()
    """)
    rx = subprocess.Popen([*prefix, sys.executable, "-c", code, addr4, addr6], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
    return rx, int(rx.stdout.readline())


def _send(addr4: str, addr6: str, port: int, prefix: list[str]) -> dict[str, Any]:
    out = subprocess.run([*prefix, sys.executable, "-c", SENDER, str(port), addr4, addr6],
                         capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)


def _udp(p: Pipeline, pid: int) -> list[dict[str, Any]]:
    return [e["process_kprobe"] for e in p.exported()
            if "process_kprobe" in e and e["process_kprobe"].get("function_name") == "udp_sendmsg"
            and e["process_kprobe"].get("process", {}).get("pid") == pid]


def _netns_inum(prefix: list[str]) -> int:
    out = subprocess.run([*prefix, "stat", "-L", "-c", "%i", "/proc/self/ns/net"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.fixture
def netns_pair() -> Iterator[tuple[str, str, int]]:
    """Two network namespaces joined by a veth pair: 10.202.x.1 (a) ↔ 10.202.x.2 (b)."""
    tag = uuid.uuid4().hex[:6]
    a, b = f"tua{tag}", f"tub{tag}"
    x = int(tag[:2], 16)
    cmds = [
        ["ip", "netns", "add", a], ["ip", "netns", "add", b],
        ["ip", "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b],
        ["ip", "-n", a, "addr", "add", f"10.202.{x}.1/30", "dev", "va"],
        ["ip", "-n", b, "addr", "add", f"10.202.{x}.2/30", "dev", "vb"],
        ["ip", "-n", a, "link", "set", "va", "up"], ["ip", "-n", b, "link", "set", "vb", "up"],
        ["ip", "-n", a, "link", "set", "lo", "up"], ["ip", "-n", b, "link", "set", "lo", "up"],
    ]
    try:
        for c in cmds:
            subprocess.run(c, check=True, capture_output=True)
        yield a, b, x
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _check(events: list[dict[str, Any]], sent: dict[str, Any], port: int, dst4: str, dst6: str,
           netns: int) -> None:
    """One event per datagram, in order, each with the sender's 5-tuple."""
    sends = sent["sends"]
    assert len(events) == len(sends), (events, sends)
    for ev, (kind, family, host, sport) in zip(events, sends, strict=True):
        s = ev["args"][0]["sock_arg"]
        assert (s["protocol"], s["type"]) == ("IPPROTO_UDP", "SOCK_DGRAM"), kind
        assert (s["dport"], s["sport"]) == (port, sport), kind
        assert s["family"] == family, kind
        assert s["daddr"] == (dst6 if kind.endswith("6") else dst4), kind
        assert s["saddr"] == host, kind    # 0.0.0.0 / :: where the socket is unbound
        assert s["state"] == ("TCP_ESTABLISHED" if kind.startswith("connected") else "TCP_CLOSE"), kind
        assert int(s["cookie"]) > 0
        assert ev["args"][1] == {"label": "netns", "uint_arg": netns}, kind
        assert ev["action"] == "KPROBE_ACTION_POST"
        assert ev["process"]["pid"] == sent["pid"] and "python" in ev["process"]["binary"]
        assert ev["process"]["exec_id"]


@pytest.mark.kernel
def test_udp_sends_loopback_and_netns(bpf_ok: None, pipeline: Pipeline,
                                      netns_pair: tuple[str, str, int]) -> None:
    pipeline.settings["enable_udp_events"] = "true"
    pipeline.start_all()
    log = (pipeline.tmp / "collector.log").read_text()
    assert "sensor udp on: tracepoint sock:sock_send_length" in log
    assert "cgroup/sendmsg4+6 attached" in log

    # 1. loopback, IPv4 and IPv6
    rx, port = _receiver("127.0.0.1", "::1", [])
    try:
        sent = _send("127.0.0.1", "::1", port, [])
    finally:
        rx.communicate("")
    wait_until(lambda: len(_udp(pipeline, sent["pid"])) >= len(sent["sends"]), 30,
               what="udp_sendmsg events of the loopback sender")
    _check(_udp(pipeline, sent["pid"]), sent, port, "127.0.0.1", "::1", _netns_inum([]))
    unbound = _udp(pipeline, sent["pid"])[0]["args"][0]["sock_arg"]
    assert unbound["saddr"] == "0.0.0.0"   # unbound, unconnected: the kernel keeps no source

    # 2. from namespace b to namespace a over the veth pair
    ns_a, ns_b, x = netns_pair
    in_a, in_b = ["ip", "netns", "exec", ns_a], ["ip", "netns", "exec", ns_b]
    rx, port = _receiver(f"10.202.{x}.1", "", in_a)
    try:
        # the sender binds to its own veth address for the "bound" case: give it b's address
        sent = _send_netns(f"10.202.{x}.1", f"10.202.{x}.2", port, in_b)
    finally:
        rx.communicate("")
    wait_until(lambda: len(_udp(pipeline, sent["pid"])) >= len(sent["sends"]), 30,
               what="udp_sendmsg events across namespaces")
    evs = _udp(pipeline, sent["pid"])
    assert len(evs) == len(sent["sends"]) == 2
    for ev, (kind, _fam, host, sport) in zip(evs, sent["sends"], strict=True):
        s = ev["args"][0]["sock_arg"]
        assert (s["daddr"], s["dport"], s["sport"]) == (f"10.202.{x}.1", port, sport), kind
        assert s["saddr"] == host
        assert ev["args"][1]["uint_arg"] == _netns_inum(in_b) != _netns_inum([])


NETNS_SENDER = textwrap.dedent("""
    import json, os, socket, sys
    dst, src, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    out = []
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((src, 0))
    s.sendto(b"a", (dst, port)); out.append(["bound", "AF_INET", *s.getsockname()])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((dst, port))
    s.send(b"b"); out.append(["connected", "AF_INET", *s.getsockname()])
    print(json.dumps({"pid": os.getpid(), "sends": out}), flush=True)
""")


def _send_netns(dst: str, src: str, port: int, prefix: list[str]) -> dict[str, Any]:
    out = subprocess.run([*prefix, sys.executable, "-c", NETNS_SENDER, dst, src, str(port)],
                         capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)


def test_udp_send_record_to_event() -> None:
    """Without the kernel: a UDP send record through the builder and the Avro schema."""
    b = EventBuilder(ProcessCache(64))
    raw = r.encode_sock(4242, 4242, 10**9, r.SOCK_UDP_SEND, 7, 2, 5353, 53, b"\x7f\0\0\1",
                        b"\x7f\0\0\x35", 12345, netns=4026531840, type_=2, protocol=socket.IPPROTO_UDP)
    ev = b.on_record(r.decode(raw), "n1", 0, [])
    back = codec.decode("event", codec.encode("event", ev))
    k = back["process_kprobe"]
    assert k["function_name"] == "udp_sendmsg" and k["action"] == "KPROBE_ACTION_POST"
    s = k["args"][0]["sock_arg"]
    assert (s["protocol"], s["type"], s["state"]) == ("IPPROTO_UDP", "SOCK_DGRAM", "TCP_CLOSE")
    assert (s["saddr"], s["sport"], s["daddr"], s["dport"]) == ("127.0.0.1", 5353, "127.0.0.53", 53)
    # UDP sends leave no socket → process entry behind (only TCP connect/accept do, for the close)
    assert not b.__dict__.get("_sock_owners")
