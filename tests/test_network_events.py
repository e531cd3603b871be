"""Network sensor: real TCP traffic on loopback (IPv4 and IPv6) and between two network namespaces
the test creates (veth pair), through the real pipeline (BPF → collector → broker → enricher →
JSON export), checked against what the test's own processes did."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Pipeline, wait_until

from bpf import records as r
from enricher.event_builder import EventBuilder
from enricher.process_cache import ProcessCache
from exporters import compact, protojson
from schemas import codec

SERVER = textwrap.dedent("""
    import socket, sys
    fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.bind((sys.argv[1], 0))
    s.listen(4)
    print(s.getsockname()[1], flush=True)
    c, _ = s.accept()
    c.recv(16)
    c.close()
    s.close()
""")
CLIENT = textwrap.dedent("""
    import socket, sys
    fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    c = socket.socket(fam, socket.SOCK_STREAM)
    c.connect((sys.argv[1], int(sys.argv[2])))
    print(c.getsockname()[1], flush=True)
    c.send(b"hi")
    c.recv(16)
    c.close()
""")


def _pair(addr: str, server_ns: list[str] | None = None, client_ns: list[str] | None = None,
          connect_to: str | None = None) -> tuple[int, int, int, int]:
    """Run a server and a client process; (server pid, client pid, server port, client port)."""
    srv = subprocess.Popen([*(server_ns or []), sys.executable, "-c", SERVER, addr],
                           stdout=subprocess.PIPE, text=True)
    port = int(srv.stdout.readline())
    cli = subprocess.Popen([*(client_ns or []), sys.executable, "-c", CLIENT, connect_to or addr,
                            str(port)], stdout=subprocess.PIPE, text=True)
    cport = int(cli.stdout.readline())
    assert cli.wait(10) == 0 and srv.wait(10) == 0
    return srv.pid, cli.pid, port, cport


def _kprobes(pipeline: Pipeline, pid: int, fn: str) -> list[dict[str, Any]]:
    return [e["process_kprobe"] for e in pipeline.exported()
            if "process_kprobe" in e and e["process_kprobe"].get("process", {}).get("pid") == pid
            and e["process_kprobe"].get("function_name") == fn]


def _netns_inum(prefix: list[str]) -> int:
    out = subprocess.run([*prefix, "stat", "-L", "-c", "%i", "/proc/self/ns/net"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.fixture
def netns_pair() -> Iterator[tuple[str, str]]:
    """Two network namespaces joined by a veth pair: 10.201.x.1 (a) ↔ 10.201.x.2 (b)."""
    tag = uuid.uuid4().hex[:6]
    a, b = f"tpa{tag}", f"tpb{tag}"
    x = int(tag[:2], 16)
    cmds = [
        ["ip", "netns", "add", a], ["ip", "netns", "add", b],
        ["ip", "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b],
        ["ip", "-n", a, "addr", "add", f"10.201.{x}.1/30", "dev", "va"],
        ["ip", "-n", b, "addr", "add", f"10.201.{x}.2/30", "dev", "vb"],
        ["ip", "-n", a, "link", "set", "va", "up"], ["ip", "-n", b, "link", "set", "vb", "up"],
        ["ip", "-n", a, "link", "set", "lo", "up"], ["ip", "-n", b, "link", "set", "lo", "up"],
    ]
    try:
        for c in cmds:
            subprocess.run(c, check=True, capture_output=True)
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _sock(ev: dict[str, Any]) -> dict[str, Any]:
    return ev["args"][0]["sock_arg"]


@pytest.mark.kernel
def test_connect_accept_close_loopback_and_netns(bpf_ok: None, pipeline: Pipeline,
                                                  netns_pair: tuple[str, str]) -> None:
    pipeline.settings["enable_network_events"] = "true"
    pipeline.start_all()
    host_netns = _netns_inum([])

    # 1. IPv4 loopback
    spid, cpid, port, cport = _pair("127.0.0.1")
    wait_until(lambda: _kprobes(pipeline, cpid, "tcp_close") and _kprobes(pipeline, spid, "tcp_close"),
               30, what="tcp_close events of both ends")
    (conn,) = _kprobes(pipeline, cpid, "tcp_connect")
    s = _sock(conn)
    assert (s["family"], s["type"], s["protocol"]) == ("AF_INET", "SOCK_STREAM", "IPPROTO_TCP")
    assert (s["daddr"], s["dport"], s["saddr"], s["sport"]) == ("127.0.0.1", port, "127.0.0.1", cport)
    # the state at connect()'s return: a blocking connect on loopback is already established
    assert s["state"] in ("TCP_SYN_SENT", "TCP_ESTABLISHED") and int(s["cookie"]) > 0
    assert conn["args"][1] == {"label": "netns", "uint_arg": host_netns}
    assert "python" in conn["process"]["binary"]
    assert conn["process"]["exec_id"] and conn["parent"]["pid"] == os.getpid()
    (acc,) = _kprobes(pipeline, spid, "inet_csk_accept")
    a = _sock(acc)
    assert (a["saddr"], a["sport"], a["daddr"], a["dport"]) == ("127.0.0.1", port, "127.0.0.1", cport)
    assert a["state"] == "TCP_ESTABLISHED"
    (cl,) = _kprobes(pipeline, cpid, "tcp_close")
    assert _sock(cl)["cookie"] == s["cookie"] and _sock(cl)["state"] == "TCP_CLOSE"
    assert (_sock(cl)["dport"], _sock(cl)["sport"]) == (port, cport)
    line = compact.render({"node_name": pipeline.node_name, "process_kprobe": conn})
    assert line.startswith("🔌 connect") and f"tcp 127.0.0.1:{cport} -> 127.0.0.1:{port}" in line

    # 2. IPv6 loopback
    spid6, cpid6, port6, _ = _pair("::1")
    wait_until(lambda: _kprobes(pipeline, cpid6, "tcp_connect") and _kprobes(pipeline, spid6, "inet_csk_accept"),
               30, what="IPv6 connect/accept")
    s6 = _sock(_kprobes(pipeline, cpid6, "tcp_connect")[0])
    assert (s6["family"], s6["daddr"], s6["dport"]) == ("AF_INET6", "::1", port6)

    # 3. between two network namespaces: the socket's netns is the client's / server's
    ns_a, ns_b = netns_pair
    in_a, in_b = ["ip", "netns", "exec", ns_a], ["ip", "netns", "exec", ns_b]
    x = int(ns_a[3:5], 16)
    spid_n, cpid_n, port_n, cport_n = _pair(f"10.201.{x}.1", in_a, in_b)
    wait_until(lambda: _kprobes(pipeline, cpid_n, "tcp_connect") and _kprobes(pipeline, spid_n, "inet_csk_accept")
               and _kprobes(pipeline, cpid_n, "tcp_close"), 30, what="connect/accept across namespaces")
    cn = _kprobes(pipeline, cpid_n, "tcp_connect")[0]
    sn = _sock(cn)
    assert (sn["saddr"], sn["daddr"], sn["dport"], sn["sport"]) == (f"10.201.{x}.2", f"10.201.{x}.1", port_n, cport_n)
    assert cn["args"][1]["uint_arg"] == _netns_inum(in_b) != host_netns
    an = _kprobes(pipeline, spid_n, "inet_csk_accept")[0]
    assert an["args"][1]["uint_arg"] == _netns_inum(in_a)
    assert _sock(an)["daddr"] == f"10.201.{x}.2"


def test_sock_record_to_event_and_back() -> None:
    """Without the kernel: a tp_sock record through the builder, Avro and protojson."""
    b = EventBuilder(ProcessCache(64))
    cookie = 0xFFFF888012345678
    raw = r.encode_sock(4242, 4242, 10**9, r.SOCK_CONNECT, 2, 10, 40000, 443,
                        bytes(15) + b"\1", bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 7]), cookie,
                        netns=4026531840)
    rec = r.decode(raw)
    ev = b.on_record(rec, "n1", 0, [])
    assert ev is not None
    back = codec.decode("event", codec.encode("event", ev))
    doc = protojson.to_protojson(back)
    s = doc["process_kprobe"]["args"][0]["sock_arg"]
    assert s["daddr"] == "192.0.2.7" and s["saddr"] == "::1" and s["family"] == "AF_INET6"
    assert s["cookie"] == str(cookie & ((1 << 63) - 1)) and s["state"] == "TCP_SYN_SENT"
    assert doc["process_kprobe"]["process"] == {"pid": 4242, "tid": 4242, "flags": "miss"}
    assert compact.render(doc) == "🔌 connect n1  tcp ::1:40000 -> 192.0.2.7:443"
    with pytest.raises(r.RecordError):
        r.decode(raw[:-1])


def test_close_is_attributed_to_the_connecting_process_after_it_exited(tmp_path: Path) -> None:
    b = EventBuilder(ProcessCache(64))
    ex = r.ExecRecord(r.Header(r.REC_EXEC, 1, 0, 77, 77, 5), 1, 0, 4, 0, 0, *([0] * 10), 0, 0, 0,
                      tuple([1] * 10), 0, 77, 0, 0, 0, b"curl", b"/usr/bin/curl", b"curl\0x\0",
                      b"/", b"")
    b.on_record(ex, "n", 0, [])
    b.on_record(r.decode(r.encode_sock(77, 77, 6, r.SOCK_CONNECT, 2, 2, 1, 2, b"\x7f\0\0\1",
                                       b"\x7f\0\0\1", 99)), "n", 0, [])
    b.on_record(r.decode(r.encode_exit(77, 77, 7, 0, 1, 4)), "n", 0, [])
    ev = b.on_record(r.decode(r.encode_sock(0, 0, 8, r.SOCK_CLOSE, 7, 2, 1, 2, b"\x7f\0\0\1",
                                            b"\x7f\0\0\1", 99)), "n", 0, [])
    assert ev["process_kprobe"]["function_name"] == "tcp_close"
    assert ev["process_kprobe"]["process"]["binary"] == "/usr/bin/curl"
