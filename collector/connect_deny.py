"""Deny outbound connections in the kernel: cgroup/connect4 and cgroup/connect6 programs
(bpf/connect_deny.c) attached to a cgroup v2; a connect() a rule matches fails with EPERM
before any packet leaves.

This is the enforcement half of a TracingPolicy whose selector on a socket hook (``tcp_connect``,
``sys_connect``...) asks for ``Sigkill``/``Override``: the policy engine turns such a selector into
a :class:`ConnectRule` (:func:`rule_from_selector` reads Tetragon's socket matchArgs operators and
matchBinaries) and calls :meth:`ConnectDeny.set_rules`. The programs apply to every process in
the cgroups they are attached to (and their descendants): the cgroup2 root for a node-wide
policy, a pod's cgroup for a namespaced one.

    deny = ConnectDeny()                       # compiles and loads, attaches nowhere yet
    deny.attach("/sys/fs/cgroup/unified")      # the cgroup2 root on this machine
    deny.set_rules([ConnectRule(daddrs=["10.0.0.0/8"], dports=[(443, 443)])])
    deny.denied()                              # [count per rule]
    deny.close()

Every refusal is also a record (``REC_CONNECT_DENY``, bpf/records.h) in the programs' own ring
buffer ``cd_events``: the collector drains it into its record queue (``RingBufferDrain(deny.bpf,
queue, EVENTS_MAP, DROPS_MAP)``) and the enricher builds Tetragon's ``process_kprobe`` event
(``tcp_connect``, ``KPROBE_ACTION_OVERRIDE``) from it.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collector import loader

MAX_RULES = 16      # CD_MAX_RULES in bpf/connect_deny.c
MAX_ADDRS = 8
MAX_PORTS = 8
ATTACH_INET4_CONNECT = 10  # enum bpf_attach_type
ATTACH_INET6_CONNECT = 11
PROG_CGROUP_SOCK_ADDR = 18
EVENTS_MAP = "cd_events"   # ring buffer of tp_connect_deny records
DROPS_MAP = "cd_drops"     # records that did not fit in it

FAMILIES = {"AF_INET": socket.AF_INET, "AF_INET6": socket.AF_INET6}
PROTOCOLS = {"IPPROTO_TCP": socket.IPPROTO_TCP, "IPPROTO_UDP": socket.IPPROTO_UDP,
             "IPPROTO_SCTP": 132, "IPPROTO_MPTCP": 262}
# operators this enforcement serves; others in a deny selector are refused (RuleError)
SOCK_OPERATORS = frozenset({"DAddr", "NotDAddr", "DPort", "NotDPort", "DPortPriv", "NotDPortPriv",
                            "Protocol", "Family"})


def _link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    """libbpf's bpf_link_create (in libbcc): the link fd, or -errno."""
    from bcc.libbcc import lib

    fn = lib.bpf_link_create
    fn.restype = ct.c_int
    fn.argtypes = [ct.c_int, ct.c_int, ct.c_int, ct.c_void_p]
    r = fn(prog_fd, target_fd, attach_type, None)
    return r if r >= 0 else -(ct.get_errno() or -r)


class RuleError(ValueError):
    """A selector that cannot become a connect rule, with the reason."""


@dataclass
class ConnectRule:
    """Refuse a connect when every condition set here holds (an empty rule refuses all)."""

    family: int = 0                                       # 0 any, AF_INET, AF_INET6
    protocol: int = 0                                     # 0 any, IPPROTO_*
    daddrs: list[str] = field(default_factory=list)       # addresses or CIDRs
    not_daddrs: bool = False                              # NotDAddr: outside all of them
    dports: list[tuple[int, int]] = field(default_factory=list)  # inclusive ranges
    not_dports: bool = False
    dport_priv: int = 0                                   # 1 DPortPriv (<1024), 2 NotDPortPriv
    binaries: list[str] = field(default_factory=list)     # executable paths
    not_binaries: bool = False                            # NotIn: any binary but these
    # what the refusal's record (REC_CONNECT_DENY) names: the policy (its catalog id), the hook and
    # selector, the action; post=False (NoPost) refuses without a record
    policy_id: int = 0
    hook_id: int = 0
    selector: int = 0
    action: int = 5                                       # KprobeAction Override
    post: bool = True
    error: int = -1                                       # connect() returns it (argError): -EPERM

    def check(self) -> None:
        if len(self.daddrs) > MAX_ADDRS:
            raise RuleError(f"{len(self.daddrs)} addresses, at most {MAX_ADDRS} per rule")
        if len(self.dports) > MAX_PORTS:
            raise RuleError(f"{len(self.dports)} port ranges, at most {MAX_PORTS} per rule")
        for a in self.daddrs:
            try:
                ipaddress.ip_network(a, strict=False)
            except ValueError as exc:
                raise RuleError(f"address {a!r}: {exc}") from exc
        for lo, hi in self.dports:
            if not 0 <= lo <= hi <= 65535:
                raise RuleError(f"port range {lo}:{hi} is not within 0-65535")
        if not -4095 <= self.error <= -1:
            raise RuleError(f"argError {self.error}: a refused connect returns an error, -4095..-1")
        _binary_keys(0, self.binaries)


class _Cidr(ct.Structure):
    _fields_ = [("family", ct.c_uint32), ("addr", ct.c_uint32 * 4), ("mask", ct.c_uint32 * 4)]


class _Rule(ct.Structure):
    _fields_ = [("used", ct.c_uint32), ("family", ct.c_uint32), ("protocol", ct.c_uint32),
                ("naddrs", ct.c_uint32), ("addr_negate", ct.c_uint32), ("nports", ct.c_uint32),
                ("port_negate", ct.c_uint32), ("port_priv", ct.c_uint32),
                ("binary_mode", ct.c_uint32), ("pad", ct.c_uint32),
                ("addrs", _Cidr * MAX_ADDRS), ("port_lo", ct.c_uint16 * MAX_PORTS),
                ("port_hi", ct.c_uint16 * MAX_PORTS), ("policy_id", ct.c_uint32),
                ("hook_id", ct.c_uint16), ("selector", ct.c_uint8), ("action", ct.c_uint8),
                ("post", ct.c_uint32), ("error", ct.c_int32)]


class _BinKey(ct.Structure):
    _fields_ = [("rule", ct.c_uint32), ("dev", ct.c_uint32), ("ino", ct.c_uint64)]


def _words(packed: bytes) -> list[int]:
    """16 bytes (an address in network order) → four u32 as the kernel reads them from memory."""
    return [int.from_bytes(packed[i:i + 4], "little") for i in range(0, 16, 4)]


def _cidr(text: str) -> _Cidr:
    net = ipaddress.ip_network(text, strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None:
        net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{max(net.prefixlen - 96, 0)}")
    c = _Cidr()
    c.family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    addr = net.network_address.packed.ljust(16, b"\0")
    mask = net.netmask.packed.ljust(16, b"\0")
    for i, (a, m) in enumerate(zip(_words(addr), _words(mask), strict=True)):
        c.addr[i] = a
        c.mask[i] = m
    return c


def kernel_dev(st_dev: int) -> int:
    """stat's st_dev → the kernel's internal s_dev encoding (MAJOR << 20 | MINOR)."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def _binary_keys(index: int, paths: Iterable[str]) -> list[_BinKey]:
    keys = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError as exc:
            raise RuleError(f"binary {p!r}: {exc.strerror}") from exc
        keys.append(_BinKey(index, kernel_dev(st.st_dev), st.st_ino))
    return keys


def _port_values(values: Sequence[str]) -> list[tuple[int, int]]:
    out = []
    for v in values:
        lo, _, hi = str(v).partition(":")
        try:
            out.append((int(lo), int(hi or lo)))
        except ValueError as exc:
            raise RuleError(f"port {v!r} is not a number or lo:hi range") from exc
    return out


def _named(values: Sequence[str], names: dict[str, int], what: str) -> int:
    if len(values) != 1:
        raise RuleError(f"{what}: one value expected for an enforced connect rule, got {len(values)}")
    v = str(values[0])
    if v in names:
        return names[v]
    try:
        return int(v)
    except ValueError as exc:
        raise RuleError(f"{what}: unknown value {v!r} (one of {', '.join(names)} or a number)") from exc


def rule_from_selector(match_args: Iterable[Any], match_binaries: Iterable[Any] = ()) -> ConnectRule:
    """A selector's socket filters → a rule. ``match_args`` items have ``operator`` and ``values``
    (the policy model's ArgFilter; the argument index is the hook's sock/sockaddr argument),
    ``match_binaries`` items ``operator`` (In/NotIn) and ``values`` (paths)."""
    rule = ConnectRule()
    for f in match_args:
        op, values = f.operator, [str(v) for v in f.values]
        if op in ("DAddr", "NotDAddr"):
            if rule.daddrs:
                raise RuleError("DAddr and NotDAddr in one selector cannot be enforced together")
            rule.daddrs, rule.not_daddrs = values, op == "NotDAddr"
        elif op in ("DPort", "NotDPort"):
            if rule.dports:
                raise RuleError("DPort and NotDPort in one selector cannot be enforced together")
            rule.dports, rule.not_dports = _port_values(values), op == "NotDPort"
        elif op in ("DPortPriv", "NotDPortPriv"):
            rule.dport_priv = 1 if op == "DPortPriv" else 2
        elif op == "Family":
            rule.family = _named(values, FAMILIES, "Family")
        elif op == "Protocol":
            rule.protocol = _named(values, PROTOCOLS, "Protocol")
        else:
            raise RuleError(f"operator {op} cannot be enforced at connect (served: "
                            f"{', '.join(sorted(SOCK_OPERATORS))})")
    bins = list(match_binaries)
    if len(bins) > 1:
        raise RuleError("one matchBinaries entry per enforced connect selector")
    for b in bins:
        if b.operator not in ("In", "NotIn"):
            raise RuleError(f"matchBinaries operator {b.operator} cannot be enforced at connect "
                            "(In, NotIn)")
        rule.binaries, rule.not_binaries = [str(v) for v in b.values], b.operator == "NotIn"
    rule.check()
    return rule


CGROUP2_CANDIDATES = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")


def cgroup2_root() -> Path | None:
    """The cgroup v2 root: /sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified on hybrid."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        mounts = []
    for line in mounts:
        parts = line.split()
        if len(parts) > 2 and parts[2] == "cgroup2" and parts[1] in CGROUP2_CANDIDATES:
            return Path(parts[1])
    return None


class ConnectDeny:
    """The loaded connect4/connect6 programs, their rules and the cgroups they are attached to."""

    def __init__(self) -> None:
        from bcc import BPF  # only the collector needs bcc

        loader.prepare()
        self.bpf = loader.load_program("connect_deny.c")
        self._fn4 = self.bpf.load_func("cd_connect4", BPF.CGROUP_SOCK_ADDR,
                                       attach_type=ATTACH_INET4_CONNECT)
        self._fn6 = self.bpf.load_func("cd_connect6", BPF.CGROUP_SOCK_ADDR,
                                       attach_type=ATTACH_INET6_CONNECT)
        self._attached: dict[str, list[int]] = {}
        self.rules: list[ConnectRule] = []

    def attach(self, cgroup: str | Path) -> None:
        """Enforce on the processes of a cgroup v2 directory and its descendants.

        Attached through BPF links: the attachment lives only as long as this process holds
        the link descriptors, so a crashed collector never leaves connects refused behind it."""
        key = str(cgroup)
        if key in self._attached:
            return
        fd = os.open(key, os.O_RDONLY | os.O_DIRECTORY)
        links: list[int] = []
        try:
            for fn, kind in ((self._fn4, ATTACH_INET4_CONNECT), (self._fn6, ATTACH_INET6_CONNECT)):
                link = _link_create(fn.fd, fd, kind)
                if link < 0:
                    raise OSError(-link, f"BPF link to {key}: {os.strerror(-link)}")
                links.append(link)
        except Exception:
            for link in links:
                os.close(link)
            raise
        finally:
            os.close(fd)
        self._attached[key] = links

    def detach(self, cgroup: str | Path) -> None:
        for link in self._attached.pop(str(cgroup), []):
            os.close(link)

    def set_rules(self, rules: Sequence[ConnectRule]) -> None:
        """Replace the rules. Checked first: on a RuleError the loaded rules stay as they were."""
        if len(rules) > MAX_RULES:
            raise RuleError(f"{len(rules)} connect rules, at most {MAX_RULES}")
        built: list[tuple[_Rule, list[_BinKey]]] = []
        for i, r in enumerate(rules):
            r.check()
            k = _Rule()
            k.used, k.family, k.protocol = 1, r.family, r.protocol
            k.naddrs, k.addr_negate = len(r.daddrs), int(r.not_daddrs)
            for j, a in enumerate(r.daddrs):
                k.addrs[j] = _cidr(a)
            k.nports, k.port_negate, k.port_priv = len(r.dports), int(r.not_dports), r.dport_priv
            for j, (lo, hi) in enumerate(r.dports):
                k.port_lo[j], k.port_hi[j] = lo, hi
            keys = _binary_keys(i, r.binaries) if r.binaries else []
            k.binary_mode = 0 if not r.binaries else (2 if r.not_binaries else 1)
            k.policy_id, k.hook_id, k.selector = r.policy_id, r.hook_id, min(r.selector, 255)
            k.action, k.post, k.error = r.action, int(r.post), r.error
            built.append((k, keys))
        table, bins = self.bpf["cd_rules"], self.bpf["cd_binaries"]
        # turn everything off first (rule 0 unused stops the scan), then fill back to front
        table[ct.c_int(0)] = _Rule()
        bins.clear()
        for i in range(len(built), MAX_RULES):
            table[ct.c_int(i)] = _Rule()
        for i in range(len(built) - 1, -1, -1):
            k, keys = built[i]
            for bk in keys:
                bins[bk] = ct.c_uint8(1)
            table[ct.c_int(i)] = k
        self.bpf["cd_denied"].clear()
        self.rules = list(rules)

    def denied(self) -> list[int]:
        """Connects refused so far, per rule (since the last set_rules)."""
        table = self.bpf["cd_denied"]
        return [sum(table[ct.c_int(i)]) for i in range(len(self.rules))]

    def close(self) -> None:
        for cg in list(self._attached):
            self.detach(cg)
        self.bpf.cleanup()
