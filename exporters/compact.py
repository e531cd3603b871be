"""Tetragon's compact one-line view (``tetra getevents -o compact``), on protojson dicts.

``🚀 process default/xwing /bin/bash``, ``💥 exit    default/xwing /bin/ls  0``: an emoji, the event
name padded to 7, the pod (``namespace/name``) or else the node name, the binary, then per type the
arguments, file, byte count, exit status or signal, as Tetragon's compact encoder prints them
(pkg/encoder/encoder.go): kprobe lines by syscall (after the arch prefix ``__x64_`` is cut),
``☎  syscall`` for raw_syscalls/sys_enter, ``❓ syscall <function>`` for any other hook. On request
a process holding CAP_SYS_ADMIN gets the ``🛑 CAP_SYS_ADMIN`` trailer at column 120.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

Doc = dict[str, Any]
CAPS_PAD = 120

# x86-64 syscall numbers of the names a raw_syscalls/sys_enter line most often shows
_SYSCALL_NAMES = {0: "read", 1: "write", 2: "open", 3: "close", 9: "mmap", 21: "access", 41: "socket",
                  42: "connect", 56: "clone", 57: "fork", 59: "execve", 60: "exit", 62: "kill",
                  101: "ptrace", 105: "setuid", 161: "chroot", 165: "mount", 257: "openat",
                  321: "bpf", 435: "clone3"}


def where(process: Doc, node: str) -> str:
    pod = process.get("pod")
    if pod:
        return f"{pod.get('namespace', '')}/{pod.get('name', '')}"
    return node


def _cut_arch(name: str) -> str:
    for prefix in ("__x64_", "__arm64_", "__ia32_", "__se_"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _arg(args: list[Doc], i: int) -> Doc | None:
    return args[i] if len(args) > i and args[i] is not None else None


def _file(arg: Doc | None) -> str:
    if arg and isinstance(arg.get("file_arg"), dict):
        return str(arg["file_arg"].get("path", ""))
    return ""


def _path(arg: Doc | None) -> str:
    if arg and isinstance(arg.get("path_arg"), dict):
        return str(arg["path_arg"].get("path", ""))
    return ""


def _string(arg: Doc | None) -> str:
    return str(arg.get("string_arg", "")) if arg else ""


def _int(arg: Doc | None) -> int:
    if not arg:
        return 0
    for key in ("int_arg", "uint_arg", "long_arg", "size_arg"):
        if key in arg:
            return int(arg[key])
    return 0


def _size(arg: Doc | None) -> str:
    if not arg:
        return ""
    if "size_arg" in arg:
        return f"{int(arg['size_arg'])} bytes"
    if "bytes_arg" in arg:  # a char_buf argument: its length
        return f"{len(base64.b64decode(arg['bytes_arg']))} bytes"
    if isinstance(arg.get("truncated_bytes_arg"), dict):
        return f"{int(arg['truncated_bytes_arg'].get('orig_size', 0))} bytes"
    return "0 bytes"


def _sock(arg: Doc | None) -> str:
    sa = (arg or {}).get("sock_arg") or {}
    return f"tcp {sa.get('saddr', '')}:{sa.get('sport', 0)} -> {sa.get('daddr', '')}:{sa.get('dport', 0)}"


_NS = {0: "any", 0x2000000: "cgroup", 0x8000000: "ipc", 0x40000000: "net", 0x20000: "mnt", 0x20000000: "pid",
       0x80: "time", 0x10000000: "user", 0x4000000: "uts"}


def _rw_bytes(args: list[Doc]) -> str:
    # Tetragon reads the count from the third argument (fd, buf, count); a policy that only
    # captured the buffer still shows its length
    if _arg(args, 2) is not None:
        return _size(_arg(args, 2))
    b = _arg(args, 1)
    return _size(b) if b and ({"bytes_arg", "truncated_bytes_arg", "size_arg"} & set(b)) else ""


# syscall or function (arch prefix cut) → (emoji, name, what follows the binary)
KPROBE_VIEWS: dict[str, tuple[str, str, Callable[[list[Doc]], list[str]]]] = {
    "sys_write": ("📝", "write", lambda a: [_file(_arg(a, 0)), _rw_bytes(a)]),
    "sys_read": ("📚", "read", lambda a: [_file(_arg(a, 0)), _rw_bytes(a)]),
    "fd_install": ("📬", "open", lambda a: [_file(_arg(a, 1))]),
    "sys_openat": ("📬️", "openat", lambda a: [_string(_arg(a, 1))]),
    "sys_open": ("📬️", "open", lambda a: [_string(_arg(a, 1))]),
    "sys_close": ("📪", "close", lambda a: [_file(_arg(a, 0))]),
    "sys_mount": ("💾", "mount", lambda a: [_string(_arg(a, 0)), _string(_arg(a, 1))]),
    "sys_setuid": ("🔑", "setuid", lambda a: [str(_int(_arg(a, 0))) if _arg(a, 0) else ""]),
    "sys_clock_settime": ("⏰", "clock_settime", lambda a: []),
    "sys_pivot_root": ("💾", "pivot_root", lambda a: [_string(_arg(a, 0)), _string(_arg(a, 1))]),
    "proc_exec_connector": ("🔧", "proc_exec_connector", lambda a: []),
    "sys_setns": ("🔧", "setns", lambda a: [_NS.get(_int(_arg(a, 1)), "") if _arg(a, 1) else ""]),
    "tcp_connect": ("🔌", "connect", lambda a: [_sock(_arg(a, 0)) if _arg(a, 0) else ""]),
    "tcp_close": ("🧹", "close", lambda a: [_sock(_arg(a, 0)) if _arg(a, 0) else ""]),
    "tcp_sendmsg": ("📤", "sendmsg", lambda a: [(_sock(_arg(a, 0)) if _arg(a, 0) else "")
                                                + f" bytes {_int(_arg(a, 1))}"]),
    "security_path_truncate": ("📝", "truncate", lambda a: [_path(_arg(a, 0))]),
}


def _kprobe_line(k: Doc) -> tuple[str, str, list[str]]:
    fn = k.get("function_name", "")
    args = k.get("args") or []
    sc = _cut_arch(fn)
    view = KPROBE_VIEWS.get(sc) or (KPROBE_VIEWS.get("sys_" + sc) if not sc.startswith("sys_") else None)
    if view is not None:
        emoji, name, rest = view
        return emoji, name, rest(args)
    if sc == "security_file_permission" and len(args) > 1:
        mask = _int(args[1])
        emoji, name = {2: ("📝", "write"), 4: ("📚", "read")}.get(mask, ("❓", "security_file_permission"))
        return emoji, name, [_file(args[0])]
    if sc == "security_mmap_file" and len(args) > 1:
        prot = _int(args[1])
        tag = "mmap-" + "".join(c for bit, c in ((1, "r"), (2, "w"), (4, "x")) if prot & bit)
        return "📝", tag, [_file(args[0])]
    return "❓", "syscall", [fn]


def _caps_trailer(process: Doc) -> str:
    effective = ((process.get("cap") or {}).get("effective")) or []
    return "🛑 CAP_SYS_ADMIN" if "CAP_SYS_ADMIN" in effective else ""


def render(doc: Doc, caps: bool = False) -> str:
    """One compact line for a protojson event dict ('' for an event type it does not show).

    ``caps``: add Tetragon's ``🛑 CAP_SYS_ADMIN`` trailer, which Tetragon shows only where process
    credentials are collected (``--enable-process-cred``, off by default). Our events always
    carry capabilities, so by default it is left out, as a default Tetragon prints lines."""
    node = doc.get("node_name", "")
    if "rate_limit_info" in doc:
        n = doc["rate_limit_info"].get("number_of_dropped_process_events", 0)
        return f"🧬 {'ratelimit':<7} {node} dropped {n} events"
    key = next((k for k in doc if k.startswith("process_") and isinstance(doc[k], dict)), "")
    if not key:
        return ""
    body = doc[key]
    p = body.get("process")
    if not p:
        return ""  # Tetragon: missing process info
    head = [where(p, node), p.get("binary", "")]
    if key == "process_exec":
        line = _join("🚀", "process", *head, p.get("arguments", "")).rstrip()
    elif key == "process_exit":
        status = body.get("signal") or str(body.get("status", 0))
        line = _join("💥", "exit", *head, p.get("arguments", ""), status)
    elif key == "process_kprobe":
        emoji, name, rest = _kprobe_line(body)
        line = _join(emoji, name, *head, *rest).rstrip()
    elif key == "process_tracepoint":
        if (body.get("subsys"), body.get("event")) == ("raw_syscalls", "sys_enter"):
            args = body.get("args") or []
            nr = _int(args[0]) if args else -1
            line = _join("☎ ", "syscall", *head, _SYSCALL_NAMES.get(nr, str(nr)))
        else:
            line = _join("⁉️", "tracepoint", *head, body.get("subsys", ""), body.get("event", ""))
    elif key == "process_lsm":
        line = _join("🔒", "LSM", *head, body.get("function_name", ""))
    elif key == "process_uprobe":
        line = _join("🕵️", "uprobe", *head, body.get("path", ""), body.get("symbol", ""))
    elif key == "process_usdt":
        line = _join("🕵️", "usdt", *head, body.get("path", ""), body.get("provider", ""), body.get("name", ""))
    elif key == "process_loader":
        buildid = base64.b64decode(body["buildid"]).hex() + " " if body.get("buildid") else ""
        line = _join("🧬", "loader", *head, buildid + body.get("path", ""))
    else:
        return ""
    trailer = _caps_trailer(p) if caps else ""
    if trailer:
        pad = max(CAPS_PAD - len(line.encode()), 0)  # Go pads by bytes
        line = f"{line} {trailer:>{pad}}" if pad else f"{line} {trailer}"
    return line


# control characters of event data (a file name with a newline or a terminal escape) are shown
# escaped, so one event stays one line and cannot drive the terminal
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(32), *range(127, 160))} | {10: "\\n", 13: "\\r", 9: "\\t"}


def _join(emoji: str, name: str, *parts: str) -> str:
    """Tetragon joins with single spaces, so an empty field leaves two spaces (exit lines)."""
    return " ".join([f"{emoji} {name:<7}", *(p.translate(_ESCAPES) for p in parts)])
