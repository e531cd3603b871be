"""Network and UDP sensor records (bpf/network.c, bpf/udp.c) → Tetragon ``process_kprobe`` events.

Tetragon has no dedicated connect event any more; its network policies hook ``tcp_connect``,
``inet_csk_accept`` and ``tcp_close`` and report a ``sock_arg``. We emit the same shape, so
filters, dashboards and the compact view (🔌 connect) written for Tetragon work unchanged. The
socket's network namespace follows as a second argument labelled ``netns`` (``uint_arg``).
The cookie is the kernel address of the socket, as in Tetragon's sock_arg; the enricher uses it
to attribute a close to the process that connected or accepted, even after that process exited
(it keeps the process of up to OWNERS_MAX open sockets). A UDP send is ``udp_sendmsg`` (the
kernel function Tetragon's UDP policies hook) with the same two arguments; its ``state`` is
``TCP_ESTABLISHED`` for a connected socket, ``TCP_CLOSE`` for an unconnected one.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from bpf import records as r

if TYPE_CHECKING:
    from enricher.event_builder import EventBuilder
    from enricher.process_cache import Entry

FUNCTION = {r.SOCK_CONNECT: "tcp_connect", r.SOCK_ACCEPT: "inet_csk_accept", r.SOCK_CLOSE: "tcp_close",
            r.SOCK_UDP_SEND: "udp_sendmsg"}
FAMILY = {2: "AF_INET", 10: "AF_INET6"}
SOCK_TYPE = {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 5: "SOCK_SEQPACKET"}
PROTOCOL = {6: "IPPROTO_TCP", 17: "IPPROTO_UDP", 132: "IPPROTO_SCTP", 262: "IPPROTO_MPTCP"}
TCP_STATE = {
    1: "TCP_ESTABLISHED", 2: "TCP_SYN_SENT", 3: "TCP_SYN_RECV", 4: "TCP_FIN_WAIT1",
    5: "TCP_FIN_WAIT2", 6: "TCP_TIME_WAIT", 7: "TCP_CLOSE", 8: "TCP_CLOSE_WAIT", 9: "TCP_LAST_ACK",
    10: "TCP_LISTEN", 11: "TCP_CLOSING", 12: "TCP_NEW_SYN_RECV",
}
OWNERS_MAX = 65536
# the sock address has its top bit set; the schema (as Tetragon's JSON readers) wants int64
COOKIE_MASK = (1 << 63) - 1


def address(family: int, raw: bytes) -> str:
    if family == 2:
        return str(ipaddress.IPv4Address(raw[:4]))
    if family == 10:
        a = ipaddress.IPv6Address(raw[:16])
        return str(a.ipv4_mapped) if a.ipv4_mapped else str(a)
    return ""


def sock_arg(rec: r.SockRecord) -> dict[str, Any]:
    return {
        "family": FAMILY.get(rec.family, str(rec.family)),
        "type": SOCK_TYPE.get(rec.type, str(rec.type)),
        "protocol": PROTOCOL.get(rec.protocol, str(rec.protocol)),
        "mark": rec.mark,
        "priority": rec.priority,
        "saddr": address(rec.family, rec.saddr),
        "daddr": address(rec.family, rec.daddr),
        "sport": rec.sport,
        "dport": rec.dport,
        "cookie": rec.cookie & COOKIE_MASK,
        "state": TCP_STATE.get(rec.state, str(rec.state)),
    }


def _owners(builder: EventBuilder) -> OrderedDict[int, Entry]:
    owners = builder.__dict__.get("_sock_owners")
    if owners is None:
        owners = builder.__dict__["_sock_owners"] = OrderedDict()
    return owners


def _owner(builder: EventBuilder, rec: r.SockRecord) -> Entry | None:
    if rec.op == r.SOCK_UDP_SEND:  # the sender itself; no close follows to attribute
        return builder.process_for(rec.header.pid)
    owners = _owners(builder)
    if rec.op == r.SOCK_CLOSE:
        entry = owners.pop(rec.cookie, None)
        return entry or builder.process_for(rec.header.pid)
    entry = builder.process_for(rec.header.pid)
    if entry is not None:
        owners[rec.cookie] = entry
        owners.move_to_end(rec.cookie)
        while len(owners) > OWNERS_MAX:
            owners.popitem(last=False)
    return entry


def build(builder: EventBuilder, rec: r.SockRecord, node: str, boot_ns: int) -> dict[str, Any]:
    h = rec.header
    entry = _owner(builder, rec)
    body: dict[str, Any] = {
        "function_name": FUNCTION.get(rec.op, f"sock_op_{rec.op}"),
        "args": [{"sock_arg": sock_arg(rec)}, {"label": "netns", "uint_arg": rec.netns}],
        "action": "KPROBE_ACTION_POST",
    }
    if entry is not None:
        body["process"] = dict(entry.process)
        parent = builder.cache.get(entry.parent_exec_id)
        if parent is not None:
            body["parent"] = dict(parent.process)
        if "kprobe" in builder.ancestors_for:
            body["ancestors"] = builder._ancestors(parent)
    else:  # a process the cache never saw: what the kernel told us
        body["process"] = {"pid": h.pid, "tid": h.tid, "flags": "miss"}
    return builder.envelope(node, boot_ns + h.ktime, process_kprobe=body)


# struct tp_sockinfo (collector/sock_hooks.py), a policy hook's sock argument (TP_ARG_SOCK)
SOCKINFO = struct.Struct("<HHHBBHHIIIQ16s16s")


def sock_arg_from_bytes(data: bytes) -> dict[str, Any]:
    """A policy hook's serialised sock argument → Tetragon's ``sock_arg``."""
    if len(data) != SOCKINFO.size:
        raise r.RecordError(f"sock argument of {len(data)} bytes, layout has {SOCKINFO.size}")
    fam, typ, proto, state, _pad, sport, dport, mark, prio, _netns, cookie, sa, da = \
        SOCKINFO.unpack(data)
    return {
        "family": FAMILY.get(fam, str(fam)), "type": SOCK_TYPE.get(typ, str(typ)),
        "protocol": PROTOCOL.get(proto, str(proto)), "mark": mark, "priority": prio,
        "saddr": address(fam, sa), "daddr": address(fam, da), "sport": sport, "dport": dport,
        "cookie": cookie & COOKIE_MASK, "state": TCP_STATE.get(state, str(state)),
    }


def sock_arg_from_deny(rec: r.ConnectDenyRecord) -> dict[str, Any]:
    """The socket of a refused connect (bpf/connect_deny.c) → Tetragon's ``sock_arg``: the
    destination the caller asked for, the source the socket had (0.0.0.0 / port 0 when unbound)."""
    return {
        "family": FAMILY.get(rec.family, str(rec.family)), "type": SOCK_TYPE.get(rec.type, str(rec.type)),
        "protocol": PROTOCOL.get(rec.protocol, str(rec.protocol)), "mark": rec.mark,
        "priority": rec.priority, "saddr": address(rec.family, rec.saddr),
        "daddr": address(rec.family, rec.daddr), "sport": rec.sport, "dport": rec.dport,
        "cookie": rec.cookie & COOKIE_MASK, "state": TCP_STATE.get(rec.state, str(rec.state)),
    }
