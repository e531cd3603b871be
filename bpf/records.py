"""Python mirror of ``records.h``: decode (enricher) and encode (collector's /proc bootstrap).

The layout id is a hash of ``records.h``; ``tests/test_records_layout.py`` compiles the header
with the C compiler and checks every offset below against ``offsetof``.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path

HEADER_FILE = Path(__file__).with_name("records.h")

REC_EXEC = 1
REC_EXIT = 2
REC_FORK = 3
REC_PROCFS = 4
REC_HOOK = 5
REC_POLICY = 6

F_TRUNC_FILENAME = 1 << 0
F_TRUNC_ARGS = 1 << 1
F_TRUNC_CWD = 1 << 2
F_ERR_ARGS = 1 << 3
F_ERR_CWD = 1 << 4
F_ROOT_CWD = 1 << 5
F_ERR_FILENAME = 1 << 6
F_NO_MM = 1 << 7

NS_NAMES = (
    "uts", "ipc", "mnt", "pid", "pid_for_children",
    "net", "time", "time_for_children", "cgroup", "user",
)

PATH_MAX = 4096
ARGS_MAX = 4096
CGNAME_MAX = 128
CG_ANCESTORS = 3

HEADER = struct.Struct("<HHIIIQ")
EXEC_FIXED = struct.Struct("<IIQQQ" + "I" * 10 + "QQQ" + "I" * 10 + "IIQII16sHHHHH")
EXIT_BODY = struct.Struct("<IIQ")
FORK_BODY = struct.Struct("<IIQQ")

EXEC_SIZE = HEADER.size + EXEC_FIXED.size
EXIT_SIZE = HEADER.size + EXIT_BODY.size
FORK_SIZE = HEADER.size + FORK_BODY.size


def layout_id() -> str:
    """16 hex digits naming this layout; shipped with every raw batch."""
    text = b"\n".join(line.rstrip() for line in HEADER_FILE.read_bytes().splitlines())
    return hashlib.sha256(text).hexdigest()[:16]


class RecordError(ValueError):
    """A raw record that does not match the layout."""


@dataclass(slots=True)
class Header:
    kind: int
    version: int
    size: int
    pid: int
    tid: int
    ktime: int


@dataclass(slots=True)
class ExecRecord:
    header: Header
    ppid: int
    flags: int
    start_time: int
    parent_start_time: int
    cgroup_id: int
    uid: int
    gid: int
    euid: int
    egid: int
    suid: int
    sgid: int
    fsuid: int
    fsgid: int
    auid: int
    securebits: int
    cap_permitted: int
    cap_effective: int
    cap_inheritable: int
    ns: tuple[int, ...]
    user_ns_level: int
    nspid: int
    exe_ino: int
    exe_nlink: int
    exe_mode: int
    comm: bytes
    filename: bytes
    args: bytes
    cwd: bytes
    cgroup_name: bytes
    cgroup_ancestors: bytes = b""   # parent, grandparent, ... cgroup names, NUL separated


@dataclass(slots=True)
class ExitRecord:
    header: Header
    exit_code: int
    ppid: int
    start_time: int


@dataclass(slots=True)
class ForkRecord:
    header: Header
    ppid: int
    flags: int
    start_time: int
    cgroup_id: int


@dataclass(slots=True)
class HookRecord:
    """A policy hook record: its body is decoded by the policy's own argument layout."""

    header: Header
    body: bytes = field(repr=False)


# ---- sensors (collector/sensors/): records.h's tp_sock and tp_loader --------------------------
REC_SOCK = 20
REC_LOADER = 21
SOCK_CONNECT = 1
SOCK_ACCEPT = 2
SOCK_CLOSE = 3
SOCK_UDP_SEND = 4
LOADER_BUILDID_MAX = 20
SOCK_BODY = struct.Struct("<BBHHHHHIIIIQ16s16s")
SOCK_SIZE = HEADER.size + SOCK_BODY.size
LOADER_FIXED = struct.Struct("<QIIQQB20sBH")
LOADER_SIZE = HEADER.size + LOADER_FIXED.size


@dataclass(slots=True)
class SockRecord:
    header: Header
    op: int
    state: int
    family: int
    type: int
    protocol: int
    sport: int
    dport: int
    netns: int
    mark: int
    priority: int
    pad: int
    cookie: int
    saddr: bytes
    daddr: bytes


@dataclass(slots=True)
class LoaderRecord:
    header: Header
    ino: int
    dev: int
    flags: int
    pgoff: int
    addr: int
    buildid: bytes
    path: bytes


def _decode_loader(h: Header, buf: bytes) -> LoaderRecord:
    if len(buf) < LOADER_SIZE:
        raise RecordError(f"loader record has {len(buf)} bytes, layout needs at least {LOADER_SIZE}")
    ino, dev, flags, pgoff, addr, blen, bid, _pad, plen = LOADER_FIXED.unpack_from(buf, HEADER.size)
    if blen > LOADER_BUILDID_MAX:
        raise RecordError(f"loader record build id length {blen} > {LOADER_BUILDID_MAX}")
    if LOADER_SIZE + plen != len(buf):
        raise RecordError("loader record path length does not add up to its size")
    return LoaderRecord(h, ino, dev, flags, pgoff, addr, bid[:blen], bytes(buf[LOADER_SIZE:]))


def encode_sock(pid: int, tid: int, ktime: int, op: int, state: int, family: int, sport: int,
                dport: int, saddr: bytes, daddr: bytes, cookie: int, netns: int = 0,
                type_: int = 1, protocol: int = 6) -> bytes:
    """Pack a tp_sock record (tests and benchmarks drive the enricher with it)."""
    return HEADER.pack(REC_SOCK, 1, SOCK_SIZE, pid, tid, ktime) + SOCK_BODY.pack(
        op, state, family, type_, protocol, sport, dport, netns, 0, 0, 0, cookie,
        saddr.ljust(16, b"\0"), daddr.ljust(16, b"\0"))


def encode_loader(pid: int, tid: int, ktime: int, path: bytes, ino: int = 0, buildid: bytes = b"",
                  dev: int = 0, pgoff: int = 0, addr: int = 0) -> bytes:
    size = LOADER_SIZE + len(path)
    return HEADER.pack(REC_LOADER, 1, size, pid, tid, ktime) + LOADER_FIXED.pack(
        ino, dev, 0, pgoff, addr, len(buildid), buildid.ljust(20, b"\0"), 0, len(path)) + path


# ---- connect enforcement (bpf/connect_deny.c): records.h's tp_connect_deny -------------------
REC_CONNECT_DENY = 22
CONNECT_DENY_BODY = struct.Struct("<IHBBiBBHHHHHIIIQ16s16s")
CONNECT_DENY_SIZE = HEADER.size + CONNECT_DENY_BODY.size


@dataclass(slots=True)
class ConnectDenyRecord:
    header: Header
    policy_id: int
    hook_id: int
    selector: int
    action: int
    ret: int
    state: int
    pad: int
    family: int
    type: int
    protocol: int
    sport: int
    dport: int
    netns: int
    mark: int
    priority: int
    cookie: int
    saddr: bytes
    daddr: bytes


def encode_connect_deny(pid: int, tid: int, ktime: int, policy_id: int, hook_id: int, family: int,
                        dport: int, daddr: bytes, saddr: bytes = b"", sport: int = 0,
                        selector: int = 0, action: int = 5, ret: int = -1, state: int = 7,
                        type_: int = 1, protocol: int = 6, netns: int = 0, cookie: int = 0) -> bytes:
    """Pack a tp_connect_deny record (tests and benchmarks drive the enricher with it)."""
    return HEADER.pack(REC_CONNECT_DENY, 1, CONNECT_DENY_SIZE, pid, tid, ktime) + CONNECT_DENY_BODY.pack(
        policy_id, hook_id, selector, action, ret, state, 0, family, type_, protocol, sport, dport,
        netns, 0, 0, cookie, saddr.ljust(16, b"\0"), daddr.ljust(16, b"\0"))


@dataclass(slots=True)
class PolicyRecord:
    """A policy catalog entry made by the collector (JSON body, see records.h)."""

    header: Header
    body: bytes = field(repr=False)


Record = (ExecRecord | ExitRecord | ForkRecord | HookRecord | PolicyRecord | SockRecord | LoaderRecord
          | ConnectDenyRecord)


def decode(buf: bytes) -> Record:
    """Decode one record; raises RecordError on anything that does not fit the layout."""
    if len(buf) < HEADER.size:
        raise RecordError(f"record of {len(buf)} bytes is shorter than the header")
    h = Header(*HEADER.unpack_from(buf, 0))
    if h.size != len(buf):
        raise RecordError(f"header says {h.size} bytes, record has {len(buf)}")
    if h.version != 1:
        raise RecordError(f"record version {h.version} is not 1")
    if h.kind in (REC_EXEC, REC_PROCFS):
        return _decode_exec(h, buf)
    if h.kind == REC_EXIT:
        _need(buf, EXIT_SIZE, "exit")
        return ExitRecord(h, *EXIT_BODY.unpack_from(buf, HEADER.size))
    if h.kind == REC_FORK:
        _need(buf, FORK_SIZE, "fork")
        return ForkRecord(h, *FORK_BODY.unpack_from(buf, HEADER.size))
    if h.kind == REC_HOOK:
        return HookRecord(h, bytes(buf[HEADER.size:]))
    if h.kind == REC_POLICY:
        return PolicyRecord(h, bytes(buf[HEADER.size:]))
    if h.kind == REC_SOCK:
        _need(buf, SOCK_SIZE, "sock")
        return SockRecord(h, *SOCK_BODY.unpack_from(buf, HEADER.size))
    if h.kind == REC_LOADER:
        return _decode_loader(h, buf)
    if h.kind == REC_CONNECT_DENY:
        _need(buf, CONNECT_DENY_SIZE, "connect deny")
        return ConnectDenyRecord(h, *CONNECT_DENY_BODY.unpack_from(buf, HEADER.size))
    raise RecordError(f"unknown record kind {h.kind}")


def _need(buf: bytes, size: int, what: str) -> None:
    if len(buf) != size:
        raise RecordError(f"{what} record has {len(buf)} bytes, layout needs {size}")


def _decode_exec(h: Header, buf: bytes) -> ExecRecord:
    if len(buf) < EXEC_SIZE:
        raise RecordError(f"exec record has {len(buf)} bytes, layout needs at least {EXEC_SIZE}")
    v = EXEC_FIXED.unpack_from(buf, HEADER.size)
    flen, alen, clen, glen, nlen = v[-5:]
    if EXEC_SIZE + flen + alen + clen + glen + nlen != len(buf):
        raise RecordError("exec record string lengths do not add up to its size")
    o = EXEC_SIZE
    filename = bytes(buf[o:o + flen])
    o += flen
    args = bytes(buf[o:o + alen])
    o += alen
    cwd = bytes(buf[o:o + clen])
    o += clen
    cgname = bytes(buf[o:o + glen])
    o += glen
    ancestors = bytes(buf[o:o + nlen])
    return ExecRecord(
        h, *v[0:18], tuple(v[18:28]), *v[28:33],
        v[33].split(b"\0", 1)[0], filename, args, cwd, cgname, ancestors,
    )


def encode_exec(rec: ExecRecord) -> bytes:
    """Pack an exec/procfs record (the collector's /proc bootstrap uses this)."""
    filename = rec.filename[: PATH_MAX - 1]
    args = rec.args[: ARGS_MAX - 1]
    cwd = rec.cwd[: PATH_MAX - 1]
    cgname = rec.cgroup_name[: CGNAME_MAX - 1]
    ancestors = b"\0".join(n[: CGNAME_MAX - 1] for n in rec.cgroup_ancestors.split(b"\0")[:CG_ANCESTORS])
    size = EXEC_SIZE + len(filename) + len(args) + len(cwd) + len(cgname) + len(ancestors)
    h = rec.header
    return (
        HEADER.pack(h.kind, 1, size, h.pid, h.tid, h.ktime)
        + EXEC_FIXED.pack(
            rec.ppid, rec.flags, rec.start_time, rec.parent_start_time, rec.cgroup_id,
            rec.uid, rec.gid, rec.euid, rec.egid, rec.suid, rec.sgid, rec.fsuid, rec.fsgid,
            rec.auid, rec.securebits, rec.cap_permitted, rec.cap_effective, rec.cap_inheritable,
            *rec.ns, rec.user_ns_level, rec.nspid, rec.exe_ino, rec.exe_nlink, rec.exe_mode,
            rec.comm[:16], len(filename), len(args), len(cwd), len(cgname), len(ancestors),
        )
        + filename + args + cwd + cgname + ancestors
    )


def encode_exit(pid: int, tid: int, ktime: int, exit_code: int, ppid: int, start_time: int) -> bytes:
    return HEADER.pack(REC_EXIT, 1, EXIT_SIZE, pid, tid, ktime) + EXIT_BODY.pack(
        exit_code, ppid, start_time
    )


def encode_fork(pid: int, ktime: int, ppid: int, start_time: int, cgroup_id: int = 0) -> bytes:
    return HEADER.pack(REC_FORK, 1, FORK_SIZE, pid, pid, ktime) + FORK_BODY.pack(
        ppid, 0, start_time, cgroup_id
    )


# ---- policy hooks (REC_HOOK body) and the policy catalog (REC_POLICY) ----------------------------

HOOK_FIXED = struct.Struct("<IHBBBBHq")
ARG_HDR = struct.Struct("<BBHI")
HOOK_MONITOR = 1 << 0
HOOK_RETURN = 1 << 1
HOOK_IO_URING = 1 << 2   # an io_uring request judged as the hook's syscall; ret = its opcode
HOOK_SIGNAL_FAILED = 1 << 3   # the Sigkill/Signal action's bpf_send_signal failed: no signal was sent
HOOK_NO_SELECTOR = 255
ARG_INT, ARG_UINT, ARG_SIZE, ARG_LONG, ARG_STRING, ARG_BYTES, ARG_FILE, ARG_PATH = range(1, 9)
ARG_SOCK = 9  # a socket hook's sock argument: collector/sock_hooks.py SOCKINFO layout
# typed kernel objects (bpf/kargs.h writes them, records.h has the layouts)
(ARG_CRED, ARG_KERNEL_CAP, ARG_CAP_INH, ARG_CAP_PRM, ARG_CAP_EFF, ARG_USER_NS, ARG_BPF_ATTR,
 ARG_PERF_EVENT, ARG_BPF_MAP, ARG_MODULE, ARG_SOCKADDR, ARG_SKB, ARG_BINPRM, ARG_CAPABILITY) = range(10, 24)
ARG_INT32_ARR = 24   # int32_arr: little-endian int32s read from user memory
ARG_KSTACK, ARG_USTACK = 25, 26   # Post's kernelStackTrace/userStackTrace (records.h): not arguments
STACK_FRAME = struct.Struct("<QQHH")   # address, offset, symbol length, module length; then both
USERNS_ARG = struct.Struct("<iIII")                 # struct tp_userns_arg
CRED_ARG = struct.Struct("<10I3Q")                  # struct tp_cred_arg without its user_ns
BPF_ATTR_ARG = struct.Struct("<II16s")              # struct tp_bpf_attr_arg
PERF_EVENT_ARG = struct.Struct("<QQII128s")         # struct tp_perf_event_arg
BPF_MAP_ARG = struct.Struct("<IIII16s")             # struct tp_bpf_map_arg
MODULE_ARG = struct.Struct("<IIQ64s")               # struct tp_module_arg
MODULE_SIG_KNOWN, MODULE_SIG_OK = 1, 2
SOCKADDR_ARG = struct.Struct("<HHI16s")             # struct tp_sockaddr_arg
SKB_ARG = struct.Struct("<9IHH16s16s")              # struct tp_skb_arg
ARGF_TRUNC = 1 << 0
ARGF_ERROR = 1 << 1
ARGF_MODE = 1 << 2   # ARG_FILE/PATH/BINPRM: 2 bytes of inode i_mode before the path (records.h)
ARGF_SYMBOLS = 1 << 3   # ARG_KSTACK/USTACK: symbolised frames (collector/stacks.py), not the stack id


@dataclass(slots=True)
class HookArg:
    type: int
    flags: int
    orig_size: int
    data: bytes          # the value (a path without the ARGF_MODE prefix, which decode_hook takes off)
    mode: int = 0        # ARGF_MODE: the inode's i_mode (0: none)


@dataclass(slots=True)
class StackFrame:
    address: int
    offset: int          # from the symbol's start (0 with no symbol)
    symbol: str          # "" where no symbol covers the address
    module: str          # kernel: the module ("" for the kernel image); user: the mapped file


@dataclass(slots=True)
class StackTrace:
    """A stack a Post action captured: frames once the collector symbolised it; else ``stack_id``
    (>= 0: not symbolised; < 0: bpf_get_stackid's error, nothing captured)."""
    frames: list[StackFrame]
    stack_id: int = 0
    symbolised: bool = True


@dataclass(slots=True)
class HookBody:
    policy_id: int
    hook_id: int
    selector: int
    action: int
    flags: int
    ret: int
    args: list[HookArg]
    kernel_stack: StackTrace | None = None
    user_stack: StackTrace | None = None


def encode_frames(frames: list[StackFrame]) -> bytes:
    out = []
    for f in frames:
        sym = f.symbol.encode()[:0xffff]
        mod = f.module.encode()[:0xffff]
        out.append(STACK_FRAME.pack(f.address, f.offset, len(sym), len(mod)) + sym + mod)
    return b"".join(out)


def decode_frames(data: bytes) -> list[StackFrame]:
    frames = []
    o = 0
    while o < len(data):
        if o + STACK_FRAME.size > len(data):
            raise RecordError("stack frame runs past its argument")
        addr, off, ns, nm = STACK_FRAME.unpack_from(data, o)
        o += STACK_FRAME.size
        if o + ns + nm > len(data):
            raise RecordError("stack frame names run past their argument")
        frames.append(StackFrame(addr, off, data[o:o + ns].decode(errors="replace"),
                                 data[o + ns:o + ns + nm].decode(errors="replace")))
        o += ns + nm
    return frames


def _stack(flags: int, data: bytes) -> StackTrace:
    if flags & ARGF_SYMBOLS:
        return StackTrace(decode_frames(data))
    if len(data) != 8:
        raise RecordError(f"stack id argument of {len(data)} bytes (8 expected)")
    return StackTrace([], int.from_bytes(data, "little", signed=True), symbolised=False)


def _stack_arg(t: int, st: StackTrace) -> bytes:
    if st.symbolised:
        data = encode_frames(st.frames)
        return ARG_HDR.pack(t, ARGF_SYMBOLS, len(data), len(data)) + data
    return ARG_HDR.pack(t, 0, 8, 8) + st.stack_id.to_bytes(8, "little", signed=True)


def decode_hook(rec: HookRecord) -> HookBody:
    """The fixed part and the arguments of a REC_HOOK record; RecordError if they do not fit."""
    b = rec.body
    if len(b) < HOOK_FIXED.size:
        raise RecordError(f"hook record body of {len(b)} bytes is shorter than {HOOK_FIXED.size}")
    pid, hook, sel, action, flags, nargs, dlen, ret = HOOK_FIXED.unpack_from(b, 0)
    if HOOK_FIXED.size + dlen != len(b):
        raise RecordError(f"hook record says {dlen} argument bytes, has {len(b) - HOOK_FIXED.size}")
    args = []
    kstack = ustack = None
    o = HOOK_FIXED.size
    for i in range(nargs):
        if o + ARG_HDR.size > len(b):
            raise RecordError(f"hook record argument {i} runs past the record")
        t, f, n, orig = ARG_HDR.unpack_from(b, o)
        o += ARG_HDR.size
        if o + n > len(b):
            raise RecordError(f"hook record argument {i} ({n} bytes) runs past the record")
        if t in (ARG_KSTACK, ARG_USTACK):   # a stack the Post action captured: not an argument
            st = _stack(f, bytes(b[o:o + n]))
            kstack, ustack = (st, ustack) if t == ARG_KSTACK else (kstack, st)
        elif f & ARGF_MODE and n >= 2:     # the inode's mode, then the path (records.h TP_ARGF_MODE)
            args.append(HookArg(t, f, max(orig - 2, 0), bytes(b[o + 2:o + n]), int.from_bytes(b[o:o + 2], "little")))
        else:
            args.append(HookArg(t, f, orig, bytes(b[o:o + n])))
        o += n
    return HookBody(pid, hook, sel, action, flags, ret, args, kstack, ustack)


def encode_hook(pid: int, tid: int, ktime: int, body: HookBody) -> bytes:
    """Pack a REC_HOOK record as the kernel does (tests and benchmarks use this)."""
    data = b"".join(ARG_HDR.pack(a.type, a.flags, len(a.data) + 2, a.orig_size + 2) + a.mode.to_bytes(2, "little")
                    + a.data if a.flags & ARGF_MODE else
                    ARG_HDR.pack(a.type, a.flags, len(a.data), a.orig_size) + a.data for a in body.args)
    stacks = [(t, st) for t, st in ((ARG_KSTACK, body.kernel_stack), (ARG_USTACK, body.user_stack)) if st]
    data += b"".join(_stack_arg(t, st) for t, st in stacks)
    fixed = HOOK_FIXED.pack(body.policy_id, body.hook_id, body.selector, body.action, body.flags,
                            len(body.args) + len(stacks), len(data), body.ret)
    size = HEADER.size + len(fixed) + len(data)
    return HEADER.pack(REC_HOOK, 1, size, pid, tid, ktime) + fixed + data


def encode_policy(ktime: int, catalog_json: bytes) -> bytes:
    """A REC_POLICY record (the collector's policy catalog entry)."""
    return HEADER.pack(REC_POLICY, 1, HEADER.size + len(catalog_json), 0, 0, ktime) + catalog_json
