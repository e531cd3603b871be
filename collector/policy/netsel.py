"""Network selectors and socket tracking, as Tetragon has them.

Operators (``SAddr``/``DAddr``/``NotSAddr``/``NotDAddr``, ``SPort``/``DPort``/``Not...``,
``SPortPriv``/``DPortPriv``/``Not...Priv``, ``Protocol``, ``Family``, ``State``) on ``sock``,
``socket``, ``skb`` and ``sockaddr`` arguments. Each object is read into one layout, struct
tp_sockinfo (collector/sock_hooks.py; bpf/netsel.h reads skb, sockaddr, socket), and compared:

- addresses: every CIDR of a filter (IPv4 and IPv6, a plain address is a /32 or /128) goes into
  the policy's LPM-trie map ``netaddr`` under the filter's set id: one lookup per filter, however
  many CIDRs (bpf/policy_prog.c ``net_lookup``). IPv4-mapped IPv6 values and addresses are
  compared as the IPv4 address they carry (a dual-stack socket cannot walk around an IPv4 rule);
- ports: values and ``lo:hi`` ranges; up to :data:`PORT_INLINE_MAX` compared inline, more go
  into the ``intset`` hash map (one lookup, ranges expanded, the InMap budget);
- ``Protocol``/``Family``/``State`` by name (IPPROTO_TCP, AF_INET, TCP_SYN_SENT) or number.
A sockaddr has one address and port: Tetragon names them SAddr/SPort; DAddr/DPort read the same
(a connect's sockaddr is the destination). A packet has no TCP state; a sockaddr no protocol.

Socket tracking (Tetragon's ``returnArgAction: TrackSock``/``UntrackSock`` and the
``TrackSock``/``UntrackSock`` actions with ``argSock``): the policy's ``socktrack`` map holds
socket → owner process (the tgid of the task that ran the tracking hook). Every hook of that
policy with a sock, socket or skb argument (the skb's socket) names the owner as the event's
process, so hooks running in softirq or another task's context are attributed to the socket's
process. Tracking needs a kernel function hook (sock pointers; the return value for
returnArgAction): refused elsewhere with the reason.
"""

from __future__ import annotations

import ctypes
import ipaddress
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

from collector import sock_hooks
from collector.policy.csrc import fragment
from collector.policy.model import ArgFilter, ArgSpec, Hook, Policy

if TYPE_CHECKING:
    from collector.policy.compiler import ProgramGen
    from collector.policy.selectors import SelectorGen

NET_OPERATORS = sock_hooks.SOCK_OPERATORS
# Tetragon's examples spell some in lower case ("family", "state"): any case is read as the operator
OPERATOR_ALIASES = {op.lower(): op for op in sorted(NET_OPERATORS - {"NotSportPriv"})}
VIEW_TYPES = ("sock", "socket", "skb", "sockaddr")
# C type a kernel function's argument must have for each socket type (u64: a kprobe without BTF)
SOCK_CTYPES = {"sock": "struct sock *", "socket": "struct socket *"}
NET_ADDR_MAX = 16384          # CIDRs per policy (LPM-trie entries; measured in bench/)
PORT_INLINE_MAX = 8           # port values/ranges compared inline; more go into the intset map
PORT_SET_SPAN_MAX = 4096      # ... unless they span more ports than this: then compared inline,
PORT_WIDE_MAX = 64            # at most this many
TRACK_MAX = 65536             # tracked sockets per policy (LRU: sockets never untracked age out)
TRACK_ACTIONS = ("TrackSock", "UntrackSock")

FAMILIES = {"AF_UNSPEC": 0, "AF_UNIX": 1, "AF_LOCAL": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16,
            "AF_PACKET": 17, "AF_VSOCK": 40, "AF_XDP": 44}
PROTOCOLS = {"IPPROTO_IP": 0, "IPPROTO_ICMP": 1, "IPPROTO_TCP": 6, "IPPROTO_UDP": 17, "IPPROTO_IPV6": 41,
             "IPPROTO_ICMPV6": 58, "IPPROTO_SCTP": 132, "IPPROTO_UDPLITE": 136, "IPPROTO_RAW": 255,
             "IPPROTO_MPTCP": 262}
# what an object does not carry: operator base → reason
NOT_ON = {"sockaddr": {"Protocol": "a sockaddr has no protocol", "State": "a sockaddr has no TCP state"},
          "skb": {"State": "a packet has no TCP state (use the sock argument)"}}
V4MAPPED_WORD = 0xFFFF0000    # bytes 00 00 ff ff of ::ffff:a.b.c.d read as a little-endian u32


class NetSets:
    """The policy's address sets: (set id, family, prefix bits, 16 address bytes) entries of the
    ``netaddr`` LPM trie, filled by the manager before the policy is enabled."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, int, int, bytes]] = []
        self.sets = 0

    def add(self, values: Sequence[str], path: str, fail: object) -> int:
        sid = self.sets
        self.sets += 1
        seen: set[tuple[int, int, bytes]] = set()
        for j, v in enumerate(values):
            try:
                net = ipaddress.ip_network(str(v).strip(), strict=False)
            except ValueError as exc:
                raise fail(f"{path}.values[{j}]", f"{v!r} is not an IPv4/IPv6 address or CIDR: {exc}") from None
            if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and \
                    net.network_address.ipv4_mapped is not None:
                net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
            fam = 2 if net.version == 4 else 10
            seen.add((fam, net.prefixlen, net.network_address.packed.ljust(16, b"\0")))
        if len(self.entries) + len(seen) > NET_ADDR_MAX:
            raise fail(f"{path}.values", f"the address values of this policy come to more than {NET_ADDR_MAX} "
                                         "CIDRs (one LPM-trie entry each)")
        self.entries += [(sid, fam, bits, raw) for fam, bits, raw in sorted(seen)]
        return sid


def policy_tracks(policy: Policy) -> bool:
    """Some hook of the policy tracks sockets."""
    return any(h.return_arg_action in TRACK_ACTIONS or any(
        a.action in TRACK_ACTIONS for s in h.selectors for a in s.match_actions) for h in policy.hooks)


def decls(g: ProgramGen) -> list[str]:
    """Program text after the socket helpers: bpf/netsel.h, the address sets' map and lookup, the
    tracked sockets' map."""
    out = ['#include "netsel.h"']
    if g.net.entries:
        out.append(fragment("net_lookup", size=len(g.net.entries), v4mapped=f"{V4MAPPED_WORD:#x}U").rstrip("\n"))
    if policy_tracks(g.policy):
        out.append(f'BPF_TABLE("lru_hash", u64, u32, socktrack, {TRACK_MAX});  /* socket → owner tgid */')
    return out


# ---- selectors --------------------------------------------------------------------------------
def _user(sg: SelectorGen) -> int:
    return int(sg.src.kind in ("syscall", "syscall_ret") or bool(getattr(sg.src, "wrapper", False)))


def _view(sg: SelectorGen, arg: ArgSpec, op: str, path: str) -> tuple[str, str]:
    """(C that fills ``nv`` or "", the C expression of the struct tp_sockinfo pointer)."""
    i, kind = arg.index, sg.src.kind
    if arg.type in SOCK_CTYPES and (kind == "kfunc" or (kind == "sock" and arg.type == "sock")):
        return "", f"((struct tp_sockinfo *)a[{i}])"   # read at the probe (hookfn sockfill, sock_hooks)
    if arg.type == "skb" and kind in ("kfunc", "tracepoint"):
        return f"tp_net_skb((struct sk_buff *)a[{i}], &nv{i});", f"(&nv{i})"
    if arg.type == "sockaddr":
        return f"tp_net_sockaddr((void *)a[{i}], {_user(sg)}, &nv{i});", f"(&nv{i})"
    where = {"sock": "kernel functions and the socket hooks (tcp_connect, inet_csk_accept, tcp_close)",
             "socket": "kernel functions", "skb": "kernel functions and tracepoints"}.get(arg.type, "")
    raise sg.fail(f"{path}.operator", f"operator {op} on a {arg.type} argument is served at {where} only"
                  if where else f"network operators apply to sock, socket, skb and sockaddr arguments, "
                                f"not to a {arg.type} argument")


def _ports(sg: SelectorGen, v: str, field: str, f: ArgFilter, path: str) -> str:
    try:
        ranges = sock_hooks._port_ranges(f.values)
    except sock_hooks.SockFilterError as exc:
        raise sg.fail(f"{path}.values", str(exc)) from None
    wide = sum(hi - lo + 1 for lo, hi in ranges) > PORT_SET_SPAN_MAX
    if len(ranges) > PORT_INLINE_MAX and wide:
        if len(ranges) > PORT_WIDE_MAX:
            raise sg.fail(f"{path}.values", f"{len(ranges)} port values/ranges spanning more than "
                                            f"{PORT_SET_SPAN_MAX} ports: at most {PORT_WIDE_MAX} such ranges "
                                            "(compared one by one), or fewer ports (one map lookup)")
    elif len(ranges) > PORT_INLINE_MAX:
        sid = sg.g.int_set(ranges, f"{path}.values")
        return f"tp_int_in({sid}, (u64){v}->{field})"
    return " || ".join(f"({v}->{field} == {lo})" if lo == hi else f"({v}->{field} >= {lo} && {v}->{field} <= {hi})"
                       for lo, hi in ranges)


def _named(sg: SelectorGen, values: Sequence[str], names: dict[str, int], what: str, path: str) -> list[int]:
    out = []
    for j, v in enumerate(values):
        v = str(v).strip()
        if v in names:
            out.append(names[v])
            continue
        try:
            out.append(int(v, 0))
        except ValueError:
            raise sg.fail(f"{path}.values[{j}]", f"{what} {v!r}: one of {', '.join(names)} or a number") from None
    return out


def expr(sg: SelectorGen, v: str, arg_type: str, f: ArgFilter, path: str) -> str:
    """One network filter → a C boolean over the struct tp_sockinfo pointer ``v``."""
    op = f.operator
    neg = op.startswith("Not")
    base = {"SportPriv": "SPortPriv"}.get(op[3:] if neg else op, op[3:] if neg else op)
    why = NOT_ON.get(arg_type, {}).get(base)
    if why:
        raise sg.fail(f"{path}.operator", f"operator {op} does not apply to a {arg_type} argument: {why}")
    if base in ("SAddr", "DAddr"):
        sid = sg.g.net.add(f.values, path, sg.fail)
        field = "saddr" if base == "SAddr" else "daddr"
        e = f"tp_net_in({sid}, {v}->family, {v}->{field})"
    elif base in ("SPort", "DPort"):
        e = _ports(sg, v, "sport" if base == "SPort" else "dport", f, path)
    elif base in ("SPortPriv", "DPortPriv"):
        e = f"{v}->{'sport' if base == 'SPortPriv' else 'dport'} < 1024"
    elif base == "Protocol":
        e = " || ".join(f"{v}->protocol == {p}" for p in _named(sg, f.values, PROTOCOLS, "protocol", path))
    elif base == "Family":
        e = " || ".join(f"{v}->family == {x}" for x in _named(sg, f.values, FAMILIES, "family", path))
    else:   # State
        e = " || ".join(f"{v}->state == {s}"
                        for s in _named(sg, f.values, sock_hooks.TCP_STATES, "state", path))
    return f"!({e})" if neg else f"({e})"


def filter_line(sg: SelectorGen, arg: ArgSpec, f: ArgFilter, path: str) -> str:
    """The selector statement of one filter on a network argument (``ok`` stays 1 if it holds)."""
    if f.operator not in NET_OPERATORS:
        raise sg.fail(f"{path}.operator", f"operator {f.operator} does not apply to a {arg.type} argument "
                                          f"(one of {', '.join(sorted(NET_OPERATORS))})")
    if arg.type not in VIEW_TYPES:
        raise sg.fail(f"{path}.operator", f"operator {f.operator} applies to sock, socket, skb and sockaddr "
                                          f"arguments, not to a {arg.type} argument")
    fill, v = _view(sg, arg, f.operator, path)
    sg.g.sock = True
    if fill:   # read once per hook call, before the selectors (view_fills)
        views: dict[int, str] = sg.__dict__.setdefault("net_views", {})
        views[arg.index] = f"struct tp_sockinfo nv{arg.index} = {{}};\n{fill}"
    return f"if (ok) ok = {expr(sg, v, arg.type, f, path)};"


def view_fills(sg: SelectorGen) -> list[str]:
    """The skb/sockaddr arguments the selectors compare, each read into ``nv<index>`` once."""
    return list(sg.__dict__.get("net_views", {}).values())


# ---- kernel-function arguments ------------------------------------------------------------------
def kfunc_fill(index: int, arg_type: str) -> str:
    """A sock/socket argument of a kernel function read into a struct tp_sockinfo on the stack,
    whose address replaces the pointer in ``a[]`` (its cookie keeps the struct sock pointer)."""
    reader = "tp_net_socket((struct socket *)" if arg_type == "socket" else "tp_net_sock((struct sock *)"
    return f"struct tp_sockinfo si{index} = {{}};\n{reader}a[{index}], &si{index});\na[{index}] = (u64)&si{index};\n"


def ctype_refusal(arg: ArgSpec, ctype: str, func: str) -> str:
    want = SOCK_CTYPES[arg.type]
    if ctype in (want, "u64") or ctype.replace("const ", "") == want:
        return ""
    return f"a {arg.type} argument reads {want}; argument {arg.index} of {func} is {ctype}"


# ---- socket tracking --------------------------------------------------------------------------
def _cookie(hook: Hook, index: int) -> str:
    arg = hook.arg(index)
    if arg is not None and arg.type == "skb":
        return (f"({{ struct sock *tsk = 0; bpf_probe_read_kernel(&tsk, sizeof(tsk), "
                f"&((struct sk_buff *)a[{index}])->sk); (u64)tsk; }})")
    return f"((struct tp_sockinfo *)a[{index}])->cookie"


def check_tracking(sg: SelectorGen) -> None:
    """Refuse tracking where the hook cannot serve it (with the feature named)."""
    hook = sg.hook
    what = hook.return_arg_action if hook.return_arg_action in TRACK_ACTIONS else ""
    for s in hook.selectors:
        for a in s.match_actions:
            if a.action in TRACK_ACTIONS:
                what = what or a.action
                arg = hook.arg(a.arg_sock)
                if arg is None or arg.type not in SOCK_CTYPES:
                    raise sg.fail(f"{a.path}.argSock", f"{a.action} needs argSock naming a sock or socket "
                                                       f"argument (argument {a.arg_sock} is "
                                                       f"{arg.type if arg else 'not declared'})")
    if not what:
        return
    sg.g.sock = True   # the tracked sockets' map comes with the socket helpers
    if sg.src.kind != "kfunc":
        raise sg.fail(f"{hook.path}.call", f"{what} needs the socket pointer of a kernel function hook "
                                           "(kprobe/fentry/kretprobe/fexit); this kernel serves "
                                           f"{hook.call or hook.event} by {sg.src.kind} "
                                           "hooks (feature missing: kprobes or BPF trampolines)")
    if hook.return_arg_action in TRACK_ACTIONS and (hook.return_arg is None or hook.return_arg.type != "sock"):
        raise sg.fail(f"{hook.path}.returnArgAction", f"returnArgAction {hook.return_arg_action} needs "
                                                      "returnArg of type sock (the function returns the socket)")


def effects(sg: SelectorGen) -> list[str]:
    """After a selector matched, before any other effect: the owner of the hook's socket is
    looked up (``tp_owner``, the event's process: owner_c), then the sockets the selector names
    are tracked or untracked (an UntrackSock hook still reports the owner)."""
    check_tracking(sg)
    hook, out = sg.hook, []
    lookup = _owner_lookup(sg)
    if lookup:
        out.append(lookup)
    for i, s in enumerate(hook.selectors or []):
        for a in s.match_actions:
            if a.action == "TrackSock":
                out.append(f"if (sel == {i}) {{\n    u64 tsk = {_cookie(hook, a.arg_sock)};\n"
                           "    u32 tg = bpf_get_current_pid_tgid() >> 32;\n"
                           "    if (tsk)\n        socktrack.update(&tsk, &tg);\n}")
            elif a.action == "UntrackSock":
                out.append(f"if (sel == {i}) {{\n    u64 tsk = {_cookie(hook, a.arg_sock)};\n"
                           "    socktrack.delete(&tsk);\n}")
    if hook.return_arg_action == "TrackSock":
        out.append("if (is_ret && ret) {\n    u64 tsk = (u64)ret;\n    u32 tg = bpf_get_current_pid_tgid() >> 32;\n"
                   "    socktrack.update(&tsk, &tg);\n}")
    elif hook.return_arg_action == "UntrackSock":
        out.append("if (is_ret && ret) {\n    u64 tsk = (u64)ret;\n    socktrack.delete(&tsk);\n}")
    return out


def _owner_lookup(sg: SelectorGen) -> str:
    if sg.src.kind != "kfunc" or not policy_tracks(sg.g.policy):
        return ""
    arg = next((a for a in sg.hook.args if a.type in ("sock", "socket", "skb")), None)
    if arg is None:
        return ""
    sg.g.sock = True
    return (f"u64 tp_owner = 0;\n{{\n    u64 osk = {_cookie(sg.hook, arg.index)};\n"
            "    u32 *own = osk ? socktrack.lookup(&osk) : 0;\n"
            "    if (own)\n        tp_owner = ((u64)*own << 32) | *own;\n}")


def owner_c(sg: SelectorGen) -> str:
    """In a tracking policy: the event's process is the owner of the hook's (first) socket."""
    if not _owner_lookup(sg):
        return ""
    return "\n    if (tp_owner)\n        id = tp_owner;"


def fill(bpf: object, entries: Sequence[tuple[int, int, int, bytes]]) -> None:
    """Put the policy's CIDRs into its ``netaddr`` LPM trie (before the policy is enabled)."""
    if not entries:
        return
    table = bpf["netaddr"]   # type: ignore[index]
    one = ctypes.c_uint8(1)
    for sid, fam, bits, raw in entries:
        key = table.Key()
        packed = struct.pack("<IIB3x16s", 64 + bits, sid, fam, raw)
        ctypes.memmove(ctypes.addressof(key), packed, min(len(packed), ctypes.sizeof(key)))
        table[key] = one
