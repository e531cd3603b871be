"""Socket hooks of TracingPolicies without kprobes: ``tcp_connect``, ``inet_csk_accept`` and
``tcp_close`` with ``sock`` arguments, and Tetragon's socket matchArgs operators, as C the policy
engine's compiler (collector/policy/) puts into a policy's program.

How each hook is served (the kernel functions cannot be hooked here):
- ``tcp_connect``: ``syscalls:sys_enter_connect`` remembers the fd, ``sys_exit_connect`` (0 or
  -EINPROGRESS) resolves fd → struct sock; the hook sees the socket after the kernel chose the
  source address and port, as tcp_connect does;
- ``inet_csk_accept``: ``sys_exit_accept`` / ``sys_exit_accept4``, the returned fd's socket;
- ``tcp_close``: ``sock:inet_sock_set_state`` with newstate TCP_CLOSE (the tuple the tracepoint
  recorded).
Only TCP sockets of AF_INET/AF_INET6 reach the hooks.

API for the compiler:
- :data:`SOCK_HOOKS` — hook name → how it attaches; :func:`probe_c` — the probe statements that
  fill ``struct tp_sockinfo si`` and call the hook function with ``a[0] = (u64)&si``;
- :data:`SOCK_HELPERS_C` — C helpers (fd → sock, sock → tp_sockinfo), once per program;
- :func:`sock_cond` — one matchArgs filter on a sock argument → a C boolean expression over
  ``struct tp_sockinfo *``; :class:`SockFilterError` with the reason when it cannot be served;
- :func:`put_sock_c` — serialises the argument (TP_ARG_SOCK, :data:`SOCKINFO` layout), which
  enricher/network_events.py ``sock_arg_from_bytes`` turns into Tetragon's ``sock_arg``.
A selector of such a hook with Sigkill/Override can also be enforced before the connection with
collector/connect_deny.py (cgroup/connect4/6, EPERM).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

TP_ARG_SOCK = 9
# struct tp_sockinfo as serialised: family, type, protocol, state(u8) pad(u8), sport, dport (host
# order), mark, priority, netns, cookie, saddr[16], daddr[16]
SOCKINFO = struct.Struct("<HHHBBHHIIIQ16s16s")

FAMILIES = {"AF_INET": socket.AF_INET, "AF_INET6": socket.AF_INET6}
PROTOCOLS = {"IPPROTO_TCP": 6, "IPPROTO_UDP": 17, "IPPROTO_SCTP": 132, "IPPROTO_MPTCP": 262}
TCP_STATES = {
    "TCP_ESTABLISHED": 1, "TCP_SYN_SENT": 2, "TCP_SYN_RECV": 3, "TCP_FIN_WAIT1": 4,
    "TCP_FIN_WAIT2": 5, "TCP_TIME_WAIT": 6, "TCP_CLOSE": 7, "TCP_CLOSE_WAIT": 8, "TCP_LAST_ACK": 9,
    "TCP_LISTEN": 10, "TCP_CLOSING": 11, "TCP_NEW_SYN_RECV": 12,
}
SOCK_OPERATORS = frozenset({
    "SAddr", "NotSAddr", "DAddr", "NotDAddr", "SPort", "NotSPort", "DPort", "NotDPort",
    "SPortPriv", "NotSPortPriv", "NotSportPriv", "DPortPriv", "NotDPortPriv", "Protocol", "Family",
    "State",
})


class SockFilterError(ValueError):
    """A socket filter that cannot be served, with the reason."""


@dataclass(frozen=True)
class SockHook:
    name: str
    tracepoints: tuple[str, ...]
    how: str                     # said at load


SOCK_HOOKS = {
    "tcp_connect": SockHook("tcp_connect", ("syscalls:sys_enter_connect", "syscalls:sys_exit_connect"),
                            "syscalls:sys_enter_connect + sys_exit_connect (fd → sock)"),
    "inet_csk_accept": SockHook("inet_csk_accept",
                                ("syscalls:sys_exit_accept", "syscalls:sys_exit_accept4"),
                                "syscalls:sys_exit_accept/accept4 (returned fd → sock)"),
    "tcp_close": SockHook("tcp_close", ("sock:inet_sock_set_state",),
                          "sock:inet_sock_set_state → TCP_CLOSE"),
}

SOCK_HELPERS_C = r"""
#define TP_SK_AF_INET 2
#define TP_SK_AF_INET6 10
#define TP_SK_TCP 6
#define TP_SK_S_IFMT 00170000
#define TP_SK_S_IFSOCK 0140000

struct tp_sockinfo {
    u16 family;
    u16 type;
    u16 protocol;
    u8 state;
    u8 pad;
    u16 sport;
    u16 dport;
    u32 mark;
    u32 priority;
    u32 netns;
    u64 cookie;
    u32 saddr[4];
    u32 daddr[4];
} __attribute__((packed));

static __always_inline struct sock *tp_sk_from_fd(int fd)
{
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    struct files_struct *files = 0;
    struct fdtable *fdt = 0;
    struct file **fds = 0;
    struct file *f = 0;
    struct inode *ino = 0;
    struct socket *so = 0;
    struct sock *sk = 0;
    unsigned int max = 0;
    u16 mode = 0;
    if (fd < 0)
        return 0;
    bpf_probe_read_kernel(&files, sizeof(files), &task->files);
    if (!files)
        return 0;
    bpf_probe_read_kernel(&fdt, sizeof(fdt), &files->fdt);
    if (!fdt)
        return 0;
    bpf_probe_read_kernel(&max, sizeof(max), &fdt->max_fds);
    if ((unsigned int)fd >= max)
        return 0;
    bpf_probe_read_kernel(&fds, sizeof(fds), &fdt->fd);
    bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
    if (!f)
        return 0;
    bpf_probe_read_kernel(&ino, sizeof(ino), &f->f_inode);
    if (!ino)
        return 0;
    bpf_probe_read_kernel(&mode, sizeof(mode), &ino->i_mode);
    if ((mode & TP_SK_S_IFMT) != TP_SK_S_IFSOCK)
        return 0;
    bpf_probe_read_kernel(&so, sizeof(so), &f->private_data);
    if (!so)
        return 0;
    bpf_probe_read_kernel(&sk, sizeof(sk), &so->sk);
    return sk;
}

/* 1 when sk is a TCP socket of AF_INET/AF_INET6 and si was filled */
static __always_inline int tp_sk_info(struct sock *sk, struct tp_sockinfo *si)
{
    u16 family = 0, proto = 0, dport = 0;
    struct net *net = 0;
    if (!sk)
        return 0;
    __builtin_memset(si, 0, sizeof(*si));
    bpf_probe_read_kernel(&family, sizeof(family), &sk->__sk_common.skc_family);
    if (family != TP_SK_AF_INET && family != TP_SK_AF_INET6)
        return 0;
    bpf_probe_read_kernel(&proto, sizeof(proto), &sk->sk_protocol);
    if (proto != TP_SK_TCP)
        return 0;
    si->family = family;
    si->protocol = proto;
    bpf_probe_read_kernel(&si->type, sizeof(si->type), &sk->sk_type);
    bpf_probe_read_kernel(&si->state, 1, (void *)&sk->__sk_common.skc_state);
    bpf_probe_read_kernel(&si->sport, sizeof(si->sport), &sk->__sk_common.skc_num);
    bpf_probe_read_kernel(&dport, sizeof(dport), &sk->__sk_common.skc_dport);
    si->dport = __builtin_bswap16(dport);
    bpf_probe_read_kernel(&si->mark, sizeof(si->mark), &sk->sk_mark);
    bpf_probe_read_kernel(&si->priority, sizeof(si->priority), &sk->sk_priority);
    bpf_probe_read_kernel(&net, sizeof(net), &sk->__sk_common.skc_net.net);
    if (net)
        bpf_probe_read_kernel(&si->netns, sizeof(si->netns), &net->ns.inum);
    si->cookie = (u64)sk;
    if (family == TP_SK_AF_INET) {
        bpf_probe_read_kernel(&si->saddr[0], 4, &sk->__sk_common.skc_rcv_saddr);
        bpf_probe_read_kernel(&si->daddr[0], 4, &sk->__sk_common.skc_daddr);
    } else {
        bpf_probe_read_kernel(si->saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
        bpf_probe_read_kernel(si->daddr, 16, &sk->__sk_common.skc_v6_daddr);
    }
    return 1;
}
"""


def probe_c(hook: str, call: str, pending_map: str) -> dict[str, str]:
    """Tracepoint → statements that fill ``si`` and then run ``call`` (C that uses ``si`` and
    ``a``, e.g. ``tp_hook_3(args, a, 0, 0);``). ``pending_map`` names a BPF_HASH(u32 → u32) the
    caller declares for tcp_connect (thread → fd between enter and exit)."""
    run = ("struct tp_sockinfo si = {};\n"
           "if (tp_sk_info(sk, &si)) {\n    u64 a[6] = {};\n    a[0] = (u64)&si;\n"
           f"    {call}\n}}")
    if hook == "tcp_connect":
        return {
            "syscalls:sys_enter_connect":
                f"{{\n    u32 tid = (u32)bpf_get_current_pid_tgid();\n    u32 fd = (u32)args->fd;\n"
                f"    {pending_map}.update(&tid, &fd);\n}}",
            "syscalls:sys_exit_connect":
                f"{{\n    u32 tid = (u32)bpf_get_current_pid_tgid();\n"
                f"    u32 *fdp = {pending_map}.lookup(&tid);\n"
                f"    if (fdp) {{\n        int fd = (int)*fdp;\n        {pending_map}.delete(&tid);\n"
                f"        if (args->ret == 0 || args->ret == -115) {{\n"
                f"            struct sock *sk = tp_sk_from_fd(fd);\n"
                + "".join(f"            {line}\n" for line in run.splitlines())
                + "        }\n    }\n}",
        }
    if hook == "inet_csk_accept":
        body = ("{\n    if (args->ret >= 0) {\n        struct sock *sk = tp_sk_from_fd((int)args->ret);\n"
                + "".join(f"        {line}\n" for line in run.splitlines()) + "    }\n}")
        return {"syscalls:sys_exit_accept": body, "syscalls:sys_exit_accept4": body}
    if hook == "tcp_close":
        # the state change often runs in softirq (RST, timeouts, the peer's FIN): the socket's
        # owner (``pending_map``: sock → tgid, learnt where the process connects — the SYN_SENT
        # change runs in connect() — or accepts) is the event's process, in a[5]
        owner = pending_map
        accept = ("{\n    if (args->ret >= 0) {\n        u64 sk = (u64)tp_sk_from_fd((int)args->ret);\n"
                  "        u32 tg = bpf_get_current_pid_tgid() >> 32;\n"
                  f"        if (sk)\n            {owner}.update(&sk, &tg);\n    }}\n}}")
        return {"syscalls:sys_exit_accept": accept, "syscalls:sys_exit_accept4": accept,
                "sock:inet_sock_set_state": (
            "if (args->newstate == 2 && args->protocol == TP_SK_TCP) {\n"
            "    u64 sk = (u64)args->skaddr;\n    u32 tg = bpf_get_current_pid_tgid() >> 32;\n"
            f"    {owner}.update(&sk, &tg);\n}}\n"
            "if (args->newstate == 7 && args->protocol == TP_SK_TCP) {\n"
            "    struct sock *sk = (struct sock *)args->skaddr;\n"
            "    u64 key = (u64)sk;\n"
            f"    u32 *own = {owner}.lookup(&key);\n    u64 owner_tgid = own ? *own : 0;\n"
            f"    if (own)\n        {owner}.delete(&key);\n"
            "    struct tp_sockinfo si = {};\n"
            "    if (tp_sk_info(sk, &si)) {\n"
            "        si.state = 7;\n        si.sport = args->sport;\n        si.dport = args->dport;\n"
            "        if (si.family == TP_SK_AF_INET) {\n"
            "            __builtin_memcpy(si.saddr, args->saddr, 4);\n"
            "            __builtin_memcpy(si.daddr, args->daddr, 4);\n"
            "        } else {\n"
            "            __builtin_memcpy(si.saddr, args->saddr_v6, 16);\n"
            "            __builtin_memcpy(si.daddr, args->daddr_v6, 16);\n"
            "        }\n"
            "        u64 a[6] = {};\n        a[0] = (u64)&si;\n        a[5] = owner_tgid;\n"
            f"        {call}\n    }}\n}}")}
    raise SockFilterError(f"{hook!r} is not a socket hook tetrapipe serves ({', '.join(SOCK_HOOKS)})")


def _words(packed: bytes) -> list[int]:
    return [int.from_bytes(packed[i:i + 4], "little") for i in range(0, 16, 4)]


def _addr_cond(si: str, field: str, value: str) -> str:
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise SockFilterError(f"{value!r} is not an address or CIDR: {exc}") from exc
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None:
        net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{max(net.prefixlen - 96, 0)}")
    fam = 2 if net.version == 4 else 10
    addr = _words(net.network_address.packed.ljust(16, b"\0"))
    mask = _words(net.netmask.packed.ljust(16, b"\0"))
    parts = [f"{si}->family == {fam}"]
    for i in range(4 if fam == 10 else 1):
        if mask[i]:
            parts.append(f"({si}->{field}[{i}] & {mask[i]:#x}U) == {addr[i]:#x}U")
    return "(" + " && ".join(parts) + ")"


def _port_ranges(values: Sequence[str]) -> list[tuple[int, int]]:
    out = []
    for v in values:
        lo, sep, hi = str(v).partition(":")
        try:
            r = (int(lo, 0), int(hi, 0)) if sep else (int(lo, 0), int(lo, 0))
        except ValueError as exc:
            raise SockFilterError(f"{v!r} is not a port or lo:hi range") from exc
        if not 0 <= r[0] <= r[1] <= 65535:
            raise SockFilterError(f"{v!r} is not within 0-65535")
        out.append(r)
    return out


def _named(values: Sequence[str], names: dict[str, int], what: str) -> list[int]:
    out = []
    for v in values:
        v = str(v)
        if v in names:
            out.append(names[v])
            continue
        try:
            out.append(int(v, 0))
        except ValueError as exc:
            raise SockFilterError(f"{what} {v!r}: one of {', '.join(names)} or a number") from exc
    return out


def sock_cond(si: str, operator: str, values: Sequence[str]) -> str:
    """One socket filter → a C expression over ``struct tp_sockinfo *`` named ``si``."""
    if operator not in SOCK_OPERATORS:
        raise SockFilterError(f"operator {operator} does not apply to a sock argument "
                              f"({', '.join(sorted(SOCK_OPERATORS))})")
    neg = operator.startswith("Not")
    base = operator[3:] if neg else operator
    base = {"SportPriv": "SPortPriv"}.get(base, base)
    if base in ("SAddr", "DAddr"):
        if not values:
            raise SockFilterError(f"{operator} needs at least one address")
        field = "saddr" if base == "SAddr" else "daddr"
        expr = " || ".join(_addr_cond(si, field, v) for v in values)
    elif base in ("SPort", "DPort"):
        if not values:
            raise SockFilterError(f"{operator} needs at least one port")
        field = "sport" if base == "SPort" else "dport"
        expr = " || ".join(f"({si}->{field} == {lo})" if lo == hi else
                           f"({si}->{field} >= {lo} && {si}->{field} <= {hi})"
                           for lo, hi in _port_ranges(values))
    elif base in ("SPortPriv", "DPortPriv"):
        field = "sport" if base == "SPortPriv" else "dport"
        expr = f"{si}->{field} < 1024"
    elif base == "Protocol":
        expr = " || ".join(f"{si}->protocol == {p}" for p in _named(values, PROTOCOLS, "protocol"))
    elif base == "Family":
        expr = " || ".join(f"{si}->family == {f}" for f in _named(values, FAMILIES, "family"))
    else:  # State
        expr = " || ".join(f"{si}->state == {s}" for s in _named(values, TCP_STATES, "state"))
    if not expr:
        raise SockFilterError(f"{operator} needs at least one value")
    return f"!({expr})" if neg else f"({expr})"


def put_sock_c(index: int) -> str:
    """C that serialises the sock argument ``a[index]`` (a struct tp_sockinfo pointer) into the
    policy engine's hook record (bpf/policy.h tp_put_hdr; TP_ARG_SOCK, SOCKINFO layout)."""
    return (f"if (off <= TP_DATA_SIZE - 96) {{\n"
            f"    off = tp_put_hdr(b, off, {TP_ARG_SOCK}, 0, sizeof(struct tp_sockinfo), "
            f"sizeof(struct tp_sockinfo));\n"
            f"    bpf_probe_read_kernel(b->data + TP_BOUND(off, 0x1fff), sizeof(struct tp_sockinfo), "
            f"(void *)a[{index}]);\n"
            f"    b->e.nargs++;\n    off += sizeof(struct tp_sockinfo);\n}}")


SOCK_ARG_TYPES = frozenset({"sock"})
