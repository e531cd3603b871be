"""The lines tetra prints under a compact line with ``--stack-traces`` (a kprobe event's kernel and
user stack) and ``--ima-hash`` (an LSM event's IMA hash with the file it is of), byte for byte as
Tetragon's encoder (HumanStackTrace, HumanIMAHash): each line ends with a newline, colors as tetra.
tetrapipe's own events carry neither yet; events from elsewhere (a Tetragon export) may.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exporters.compact import Compact

GREEN, BLUE, YELLOW = 32, 34, 33

_BINPRM_HOOKS = ("bprm_check_security", "bprm_committed_creds", "bprm_committing_creds", "bprm_creds_for_exec",
                 "bprm_creds_from_file")
_FILE_HOOKS = ("file_ioctl", "file_lock", "file_open", "file_post_open", "file_receive", "mmap_file")


def _int(d: dict[str, Any], key: str) -> int:
    try:
        return int(d.get(key, 0))
    except (TypeError, ValueError):
        return 0


def _entries(v: Any) -> list[dict[str, Any]]:
    return [e if isinstance(e, dict) else {} for e in v] if isinstance(v, list) else []


def stack_traces(r: Compact, doc: dict[str, Any]) -> str:
    kp = doc.get("process_kprobe")
    if not isinstance(kp, dict):
        return ""
    out = []
    kernel = _entries(kp.get("kernel_stack_trace"))
    if kernel:
        out.append("Kernel:\n")
        for e in kernel:
            out.append(r.c(GREEN, f"   0x{_int(e, 'address'):x}:") + r.c(BLUE, f" {e.get('symbol', '')}") + "+"
                       + r.c(YELLOW, f"0x{_int(e, 'offset'):x}\n"))
    user = _entries(kp.get("user_stack_trace"))
    if user:
        out.append("User:\n")
        for e in user:
            sym = r.c(BLUE, f" {e['symbol']}") if e.get("symbol") else ""
            out.append(r.c(GREEN, f"   0x{_int(e, 'address'):x}:") + sym
                       + r.c(YELLOW, f" ({e.get('module', '')}+0x{_int(e, 'offset'):x})\n"))
    return "".join(out)


def ima_hash(r: Compact, doc: dict[str, Any]) -> str:
    lsm = doc.get("process_lsm")
    if not isinstance(lsm, dict) or not lsm.get("ima_hash"):
        return ""
    args = lsm.get("args") if isinstance(lsm.get("args"), list) else []
    first = args[0] if args and isinstance(args[0], dict) else {}
    fn = lsm.get("function_name", "")
    key = "linux_binprm_arg" if fn in _BINPRM_HOOKS else "file_arg" if fn in _FILE_HOOKS else ""
    sub = first.get(key) if key else None
    path = sub.get("path", "") if isinstance(sub, dict) else ""
    if not path:
        return ""
    return r.c(GREEN, f"   {path}") + r.c(BLUE, f" {lsm['ima_hash']}\n")
