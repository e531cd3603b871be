"""Kernel function prototypes from the running kernel's BTF (``bpftool btf dump`` raw form).

The policy compiler needs, per kernel function a policy names: does it exist, its BTF id (to
probe whether a trampoline program loads), how many arguments it has (fentry programs may read
only those) and their C types (to check the policy's argument types against them).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from functools import cache

BTF_PATH = "/sys/kernel/btf/vmlinux"
BPFTOOL = ("/usr/sbin/bpftool", "/sbin/bpftool", "/usr/local/sbin/bpftool")

_TYPE = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'(.*)$")
_MEMBER = re.compile(r"^\s+'([^']*)' type_id=(\d+)")
_ENUMERATOR = re.compile(r"^\s+'([^']*)' val=(-?\d+)")


@dataclass(frozen=True)
class Param:
    name: str
    ctype: str           # "struct file *", "int", "unsigned long", ...


@dataclass(frozen=True)
class FuncProto:
    name: str
    btf_id: int
    params: tuple[Param, ...]
    ret: str

    @property
    def nargs(self) -> int:
        return len(self.params)


class BtfFuncs:
    def __init__(self, raw: str) -> None:
        self.types: dict[int, tuple[str, str, str]] = {}   # id → (kind, name, rest)
        self.members: dict[int, list[tuple[str, int]]] = {}
        self.funcs: dict[str, int] = {}
        self.enumerators: list[tuple[str, int]] = []
        cur = -1
        for line in raw.splitlines():
            m = _TYPE.match(line)
            if m:
                cur = int(m.group(1))
                kind, name, rest = m.group(2), m.group(3), m.group(4)
                self.types[cur] = (kind, name, rest)
                if kind == "FUNC":
                    self.funcs.setdefault(name, cur)
                continue
            mm = _MEMBER.match(line)
            if mm and cur >= 0:
                self.members.setdefault(cur, []).append((mm.group(1), int(mm.group(2))))
                continue
            me = _ENUMERATOR.match(line)
            if me and cur >= 0:
                self.enumerators.append((me.group(1), int(me.group(2))))

    def _type_id(self, rest: str, key: str = "type_id") -> int:
        m = re.search(rf"\b{key}=(\d+)", rest)
        return int(m.group(1)) if m else 0

    def ctype(self, tid: int, depth: int = 0) -> str:
        if tid == 0:
            return "void"
        kind, name, rest = self.types.get(tid, ("?", "?", ""))
        if depth > 8:
            return "?"
        if kind == "PTR":
            return self.ctype(self._type_id(rest), depth + 1) + " *"
        if kind in ("CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
            return self.ctype(self._type_id(rest), depth + 1)
        if kind in ("STRUCT", "UNION", "ENUM", "ENUM64"):
            return f"{kind.lower().replace('64', '')} {name}"
        if kind == "FUNC_PROTO":
            return "func"
        return name

    def resolved(self, tid: int) -> str:
        """The C type with typedefs resolved (``size_t`` → ``unsigned long``)."""
        kind, name, rest = self.types.get(tid, ("?", "?", ""))
        if kind == "TYPEDEF":
            return self.resolved(self._type_id(rest))
        if kind in ("CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
            return self.resolved(self._type_id(rest))
        return self.ctype(tid)

    def proto(self, name: str) -> FuncProto | None:
        fid = self.funcs.get(name)
        if fid is None:
            return None
        pid = self._type_id(self.types[fid][2])
        kind, _, rest = self.types.get(pid, ("?", "", ""))
        if kind != "FUNC_PROTO":
            return None
        params = tuple(Param(n, self.ctype(t)) for n, t in self.members.get(pid, []))
        return FuncProto(name, fid, params, self.ctype(self._type_id(rest, "ret_type_id")))


    def struct_id(self, name: str) -> int | None:
        """The BTF id of ``struct <name>`` / ``union <name>`` with members (not a forward
        declaration); None if this kernel has none."""
        if not hasattr(self, "_structs"):
            self._structs: dict[str, int] = {}
            for tid, (kind, n, _) in self.types.items():
                if kind in ("STRUCT", "UNION") and n and n != "(anon)" and tid in self.members:
                    self._structs.setdefault(n, tid)
        return self._structs.get(name)

    def has_member(self, struct: str, member: str) -> bool:
        """``struct <struct>`` has ``member``, directly or inside its anonymous structs/unions
        (as C reaches it: ``it->count`` of ``struct iov_iter``)."""
        tid = self.struct_id(struct)
        return tid is not None and self._has(tid, member, 0)

    def _has(self, tid: int, member: str, depth: int) -> bool:
        if depth > 4:
            return False
        for name, mt in self.members.get(tid, []):
            if name == member:
                return True
            if name in ("", "(anon)"):
                inner = mt
                while self.types.get(inner, ("", "", ""))[0] in ("CONST", "VOLATILE", "TYPEDEF"):
                    inner = self._type_id(self.types[inner][2])
                kind = self.types.get(inner, ("", "", ""))[0]
                if kind in ("STRUCT", "UNION") and self._has(inner, member, depth + 1):
                    return True
        return False

    def enum_value(self, name: str) -> int | None:
        """The value of enumerator ``name`` (any enum), None if this kernel has none."""
        if not hasattr(self, "_enums"):
            self._enums = dict(self.enumerators)
        return self._enums.get(name)


def _bpftool() -> str | None:
    import os
    return next((p for p in BPFTOOL if os.access(p, os.X_OK)), None)


@cache
def vmlinux() -> BtfFuncs | None:
    """The running kernel's functions; None without BTF or bpftool."""
    tool = _bpftool()
    if tool is None:
        return None
    try:
        proc = subprocess.run([tool, "btf", "dump", "file", BTF_PATH], capture_output=True, text=True,
                              check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return BtfFuncs(proc.stdout)
