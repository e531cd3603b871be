"""Tetragon's compact one-line view (``tetra getevents -o compact``), on protojson dicts.

``🚀 process default/xwing /bin/bash``, ``💥 exit    default/xwing /bin/ls  0``: an emoji, the event
name padded to 7, the pod (``namespace/name``) or else the node name, the binary, the arguments,
then per type the file, the byte count, the exit status or signal.
"""

from __future__ import annotations

from typing import Any

# function (syscall name without __x64_sys_/sys_ prefixes) → (emoji, name, what follows)
KPROBE_VIEWS: dict[str, tuple[str, str, str]] = {
    "write": ("📝", "write", "file_bytes"),
    "pwrite64": ("📝", "write", "file_bytes"),
    "writev": ("📝", "write", "file_bytes"),
    "read": ("📚", "read", "file_bytes"),
    "pread64": ("📚", "read", "file_bytes"),
    "readv": ("📚", "read", "file_bytes"),
    "fd_install": ("📬", "open", "file1"),
    "open": ("📬", "open", "file"),
    "openat": ("📬", "open", "file"),
    "openat2": ("📬", "open", "file"),
    "close": ("📪", "close", "none"),
    "mount": ("💾", "mount", "first"),
    "pivot_root": ("💾", "pivot_root", "first"),
    "setuid": ("🔑", "setuid", "first"),
    "setgid": ("🔑", "setgid", "first"),
    "setresuid": ("🔑", "setuid", "first"),
    "clock_settime": ("⏰", "clock_settime", "none"),
    "setns": ("🔧", "setns", "none"),
    "connect": ("🔌", "connect", "sock"),
    "tcp_connect": ("🔌", "connect", "sock"),
    "sendmsg": ("📤", "sendmsg", "sock"),
    "bpf": ("🐝", "bpf_load", "none"),
    "bpf_check": ("🐝", "bpf_load", "none"),
}


def _short_fn(name: str) -> str:
    for prefix in ("__x64_sys_", "__arm64_sys_", "__ia32_sys_", "__se_sys_", "sys_", "ksys_"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def where(process: dict[str, Any], node: str) -> str:
    pod = process.get("pod") or {}
    if pod.get("name"):
        return f"{pod.get('namespace', '')}/{pod['name']}"
    return node


def _arg_file(arg: dict[str, Any] | None) -> str:
    if not arg:
        return ""
    for key in ("file_arg", "path_arg"):
        if arg.get(key):
            return arg[key].get("path", "")
    return str(arg.get("string_arg", ""))


def _arg_len(arg: dict[str, Any] | None) -> str:
    if not arg:
        return ""
    if "bytes_arg" in arg:
        import base64

        return f"{len(base64.b64decode(arg['bytes_arg']))} bytes"
    if arg.get("truncated_bytes_arg"):
        return f"{arg['truncated_bytes_arg'].get('orig_size', 0)} bytes"
    for key in ("size_arg", "int_arg", "uint_arg", "long_arg"):
        if key in arg:
            return f"{arg[key]} bytes"
    return ""


def _arg_text(arg: dict[str, Any] | None) -> str:
    if not arg:
        return ""
    for key, value in arg.items():
        if key == "label":
            continue
        if isinstance(value, dict):
            if "path" in value:
                return str(value["path"])
            if "daddr" in value:
                return f"{value.get('daddr', '')}:{value.get('dport', 0)}"
            return ""
        return str(value)
    return ""


def render(doc: dict[str, Any]) -> str:
    """One compact line for a protojson event dict ('' for an event type it does not show)."""
    node = doc.get("node_name", "")
    if "process_exec" in doc:
        p = doc["process_exec"].get("process", {})
        return _line("🚀", "process", where(p, node), p.get("binary", ""), p.get("arguments", ""))
    if "process_exit" in doc:
        e = doc["process_exit"]
        p = e.get("process", {})
        status = e.get("signal") or str(e.get("status", 0))
        return _line("💥", "exit", where(p, node), p.get("binary", ""), p.get("arguments", ""), status,
                     keep_empty=True)
    if "process_kprobe" in doc:
        k = doc["process_kprobe"]
        p = k.get("process", {})
        args = k.get("args", [])
        fn = _short_fn(k.get("function_name", ""))
        view = KPROBE_VIEWS.get(fn)
        if view is None:
            return _line("❓", "syscall", where(p, node), p.get("binary", ""), k.get("function_name", ""))
        emoji, name, shape = view
        parts = [where(p, node), p.get("binary", "")]
        if shape == "file_bytes":
            parts += [_arg_file(args[0] if args else None), _arg_len(args[1] if len(args) > 1 else None)]
        elif shape == "file1":
            parts.append(_arg_file(args[1] if len(args) > 1 else None))
        elif shape == "file":
            parts.append(_arg_file(next((a for a in args if a.get("file_arg") or a.get("path_arg")
                                         or "string_arg" in a), None)))
        elif shape in ("first", "sock"):
            parts.append(_arg_text(args[0] if args else None))
        return _line(emoji, name, *parts)
    if "process_tracepoint" in doc:
        t = doc["process_tracepoint"]
        p = t.get("process", {})
        return _line("⁉️", "tracepoint", where(p, node), p.get("binary", ""),
                     f"{t.get('subsys', '')} {t.get('event', '')}")
    if "process_lsm" in doc:
        lsm = doc["process_lsm"]
        p = lsm.get("process", {})
        return _line("🔒", "lsm", where(p, node), p.get("binary", ""), lsm.get("function_name", ""))
    if "process_uprobe" in doc:
        u = doc["process_uprobe"]
        p = u.get("process", {})
        return _line("🕵️", "uprobe", where(p, node), p.get("binary", ""),
                     f"{u.get('path', '')} {u.get('symbol', '')}")
    if "process_loader" in doc:
        ld = doc["process_loader"]
        p = ld.get("process", {})
        return _line("🧬", "loader", where(p, node), p.get("binary", ""), ld.get("path", ""))
    if "rate_limit_info" in doc:
        n = doc["rate_limit_info"].get("number_of_dropped_process_events", 0)
        return f"🧬 {'ratelimit':<7} {node} dropped {n} events"
    return ""


# control characters of event data (a file name with a newline or a terminal escape) are shown
# escaped, so one event stays one line and cannot drive the terminal
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(32), *range(127, 160))} | {10: "\\n", 13: "\\r", 9: "\\t"}


def _line(emoji: str, name: str, *parts: str, keep_empty: bool = False) -> str:
    """Tetragon joins with single spaces, so an empty field leaves two spaces (exit lines)."""
    head = f"{emoji} {name:<7}"
    parts = tuple(p.translate(_ESCAPES) for p in parts)
    if keep_empty:
        return " ".join([head, *parts])
    return " ".join([head, *parts]).rstrip()
