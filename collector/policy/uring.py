"""io_uring requests judged as the syscalls of the same meaning (issue #12, README "Enforcement").

io_uring requests never pass the syscall entry points, so a hook on ``write(2)`` never sees an
io_uring WRITE. Each syscall hook whose syscall has an io_uring twin is also called from the
``io_uring`` tracepoints, with the arguments laid out as the syscall's:

- file requests (READ/WRITE/READV/WRITEV, their _FIXED forms (fixed buffers), READ_MULTISHOT,
  FTRUNCATE, FALLOCATE, SPLICE/TEE): ``io_uring:io_uring_file_get``, which the kernel fires in the task that issues the
  request (the submitter, the SQPOLL thread ``iou-sqp``, an io-wq worker ``iou-wrk`` for
  IOSQE_ASYNC or a punted request, task work after a linked OPENAT) right before it takes the
  file from that task's fd table and issues the request. The hook resolves the fd through the
  same fd table (the io_uring threads share the process's), so the file is the one the request
  will use; a linked OPENAT+WRITE is judged after the OPENAT installed its fd. A Sigkill there
  is pending before the request is issued: buffered writes and reads check
  ``fatal_signal_pending`` (generic_perform_write, filemap_read) and fail with nothing done;
- OPENAT/OPENAT2 for ``fd_install`` hooks (FollowFD, served at the open syscalls' exits here):
  ``io_uring:io_uring_complete`` with the new fd, before any linked request runs;
- CONNECT for ``tcp_connect``: ``io_uring:io_uring_complete`` (0 or -EINPROGRESS), the socket of
  the request's file (an fd's or a registered one's): a Sigkill there comes after the connect, as
  at the 64-bit connect's exit; an Override on tcp_connect is enforced before the connection by the
  cgroup connect4/connect6 programs (collector/connect_deny.py), which io_uring and 32-bit connects
  pass too.
The record carries TP_HOOK_IO_URING and the opcode in ``ret``; events name the syscall's hook and
say ``io_uring`` and the opcode.

Not served (README): file requests on registered (fixed) files (IOSQE_FIXED_FILE: the kernel takes
them from the ring's table without this tracepoint; an inode they dirty is counted by bpf/uncaught.c), hooks
that need the return value (returnCopy, return: the request has no syscall exit), OPENAT for
string-path openat hooks, SEND/SENDMSG/RECV for write/read hooks on sockets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bpf.names import IO_URING_OPS
from collector.policy.argtypes import tracepoint_fields
from collector.policy.csrc import indent

if TYPE_CHECKING:
    from collector.policy.hookfn import HookGen

# io_uring opcodes (include/uapi/linux/io_uring.h; stable numbers)
OP = {name: op for op, name in IO_URING_OPS.items()}
IS_URING = 2     # tp_hook_<id>(..., is_ret = 2): an io_uring request (TP_HOOK_IO_URING, ret = opcode)


@dataclass(frozen=True)
class Twin:
    ops: tuple[int, ...]
    fd: int                  # the syscall argument the request's file is
    rw: bool = False         # arguments 1, 2 are the buffer and its length (struct io_rw addr, len)
    fd_in: int = -1          # SPLICE/TEE: the syscall argument of the input fd (io_splice.splice_fd_in)


_W = (OP["WRITE"], OP["WRITE_FIXED"])
_R = (OP["READ"], OP["READ_FIXED"], OP["READ_MULTISHOT"])
_WV = (OP["WRITEV"], OP["WRITEV_FIXED"])
_RV = (OP["READV"], OP["READV_FIXED"])
# syscalls whose io_uring counterparts are not judged: said at load (a gauge per policy, gaps.py)
UNSERVED = {"sendto": "SEND", "sendmsg": "SENDMSG", "recvfrom": "RECV", "recvmsg": "RECVMSG",
            "openat": "OPENAT", "openat2": "OPENAT2"}
TWINS: dict[str, Twin] = {
    "write": Twin(_W, 0, rw=True), "pwrite64": Twin(_W, 0, rw=True),
    "writev": Twin(_WV, 0), "pwritev": Twin(_WV, 0), "pwritev2": Twin(_WV, 0),
    "ftruncate": Twin((OP["FTRUNCATE"],), 0), "fallocate": Twin((OP["FALLOCATE"],), 0),
    "splice": Twin((OP["SPLICE"],), 2, fd_in=0), "tee": Twin((OP["TEE"],), 1, fd_in=0),
    "read": Twin(_R, 0, rw=True), "pread64": Twin(_R, 0, rw=True),
    "readv": Twin(_RV, 0), "preadv": Twin(_RV, 0), "preadv2": Twin(_RV, 0),
}
FILE_GET = "io_uring:io_uring_file_get"
COMPLETE = "io_uring:io_uring_complete"


def _has(g_tracefs: Path, tp: str, names: set[str]) -> bool:
    subsys, event = tp.split(":")
    fields = tracepoint_fields(subsys, event, g_tracefs)
    return fields is not None and names <= {f.name for f in fields}


def probes(h: HookGen, syscall: str) -> None:
    """The io_uring twin of hook ``h`` (served as syscall ``syscall``): its probe statements."""
    g, hid, src = h.g, h.hid, h.src
    call = f"tp_hook_{hid}(args, a, op, {IS_URING});"
    if src.kind == "open" and _has(g.tracefs, COMPLETE, {"req", "res"}):
        ops = f"op == {OP['OPENAT']} || op == {OP['OPENAT2']}"
        g.probes.setdefault(COMPLETE, []).append(
            f"if (args->res >= 0) {{\n    u8 op = tp_uring_op(args->req);\n    if ({ops}) {{\n"
            f"        u64 a[6] = {{}};\n        a[0] = args->res;\n        a[1] = args->res;\n        {call}\n"
            "    }\n}")
        g.uring_used = True
        return
    if src.kind == "sock" and h.hook.call == "tcp_connect" and _has(g.tracefs, COMPLETE, {"req", "res"}):
        g.probes.setdefault(COMPLETE, []).append(
            f"if (args->res == 0 || args->res == -115) {{\n    u8 op = tp_uring_op(args->req);\n"
            f"    if (op == {OP['CONNECT']}) {{\n"
            "        struct sock *sk = tp_uring_sk(args->req);\n"
            "        struct tp_sockinfo si = {};\n        if (tp_sk_info(sk, &si)) {\n"
            f"            u64 a[6] = {{}};\n            a[0] = (u64)&si;\n            {call}\n        }}\n    }}\n}}")
        g.uring_used = True
        return
    twin = TWINS.get(syscall)
    if syscall in UNSERVED:
        g.notices.append(f"{h.hook.path}: io_uring {UNSERVED[syscall]} requests of {syscall}'s meaning are not "
                         "judged (their arguments live in the request, not in a syscall's registers)")
    if src.kind != "syscall" or twin is None:
        if twin is not None:
            g.notices.append(f"{h.hook.path}: io_uring requests of {syscall}'s meaning are not judged: the hook "
                             "needs the return value (io_uring requests have no syscall exit)")
        return
    if not _has(g.tracefs, FILE_GET, {"req", "fd"}):
        g.notices.append(f"{h.hook.path}: no io_uring:io_uring_file_get tracepoint: io_uring requests are not judged")
        return
    ops = " || ".join(f"op == {o}" for o in twin.ops)
    body = f"u64 a[6] = {{}};\na[{twin.fd}] = (u64)(s64)args->fd;\n"
    if twin.rw:
        body += "tp_uring_rw(args->req, a);\n"
    if twin.fd_in >= 0:
        body += f"a[{twin.fd_in}] = (u64)(s64)tp_uring_splice_in(args->req);\n"
    g.notices.append(f"{h.hook.path}: io_uring {'/'.join(IO_URING_OPS[o] for o in twin.ops)} requests are judged as "
                     f"{syscall} at {FILE_GET} (not on registered files)")
    g.probes.setdefault(FILE_GET, []).append(
        "{\n    u8 op = tp_uring_op(args->req);\n"
        # the request's own file (SPLICE/TEE also get their input file here: judged as fd_in)
        f"    if (({ops}) && args->fd == tp_uring_fd(args->req)) {{\n{indent(body + call, 8)}\n    }}\n}}")
    g.uring_used = True

