"""Socket hooks and operators for policies (collector/sock_hooks.py): a program made of the
pieces (tcp_connect/inet_csk_accept/tcp_close probes, tp_sockinfo, one sock_cond per filter)
counts, per filter, the test's own connections it matches; real TCP traffic on IPv4 and IPv6
loopback and, in a network namespace the test makes, to a non-loopback address."""

from __future__ import annotations

import ctypes as ct
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from collector import loader, sock_hooks
from collector.sock_hooks import SockFilterError, sock_cond
from enricher.network_events import sock_arg_from_bytes
from tests.conftest import skip_or_fail

# (hook, operator, values) → counted when the hook fires for a socket of the test's processes
FILTERS = [
    ("tcp_connect", "DAddr", ["127.0.0.1"]),
    ("tcp_connect", "DAddr", ["::1"]),
    ("tcp_connect", "NotDAddr", ["127.0.0.0/8", "::1"]),
    ("tcp_connect", "DAddr", ["192.0.2.0/24"]),
    ("tcp_connect", "DPort", ["PORT4"]),
    ("tcp_connect", "NotDPort", ["PORT4"]),
    ("tcp_connect", "DPortPriv", []),
    ("tcp_connect", "SAddr", ["127.0.0.1"]),
    ("tcp_connect", "Family", ["AF_INET6"]),
    ("tcp_connect", "Protocol", ["IPPROTO_TCP"]),
    ("tcp_connect", "State", ["TCP_ESTABLISHED"]),
    ("inet_csk_accept", "SPort", ["PORT4"]),
    ("tcp_close", "NotSPortPriv", []),
]


def program(filters: list[tuple[str, str, list[str]]]) -> tuple[str, dict[str, str]]:
    hooks = sorted({h for h, _, _ in filters})
    out = ['#include "records.h"', sock_hooks.SOCK_HELPERS_C,
           f"BPF_ARRAY(hits, u64, {len(filters)});",
           "BPF_ARRAY(last, struct tp_sockinfo, 1);",
           "BPF_HASH(mine, u32, u8, 64);",
           "BPF_HASH(pending_connect, u32, u32, 4096);",
           'BPF_TABLE("lru_hash", u64, u32, close_owner, 4096);']   # tcp_close: socket → owner tgid
    for h in hooks:
        conds = []
        for i, (fh, op, vals) in enumerate(filters):
            if fh == h:
                conds.append(f"    if ({sock_cond('si', op, vals)}) {{ u32 k = {i}; u64 *c = hits.lookup(&k);"
                             f" if (c) __sync_fetch_and_add(c, 1); }}")
        out.append(f"static __always_inline void hook_{h}(struct tp_sockinfo *si, u32 owner)\n{{\n"
                   "    if (!mine.lookup(&owner))\n        return;\n"
                   + ("    { int z = 0; last.update(&z, si); }\n" if h == "tcp_connect" else "")
                   + "\n".join(conds) + "\n}")
    probes: dict[str, list[str]] = {}
    for h in hooks:
        call = f"hook_{h}((struct tp_sockinfo *)a[0], bpf_get_current_pid_tgid() >> 32);"
        if h == "tcp_close":  # softirq context possible: the owner is the socket's, not current
            call = f"hook_{h}((struct tp_sockinfo *)a[0], 0);"
        for tp, stmt in sock_hooks.probe_c(h, call, "close_owner" if h == "tcp_close" else "pending_connect").items():
            probes.setdefault(tp, []).append(stmt)
    for tp, stmts in probes.items():
        sub, ev = tp.split(":")
        body = "\n".join(textwrap.indent(s, "    ") for s in stmts)
        out.append(f"TRACEPOINT_PROBE({sub}, {ev})\n{{\n{body}\n    return 0;\n}}")
    return "\n".join(out) + "\n", {}


@pytest.fixture(scope="module")
def listener() -> socket.socket:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", 0))
    s.listen(64)
    return s


def test_socket_filters_on_real_connections(bpf_ok: None, listener: socket.socket, tmp_path: Path) -> None:
    port = listener.getsockname()[1]
    filters = [(h, op, [v.replace("PORT4", str(port)) for v in vals]) for h, op, vals in FILTERS]
    text, _ = program(filters)
    loader.prepare()
    try:
        bpf = loader.load_program("sock_hooks", text=text)
    except loader.LoadError as exc:
        skip_or_fail(f"socket hook program did not load: {exc}")
    try:
        # the connecting child (and, for tcp_close, pid 0 = softirq/any) are "mine"
        mine = bpf["mine"]
        mine[ct.c_uint32(0)] = ct.c_uint8(1)
        mine[ct.c_uint32(os.getpid())] = ct.c_uint8(1)
        child = textwrap.dedent(f"""
            import socket, sys
            sys.stdin.read()  # until the test has registered this pid
            for host in ("127.0.0.1", "::1"):
                c = socket.create_connection((host, {port}))
                c.close()
        """)
        p = subprocess.Popen([sys.executable, "-c", child], stdin=subprocess.PIPE)
        mine[ct.c_uint32(p.pid)] = ct.c_uint8(1)
        p.stdin.close()  # type: ignore[union-attr]
        # accept both in this process (pid registered): inet_csk_accept fires here
        for _ in range(2):
            conn, _ = listener.accept()
            conn.close()
        assert p.wait(30) == 0
        # a non-loopback destination: in a network namespace of a child the test makes
        if shutil.which("ip") and shutil.which("unshare"):
            script = tmp_path / "ns.sh"
            script.write_text(textwrap.dedent(f"""\
                set -e
                ip link set lo up
                ip addr add 192.0.2.1/32 dev lo
                exec {sys.executable} -c 'import socket
                l = socket.socket(); l.bind(("192.0.2.1", 8443)); l.listen(1)
                c = socket.create_connection(("192.0.2.1", 8443)); c.close()'
            """))
            q = subprocess.Popen(["unshare", "-n", "bash", str(script)])
            mine[ct.c_uint32(q.pid)] = ct.c_uint8(1)  # exec keeps the pid
            assert q.wait(30) == 0
            netns_case = True
        else:
            netns_case = False
        time.sleep(0.2)
        hits = [bpf["hits"][ct.c_int(i)].value for i in range(len(filters))]
        last = bytes(bpf["last"][ct.c_int(0)])
    finally:
        bpf.cleanup()
    got = {f"{h}:{op}:{','.join(v)}": n for (h, op, v), n in zip(filters, hits, strict=True)}
    # the child's 2 loopback connects (plus 1 in the netns, when it ran) may have raced the
    # registration of its pid: the netns child is registered before it connects
    assert got["tcp_connect:DAddr:127.0.0.1"] == 1, got
    assert got["tcp_connect:DAddr:::1"] == 1, got
    assert got[f"tcp_connect:DPort:{port}"] == 2, got
    assert got["tcp_connect:SAddr:127.0.0.1"] == 1, got
    assert got["tcp_connect:Family:AF_INET6"] == 1, got
    assert got["tcp_connect:Protocol:IPPROTO_TCP"] == 2 + netns_case, got
    assert got["tcp_connect:State:TCP_ESTABLISHED"] == 2 + netns_case, got
    assert got["tcp_connect:DPortPriv:"] == 0, got
    assert got["tcp_connect:NotDAddr:127.0.0.0/8,::1"] == int(netns_case), got
    assert got["tcp_connect:DAddr:192.0.2.0/24"] == int(netns_case), got
    assert got[f"tcp_connect:NotDPort:{port}"] == int(netns_case), got
    assert got[f"inet_csk_accept:SPort:{port}"] == 2, got
    assert got["tcp_close:NotSPortPriv:"] >= 4, got   # both ends of both loopback connections
    arg = sock_arg_from_bytes(last)
    assert arg["protocol"] == "IPPROTO_TCP" and arg["state"] == "TCP_ESTABLISHED"
    if netns_case:
        assert (arg["daddr"], arg["dport"], arg["saddr"]) == ("192.0.2.1", 8443, "192.0.2.1")


def test_refusals_say_why() -> None:
    with pytest.raises(SockFilterError, match="does not apply to a sock"):
        sock_cond("si", "Equal", ["1"])
    with pytest.raises(SockFilterError, match="not an address"):
        sock_cond("si", "DAddr", ["300.1.1.1"])
    with pytest.raises(SockFilterError, match="lo:hi"):
        sock_cond("si", "DPort", ["https"])
    with pytest.raises(SockFilterError, match="state 'TCP_BOGUS'"):
        sock_cond("si", "State", ["TCP_BOGUS"])
    with pytest.raises(SockFilterError, match="not a socket hook"):
        sock_hooks.probe_c("tcp_sendmsg", "", "m")
    assert sock_cond("si", "NotSportPriv", []) == "!(si->sport < 1024)"
