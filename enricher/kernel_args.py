"""Typed kernel-object arguments of hook records (bpf/kargs.h) → Tetragon's KprobeArgument members,
as Tetragon's agent renders them (pkg/grpc/tracing getKprobeArgument):

| record kind | KprobeArgument member | Tetragon message |
| --- | --- | --- |
| ARG_CRED | ``process_credentials_arg`` | ProcessCredentials (ids, securebits, caps, user_ns) |
| ARG_KERNEL_CAP, CAP_INH, CAP_PRM, CAP_EFF | ``kernel_cap_t_arg``, ``cap_*_arg`` | 16 hex digits |
| ARG_USER_NS | ``user_ns_arg`` | UserNamespace (level, uid, gid, ns; is_host at level 0) |
| ARG_BPF_ATTR | ``bpf_attr_arg`` | KprobeBpfAttr (ProgType, InsnCnt, ProgName) |
| ARG_PERF_EVENT | ``perf_event_arg`` | KprobePerfEvent (KprobeFunc, Type, Config, ProbeOffset) |
| ARG_BPF_MAP | ``bpf_map_arg`` | KprobeBpfMap (MapType, KeySize, ValueSize, MaxEntries, MapName) |
| ARG_MODULE | ``module_arg`` | KernelModule (name, signature_ok for load_info, tainted) |
| ARG_SOCKADDR | ``sockaddr_arg`` | KprobeSockaddr (family, addr, port) |
| ARG_SKB | ``skb_arg`` | KprobeSkb |
| ARG_BINPRM | ``linux_binprm_arg`` | KprobeLinuxBinprm (path, permission, flags) |
| ARG_FILE, ARG_PATH | ``file_arg``, ``path_arg`` | KprobeFile/KprobePath (path, permission, flags) |

``permission`` is the inode's mode as ``ls -l`` prints it (Tetragon's FilePathModeToStr), present
where the record carries it (ARGF_MODE: kernel functions and LSM hooks); ``flags`` is
``unresolvedPathComponents`` where the bounded path walk was cut (Tetragon's flag of the same
meaning).
| ARG_CAPABILITY | ``capability_arg`` | KprobeCapability (value, name) |
"""

from __future__ import annotations

import stat
from typing import Any

from bpf import records as r
from bpf.names import CAPABILITIES
from enricher.event_builder import securebits_names
from enricher.network_events import FAMILY, PROTOCOL, address
from schemas import capabilities

CAP_MEMBER = {r.ARG_KERNEL_CAP: "kernel_cap_t_arg", r.ARG_CAP_INH: "cap_inheritable_arg",
              r.ARG_CAP_PRM: "cap_permitted_arg", r.ARG_CAP_EFF: "cap_effective_arg"}

# uapi/linux/bpf.h enum bpf_prog_type / bpf_map_type, uapi/linux/perf_event.h perf_type_id
PROG_TYPES = [
    "UNSPEC", "SOCKET_FILTER", "KPROBE", "SCHED_CLS", "SCHED_ACT", "TRACEPOINT", "XDP", "PERF_EVENT",
    "CGROUP_SKB", "CGROUP_SOCK", "LWT_IN", "LWT_OUT", "LWT_XMIT", "SOCK_OPS", "SK_SKB", "CGROUP_DEVICE",
    "SK_MSG", "RAW_TRACEPOINT", "CGROUP_SOCK_ADDR", "LWT_SEG6LOCAL", "LIRC_MODE2", "SK_REUSEPORT",
    "FLOW_DISSECTOR", "CGROUP_SYSCTL", "RAW_TRACEPOINT_WRITABLE", "CGROUP_SOCKOPT", "TRACING",
    "STRUCT_OPS", "EXT", "LSM", "SK_LOOKUP", "SYSCALL",
]
MAP_TYPES = [
    "UNSPEC", "HASH", "ARRAY", "PROG_ARRAY", "PERF_EVENT_ARRAY", "PERCPU_HASH", "PERCPU_ARRAY",
    "STACK_TRACE", "CGROUP_ARRAY", "LRU_HASH", "LRU_PERCPU_HASH", "LPM_TRIE", "ARRAY_OF_MAPS",
    "HASH_OF_MAPS", "DEVMAP", "SOCKMAP", "CPUMAP", "XSKMAP", "SOCKHASH", "CGROUP_STORAGE",
    "REUSEPORT_SOCKARRAY", "PERCPU_CGROUP_STORAGE", "QUEUE", "STACK", "SK_STORAGE", "DEVMAP_HASH",
    "STRUCT_OPS", "RINGBUF", "INODE_STORAGE", "TASK_STORAGE", "BLOOM_FILTER",
]
PERF_TYPES = ["PERF_TYPE_HARDWARE", "PERF_TYPE_SOFTWARE", "PERF_TYPE_TRACEPOINT", "PERF_TYPE_HW_CACHE",
              "PERF_TYPE_RAW", "PERF_TYPE_BREAKPOINT", "PERF_TYPE_MAX"]
# Tetragon's TaintedBitsType: the kernel's TAINT_* bits it names
TAINTS = [(1 << 0, "TAINT_PROPRIETARY_MODULE"), (1 << 1, "TAINT_FORCED_MODULE"),
          (1 << 2, "TAINT_FORCED_UNLOAD_MODULE"), (1 << 10, "TAINT_STAGED_MODULE"),
          (1 << 12, "TAINT_OUT_OF_TREE_MODULE"), (1 << 13, "TAINT_UNSIGNED_MODULE"),
          (1 << 15, "TAINT_KERNEL_LIVE_PATCH_MODULE"), (1 << 18, "TAINT_TEST_MODULE")]

KINDS = frozenset({r.ARG_CRED, r.ARG_USER_NS, r.ARG_BPF_ATTR, r.ARG_PERF_EVENT, r.ARG_BPF_MAP, r.ARG_MODULE,
                   r.ARG_SOCKADDR, r.ARG_SKB, r.ARG_BINPRM, r.ARG_CAPABILITY, *CAP_MEMBER})


def _name(table: list[str], prefix: str, v: int) -> str:
    return prefix + table[v] if v < len(table) else str(v)


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


def _fixed(st: Any, data: bytes) -> tuple[Any, ...]:
    return st.unpack_from(data.ljust(st.size, b"\0"))


def user_ns(data: bytes) -> dict[str, Any]:
    level, uid, gid, inum = _fixed(r.USERNS_ARG, data)
    return {"level": level, "uid": uid, "gid": gid, "ns": {"inum": inum, "is_host": level == 0}}


def cred(data: bytes) -> dict[str, Any]:
    *ids, securebits, _pad, permitted, effective, inheritable = _fixed(r.CRED_ARG, data)
    out: dict[str, Any] = dict(zip(("uid", "gid", "euid", "egid", "suid", "sgid", "fsuid", "fsgid"), ids,
                                   strict=True))
    out["securebits"] = securebits_names(securebits)
    out["caps"] = capabilities.masks(permitted, effective, inheritable)
    out["user_ns"] = user_ns(data[r.CRED_ARG.size:])
    return out


def module(data: bytes) -> dict[str, Any]:
    flags, _pad, taints, name = _fixed(r.MODULE_ARG, data)
    out: dict[str, Any] = {"name": _cstr(name), "tainted": [n for bit, n in TAINTS if taints & bit]}
    if flags & r.MODULE_SIG_KNOWN:
        out["signature_ok"] = bool(flags & r.MODULE_SIG_OK)
    return out


def skb(data: bytes) -> dict[str, Any]:
    hash_, length, prio, mark, sport, dport, proto, sp_len, sp_olen, family, _pad, saddr, daddr = \
        _fixed(r.SKB_ARG, data)
    return {"hash": hash_, "len": length, "priority": prio, "mark": mark,
            "saddr": address(family, saddr) if family in FAMILY else "",
            "daddr": address(family, daddr) if family in FAMILY else "",
            "sport": sport, "dport": dport, "proto": proto, "sec_path_len": sp_len, "sec_path_olen": sp_olen,
            "protocol": PROTOCOL.get(proto, "") if family in FAMILY else "", "family": FAMILY.get(family, "")}


def sockaddr(data: bytes) -> dict[str, Any]:
    family, port, _pad, addr = _fixed(r.SOCKADDR_ARG, data)
    return {"family": FAMILY.get(family, str(family) if family else ""),
            "addr": address(family, addr) if family in FAMILY else "", "port": port}


# S_IFMT type → Tetragon's first letter (none for an unknown type)
FILE_TYPE_CHAR = {stat.S_IFBLK: "b", stat.S_IFCHR: "c", stat.S_IFDIR: "d", stat.S_IFIFO: "p", stat.S_IFLNK: "l",
                  stat.S_IFREG: "-", stat.S_IFSOCK: "s"}


def permission(mode: int) -> str:
    """``-rwxr-xr-x``, ``drwxrwxrwt``, ``-rwsr-xr-x`` ... as Tetragon renders an inode mode."""
    return FILE_TYPE_CHAR.get(stat.S_IFMT(mode), "") + stat.filemode(mode)[1:]


def path_object(a: r.HookArg) -> dict[str, Any]:
    """KprobeFile / KprobePath / KprobeLinuxBinprm of a path-valued argument."""
    out: dict[str, Any] = {}
    if a.mode:
        out["permission"] = permission(a.mode)
    if a.flags & r.ARGF_TRUNC:
        out["flags"] = "unresolvedPathComponents"
    out["path"] = a.data.decode("utf-8", "backslashreplace")
    return out


def typed(a: r.HookArg) -> tuple[str, Any]:
    """(KprobeArgument member, its value) of a typed kernel-object argument."""
    t, d = a.type, a.data
    if t in CAP_MEMBER:
        caps = int.from_bytes(d[:8].ljust(8, b"\0"), "little")
        return CAP_MEMBER[t], f"{caps:016x}"
    if t == r.ARG_CRED:
        return "process_credentials_arg", cred(d)
    if t == r.ARG_USER_NS:
        return "user_ns_arg", user_ns(d)
    if t == r.ARG_BPF_ATTR:
        prog_type, insn_cnt, name = _fixed(r.BPF_ATTR_ARG, d)
        return "bpf_attr_arg", {"ProgType": _name(PROG_TYPES, "BPF_PROG_TYPE_", prog_type),
                                "InsnCnt": insn_cnt, "ProgName": _cstr(name)}
    if t == r.ARG_PERF_EVENT:
        config, offset, ptype, _pad, func = _fixed(r.PERF_EVENT_ARG, d)
        return "perf_event_arg", {"KprobeFunc": _cstr(func), "Type": _name(PERF_TYPES, "", ptype),
                                  "Config": config, "ProbeOffset": offset}
    if t == r.ARG_BPF_MAP:
        mtype, ksize, vsize, entries, name = _fixed(r.BPF_MAP_ARG, d)
        return "bpf_map_arg", {"MapType": _name(MAP_TYPES, "BPF_MAP_TYPE_", mtype), "KeySize": ksize,
                               "ValueSize": vsize, "MaxEntries": entries, "MapName": _cstr(name)}
    if t == r.ARG_MODULE:
        return "module_arg", module(d)
    if t == r.ARG_SOCKADDR:
        return "sockaddr_arg", sockaddr(d)
    if t == r.ARG_SKB:
        return "skb_arg", skb(d)
    if t == r.ARG_CAPABILITY:
        cap = int.from_bytes(d[:4].ljust(4, b"\0"), "little", signed=True)
        return "capability_arg", {"value": cap, "name": CAPABILITIES[cap] if 0 <= cap < len(CAPABILITIES) else ""}
    assert t == r.ARG_BINPRM
    return "linux_binprm_arg", path_object(a)
