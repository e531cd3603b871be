"""Tetragon's compact one-line view (``tetra getevents -o compact``), on protojson dicts.

Byte for byte what Tetragon's compact encoder (pkg/encoder) prints for the same event, colors
included: ``🚀 process default/xwing /bin/bash -la``, ``💥 exit    default/xwing /bin/ls  0``. An
emoji and the event name padded to 7, the pod (``namespace/name``) or else the node name, the
binary, then per type the arguments, file, byte count, exit status or signal. Kprobe lines by
function (the arch prefix ``__x64_``/``__arm64_`` cut). Where Tetragon leaves a field empty the
separating space stays (``📪 close   default/xwing /usr/bin/vi `` ends with a space).

Event strings holding a character that is not printable (a newline or terminal escape in a file
name) are shown quoted and escaped as Go's ``strconv.Quote`` does (``"evil\\nname"``), so one event
stays one line and cannot drive the terminal.

The capability trailer ``🛑 CAP_SYS_ADMIN`` at column 120 follows Tetragon's rule exactly: its loop
reads the positions of the effective set, not its values, so the trailer shows when the set has
more than 21 entries (CAP_SYS_ADMIN is 21) -- in practice processes with a near-full set, such as
root's. With colors on, Tetragon pads every line with a process to column 120 (the colored empty
trailer is not empty); so do we.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from exporters import compact_extras

Doc = dict[str, Any]
CAPS_PAD = 120
CAP_SYS_ADMIN = 21

# fatih/color foreground codes, as Tetragon's colorer uses them
RED, GREEN, YELLOW, BLUE, MAGENTA, CYAN = 31, 32, 33, 34, 35, 36

_NS = {0: "any", 0x2000000: "cgroup", 0x8000000: "ipc", 0x40000000: "net", 0x20000: "mnt", 0x20000000: "pid",
       0x80: "time", 0x10000000: "user", 0x4000000: "uts"}

_ARCH_PREFIXES = ("__x64_", "__arm64_")  # Tetragon's arch.CutSyscallPrefix


def color_enabled(mode: str, stream: Any = None) -> bool:
    """``--color auto|always|never``; auto as fatih/color decides: a terminal, TERM not dumb,
    NO_COLOR not set."""
    if mode == "always":
        return True
    if mode == "never":
        return False
    stream = stream if stream is not None else sys.stdout
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return tty and os.environ.get("TERM") != "dumb" and "NO_COLOR" not in os.environ


# --- Go's strconv.Quote for strings that need it ---------------------------------------------

_GO_ESCAPES = {7: "\\a", 8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t", 11: "\\v", 0x22: '\\"', 0x5C: "\\\\"}


def _quote_char(c: str) -> str:
    o = ord(c)
    if o in _GO_ESCAPES:
        return _GO_ESCAPES[o]
    if 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape): Go shows the byte
        return f"\\x{o - 0xDC00:02x}"
    if c.isprintable():
        return c
    if o < 0x20 or o == 0x7F:
        return f"\\x{o:02x}"
    if 0xD800 <= o <= 0xDFFF:  # a lone surrogate is not UTF-8 either: Go prints U+FFFD for it
        return "\\ufffd"
    return f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def esc(s: str) -> str:
    """An event string as Tetragon prints it: as is when every character is printable, else
    quoted and escaped (Go's strconv.Quote)."""
    if s.isprintable():
        return s
    return '"' + "".join(_quote_char(c) for c in s) + '"'


# --- helpers on protojson dicts (nil = None; an empty message is {}) -------------------------

def _arg(args: list[Any], i: int) -> Doc | None:
    a = args[i] if len(args) > i else None
    return a if isinstance(a, dict) else None


def _sub(arg: Doc | None, key: str) -> Doc | None:
    v = (arg or {}).get(key)
    return v if isinstance(v, dict) else None


def _num(arg: Doc | None, key: str) -> int:
    try:
        return int((arg or {}).get(key, 0))
    except (TypeError, ValueError):
        return 0


def _str(d: Doc | None, key: str) -> str:
    v = (d or {}).get(key, "")
    return esc(v if isinstance(v, str) else str(v))


class Compact:
    """One renderer: color on or off, timestamps or not (tetra's ``--color``, ``--timestamps``)."""

    def __init__(self, color: bool = False, timestamps: bool = False, stack_traces: bool = False,
                 ima_hash: bool = False) -> None:
        self.color = color
        self.timestamps = timestamps
        self.stack_traces = stack_traces  # tetra's --stack-traces, --ima-hash: lines under the line
        self.ima_hash = ima_hash

    def c(self, code: int, s: str) -> str:
        return f"\x1b[{code}m{s}\x1b[0m" if self.color else s

    def head(self, emoji: str, name: str, code: int = BLUE) -> str:
        return self.c(code, f"{emoji} {name:<7}")

    def process_info(self, node: str, p: Doc) -> tuple[str, str]:
        pod = p.get("pod")
        if isinstance(pod, dict):
            source = self.c(GREEN, _str(pod, "namespace") + "/" + _str(pod, "name"))
        else:
            source = self.c(GREEN, esc(node))
        effective = ((p.get("cap") or {}).get("effective")) or []
        caps = "🛑 CAP_SYS_ADMIN" if len(effective) > CAP_SYS_ADMIN else ""
        return f"{source} {self.c(MAGENTA, _str(p, 'binary'))}", self.c(MAGENTA, caps)

    @staticmethod
    def trailer(line: str, caps: str) -> str:
        """Go's ``fmt.Sprintf("%s %*s", str, 120-len(str), caps)``: the pad counts bytes of the line
        and runes of the trailer."""
        if not caps:
            return line
        pad = max(CAPS_PAD - len(line.encode()), 0)
        return f"{line} {caps:>{pad}}"

    def render(self, doc: Doc) -> str:
        """The line for one event ('' where tetra prints none: an unknown event type or, as
        Tetragon's encoder refuses it, an event without its process)."""
        line = self.line(doc)
        if line and self.timestamps:
            line = f"{timestamp(doc.get('time'))} {line}"
        return line

    def output(self, doc: Doc) -> str:
        """What tetra writes for one event: the line and its newline, then the ``--stack-traces``
        and ``--ima-hash`` lines ('' for an event tetra does not print). With colors the reset
        of the last such line follows its newline, as tetra writes it."""
        line = self.render(doc)
        if not line:
            return ""
        return line + "\n" + (compact_extras.stack_traces(self, doc) if self.stack_traces else "") + \
            (compact_extras.ima_hash(self, doc) if self.ima_hash else "")

    def line(self, doc: Doc) -> str:
        node = doc.get("node_name", "") or ""
        if isinstance(doc.get("test"), dict):
            return "TEST EVENT"
        th = doc.get("process_throttle")
        if isinstance(th, dict):
            typ = {"THROTTLE_START": self.c(RED, "START"), "THROTTLE_STOP": self.c(GREEN, "STOP ")}.get(
                th.get("type", ""), "")
            return f"{self.head('🧬', 'throttle', RED)} {typ} {_str(th, 'cgroup')}"
        for key, fn in _BODIES.items():
            body = doc.get(key)
            if isinstance(body, dict):
                p = body.get("process")
                if not isinstance(p, dict):
                    return ""
                info, caps = self.process_info(node, p)
                return self.trailer(fn(self, body, p, info), caps)
        return ""


def timestamp(t: Any) -> str:
    """Go's ``2006-01-02T15:04:05.000000000Z07:00`` in UTC; a missing time is the epoch."""
    from exporters.protojson import parse_rfc3339

    ns = 0
    if isinstance(t, str) and t:
        try:
            ns = parse_rfc3339(t)
        except ValueError:
            ns = 0
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def _exec(r: Compact, body: Doc, p: Doc, info: str) -> str:
    return f"{r.head('🚀', 'process')} {info} {r.c(CYAN, _str(p, 'arguments'))}"


def _exit(r: Compact, body: Doc, p: Doc, info: str) -> str:
    status = _str(body, "signal") if body.get("signal") else str(_num(body, "status"))
    return f"{r.head('💥', 'exit')} {info} {r.c(CYAN, _str(p, 'arguments'))} {r.c(RED, status)}"


def _loader(r: Compact, body: Doc, p: Doc, info: str) -> str:
    raw = body.get("buildid") or ""
    try:
        buildid = base64.b64decode(raw).hex() + " " if raw else ""
    except (ValueError, TypeError):
        buildid = ""
    return f"{r.head('🧬', 'loader')} {info} {buildid}{r.c(YELLOW, _str(body, 'path'))}"


def _tracepoint(r: Compact, body: Doc, p: Doc, info: str) -> str:
    if (body.get("subsys"), body.get("event")) == ("raw_syscalls", "sys_enter"):
        return f"{r.head('☎ ', 'syscall')} {info} {raw_syscall_enter(body.get('args') or [])}"
    return f"{r.head('⁉️', 'tracepoint')} {info} {_str(body, 'subsys')} {_str(body, 'event')}"


@cache
def _syscalls() -> dict[str, Any]:
    """exporters/syscalls.json (scripts/gen-syscall-table.py): names by number per ABI, arguments."""
    with open(Path(__file__).with_name("syscalls.json"), encoding="utf-8") as f:
        table: dict[str, Any] = json.load(f)
    return table


def raw_syscall_enter(args: list[Any]) -> str:
    """What tetra prints for a raw_syscalls/sys_enter event: the syscall of the first argument (a
    long_arg number of the x86-64 table, or a syscall_id with its ABI: ``i386/write``), then, for
    a syscall of the default ABI whose arguments are known, each argument as ``type name=value``
    where the value is that of a size_arg at the next argument positions (``0x...`` for a pointer)
    and ``?`` for anything else. As tetra, a number at or past the table's entry count is
    ``unknown`` (the x86-64 table has 374 entries, so 424 and up -- io_uring_setup, clone3,
    openat2 -- print ``unknown`` in tetra too)."""
    table = _syscalls()
    abi, nr = "x64", -1
    first = _arg(args, 0)
    if first is not None and "long_arg" in first:
        nr = _num(first, "long_arg")
    elif first is not None and isinstance(first.get("syscall_id"), dict):
        nr, abi = _num(first["syscall_id"], "id"), str(first["syscall_id"].get("abi", ""))
    names: dict[str, str] = table.get(abi, {}) if abi in ("x64", "i386") else {}
    name = names.get(str(nr), "") if 0 <= nr < len(names) else ""
    if not name:
        return "unknown"
    if abi != "x64":
        return f"{abi}/{name}"  # tetra looks the arguments up by the prefixed name: none found
    spec = table["args"].get(name)
    if spec is None:
        return name
    parts = []
    for j, (typ, arg_name) in enumerate(spec):
        a = _arg(args, j + 1)
        ptr = typ.endswith("*")
        if a is not None and "size_arg" in a:
            v = _num(a, "size_arg") & 0xFFFFFFFFFFFFFFFF
            value = f"0x{v:x}" if ptr else str(v)
        else:
            value, ptr = "?", False
        parts.append(f"{typ}{arg_name}={value}" if ptr else f"{typ} {arg_name}={value}")
    return f"{name}({', '.join(parts)})"


def _uprobe(r: Compact, body: Doc, p: Doc, info: str) -> str:
    return f"{r.head('🕵️', 'uprobe')} {info} {_str(body, 'path')} {_str(body, 'symbol')}"


def _lsm(r: Compact, body: Doc, p: Doc, info: str) -> str:
    return f"{r.head('🔒', 'LSM')} {info} {_str(body, 'function_name')}"


def _usdt(r: Compact, body: Doc, p: Doc, info: str) -> str:
    return f"{r.head('🕵️', 'usdt')} {info} {_str(body, 'path')} {_str(body, 'provider')} {_str(body, 'name')}"


def _kprobe(r: Compact, body: Doc, p: Doc, info: str) -> str:
    fn = body.get("function_name", "") or ""
    sc = fn
    for prefix in _ARCH_PREFIXES:
        if fn.startswith(prefix):
            sc = fn[len(prefix):]
            break
    args = body.get("args") or []
    view = KPROBE_VIEWS.get(sc)
    if view is None:
        return f"{r.head('❓', 'syscall')} {info} {esc(fn)}"
    return view(r, args, info)


def _file_path(r: Compact, arg: Doc | None) -> str:
    f = _sub(arg, "file_arg")
    return r.c(CYAN, _str(f, "path")) if f is not None else ""


def _rw(emoji: str, name: str) -> Callable[[Compact, list[Any], str], str]:
    def view(r: Compact, a: list[Any], info: str) -> str:
        count = r.c(CYAN, f"{_num(_arg(a, 2), 'size_arg')} bytes") if _arg(a, 2) is not None else ""
        return f"{r.head(emoji, name)} {info} {_file_path(r, _arg(a, 0))} {count}"
    return view


def _string_args(emoji: str, name: str, *idx: int) -> Callable[[Compact, list[Any], str], str]:
    def view(r: Compact, a: list[Any], info: str) -> str:
        parts = [r.c(CYAN, _str(_arg(a, i), "string_arg")) if _arg(a, i) is not None else "" for i in idx]
        return " ".join([f"{r.head(emoji, name)} {info}", *parts])
    return view


def _bare(emoji: str, name: str) -> Callable[[Compact, list[Any], str], str]:
    return lambda r, a, info: f"{r.head(emoji, name)} {info}"


def _sock(r: Compact, arg: Doc | None) -> str:
    if arg is None:
        return ""
    sa = _sub(arg, "sock_arg")
    return r.c(CYAN, f"tcp {_str(sa, 'saddr')}:{_num(sa, 'sport')} -> {_str(sa, 'daddr')}:{_num(sa, 'dport')}")


def _sock_view(emoji: str, name: str) -> Callable[[Compact, list[Any], str], str]:
    return lambda r, a, info: f"{r.head(emoji, name)} {info} {_sock(r, _arg(a, 0))}"


def _sendmsg(r: Compact, a: list[Any], info: str) -> str:
    return f"{r.head('📤', 'sendmsg')} {info} {_sock(r, _arg(a, 0))} bytes {_num(_arg(a, 1), 'int_arg')}"


def _open(r: Compact, a: list[Any], info: str) -> str:
    return f"{r.head('📬', 'open')} {info} {_file_path(r, _arg(a, 1))}"


def _close(r: Compact, a: list[Any], info: str) -> str:
    return f"{r.head('📪', 'close')} {info} {_file_path(r, _arg(a, 0))}"


def _setuid(r: Compact, a: list[Any], info: str) -> str:
    uid = r.c(CYAN, str(_num(_arg(a, 0), "int_arg"))) if _arg(a, 0) is not None else ""
    return f"{r.head('🔑', 'setuid')} {info} {uid}"


def _setns(r: Compact, a: list[Any], info: str) -> str:
    ns = _NS.get(_num(_arg(a, 1), "int_arg"), "") if _arg(a, 1) is not None else ""
    return f"{r.head('🔧', 'setns')} {info} {ns}"


def _bpf_check(r: Compact, a: list[Any], info: str) -> str:
    attr = ""
    if _arg(a, 0) is not None:
        ba = _sub(_arg(a, 0), "bpf_attr_arg")
        attr = r.c(CYAN, f"{_str(ba, 'ProgType')} {_str(ba, 'ProgName')} instruction count {_num(ba, 'InsnCnt')}")
    return f"{r.head('🐝', 'bpf_load')} {info} {attr}"


def _perf_event(r: Compact, a: list[Any], info: str) -> str:
    attr = ""
    if _arg(a, 0) is not None:
        pe = _sub(_arg(a, 0), "perf_event_arg")
        attr = r.c(CYAN, f"{_str(pe, 'Type')} {_str(pe, 'KprobeFunc')}")
    return f"{r.head('🐝', 'perf_event_alloc')} {info} {attr}"


def _bpf_map(r: Compact, a: list[Any], info: str) -> str:
    attr = ""
    if _arg(a, 0) is not None:
        m = _sub(_arg(a, 0), "bpf_map_arg")
        attr = r.c(CYAN, f"{_str(m, 'MapType')} {_str(m, 'MapName')} key size {_num(m, 'KeySize')} "
                         f"value size {_num(m, 'ValueSize')} max entries {_num(m, 'MaxEntries')}")
    return f"{r.head('🗺', 'bpf_map_create')} {info} {attr}"


def _file_permission(r: Compact, a: list[Any], info: str) -> str:
    head, attr = r.head("❓", "security_file_permission"), ""
    if len(a) > 1 and _arg(a, 0) is not None and _arg(a, 1) is not None:
        mask = _num(_arg(a, 1), "int_arg")
        head = {2: r.head("📝", "write"), 4: r.head("📚", "read")}.get(mask, head)
        attr = r.c(CYAN, _str(_sub(_arg(a, 0), "file_arg"), "path"))
    return f"{head} {info} {attr}"


def _mmap_file(r: Compact, a: list[Any], info: str) -> str:
    head, attr = r.head("❓", "security_mmap_file"), ""
    if len(a) > 1 and _arg(a, 0) is not None and _arg(a, 1) is not None:
        prot = _num(_arg(a, 1), "uint_arg")
        head = r.head("📝", "mmap-" + "".join(ch for bit, ch in ((1, "r"), (2, "w"), (4, "x")) if prot & bit))
        attr = r.c(CYAN, _str(_sub(_arg(a, 0), "file_arg"), "path"))
    return f"{head} {info} {attr}"


def _truncate(r: Compact, a: list[Any], info: str) -> str:
    head, attr = r.head("❓", "security_path_truncate"), ""
    if _arg(a, 0) is not None:
        attr = r.c(CYAN, _str(_sub(_arg(a, 0), "path_arg"), "path"))
        head = r.head("📝", "truncate")
    return f"{head} {info} {attr}"


# function (arch prefix cut) → its line, as in Tetragon's encoder
KPROBE_VIEWS: dict[str, Callable[[Compact, list[Any], str], str]] = {
    "sys_write": _rw("📝", "write"),
    "sys_read": _rw("📚", "read"),
    "fd_install": _open,
    "sys_openat": _string_args("📬️", "openat", 1),
    "sys_open": _string_args("📬️", "open", 1),
    "sys_close": _close,
    "sys_mount": _string_args("💾", "mount", 0, 1),
    "sys_setuid": _setuid,
    "sys_clock_settime": _bare("⏰", "clock_settime"),
    "sys_pivot_root": _string_args("💾", "pivot_root", 0, 1),
    "proc_exec_connector": _bare("🔧", "proc_exec_connector"),
    "sys_setns": _setns,
    "tcp_connect": _sock_view("🔌", "connect"),
    "tcp_close": _sock_view("\U0001F9F9", "close"),
    "tcp_sendmsg": _sendmsg,
    "bpf_check": _bpf_check,
    "security_perf_event_alloc": _perf_event,
    "security_bpf_map_alloc": _bpf_map,
    "security_bpf_map_create": _bpf_map,
    "security_file_permission": _file_permission,
    "security_mmap_file": _mmap_file,
    "security_path_truncate": _truncate,
}

_BODIES: dict[str, Callable[[Compact, Doc, Doc, str], str]] = {
    "process_exec": _exec, "process_exit": _exit, "process_loader": _loader, "process_kprobe": _kprobe,
    "process_tracepoint": _tracepoint, "process_uprobe": _uprobe, "process_lsm": _lsm, "process_usdt": _usdt,
}

_PLAIN = Compact()


def render(doc: Doc) -> str:
    """One compact line, no color, no timestamp ('' for an event tetra does not print)."""
    return _PLAIN.render(doc)
