"""Which kernel hook mechanisms this kernel really offers, probed cheaply by trying each one.

``probe()`` returns a ``KernelFeatures`` dataclass: one bool per mechanism and, for each missing
one, the reason in ``why``. Each probe asks the kernel itself (no compiler, no bcc, ~0.1-0.5 s
in all, most of it finding two function ids in the vmlinux BTF):

- ``kprobes``: a kprobe perf event on a kernel function (the ``kprobe`` PMU) can be opened.
- ``tracepoints``: a perf event on ``syscalls:sys_enter_getpid`` can be opened.
- ``uprobes``: a uprobe perf event (the ``uprobe`` PMU) on ``/bin/true`` can be opened.
- ``fentry``: a two-instruction BPF_PROG_TYPE_TRACING program (BPF_TRACE_FENTRY on
  ``security_file_open``) loads *and* attaches (some kernels load it and refuse the trampoline).
- ``fmod_ret``: the same with BPF_MODIFY_RETURN (returns 0: changes nothing while attached).
- ``bpf_lsm``: a BPF_PROG_TYPE_LSM program on ``bpf_lsm_file_open`` loads and attaches (needs
  ``bpf`` among the active LSMs; returns 0: allows).
- ``override_return``: a kprobe program calling ``bpf_override_return`` passes the verifier
  (CONFIG_BPF_KPROBE_OVERRIDE) and kprobes are there to run it.

Also read: ``error_injection``, the functions of debugfs's ``error_injection/list`` (where fmod_ret
and bpf_override_return may change the return value), and ``btf`` (the kernel has BTF).

Every program and event is closed at once (nothing stays attached). Needs root (CAP_BPF,
CAP_PERFMON); as another user every mechanism is reported missing with that reason.

The policy compiler chooses each hook's mechanism from this (collector/policy/mechanism.py names
features by their field: ``trampolines`` for fentry/fexit, ``kprobe_override`` for
override_return, ``syscall_tracepoints`` for tracepoints); the startup report prints the
mechanism names. ``why`` answers under both names.
``collector/capabilities.py`` keeps the older file-presence summary the collector logs.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

MECHANISMS = ("kprobes", "fentry", "fmod_ret", "bpf_lsm", "override_return", "tracepoints", "uprobes")

_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), 321)
_NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}.get(platform.machine(), 298)
_BPF_PROG_LOAD, _BPF_RAW_TRACEPOINT_OPEN = 5, 17
_PROG_KPROBE, _PROG_TRACING, _PROG_LSM = 2, 26, 29
_TRACE_FENTRY, _MODIFY_RETURN, _LSM_MAC = 24, 26, 27
_EXIT0 = bytes.fromhex("b700000000000000" "9500000000000000")  # r0 = 0; exit
# r2 = 0; call bpf_override_return (58); r0 = 0; exit
_OVERRIDE = bytes.fromhex("b702000000000000" "850000003a000000") + _EXIT0
_BTF_KIND_FUNC = 12
_libc = ctypes.CDLL(None, use_errno=True)


# mechanism name (reports) → KernelFeatures field (the policy compiler's feature names)
FIELD = {"kprobes": "kprobes", "fentry": "trampolines", "fmod_ret": "fmod_ret", "bpf_lsm": "bpf_lsm",
         "override_return": "kprobe_override", "tracepoints": "syscall_tracepoints", "uprobes": "uprobes"}
DEBUGFS = Path("/sys/kernel/debug")
BTF_PATH = "/sys/kernel/btf/vmlinux"


@dataclass(frozen=True)
class KernelFeatures:
    release: str
    kprobes: bool = False               # kprobe perf events (CONFIG_KPROBES)
    trampolines: bool = False           # fentry/fexit programs load and attach
    fmod_ret: bool = False              # fmod_ret programs load and attach
    bpf_lsm: bool = False               # "bpf" among the LSMs and an LSM program attaches
    kprobe_override: bool = False       # bpf_override_return passes the verifier, and kprobes
    syscall_tracepoints: bool = False
    uprobes: bool = False
    btf: bool = False
    error_injection: frozenset[str] = field(default_factory=frozenset, hash=False)  # from debugfs
    why: dict[str, str] = field(default_factory=dict, hash=False)  # mechanism/feature → why it is missing

    @property
    def fentry(self) -> bool:
        return self.trampolines

    @property
    def override_return(self) -> bool:
        return self.kprobe_override

    @property
    def tracepoints(self) -> bool:
        return self.syscall_tracepoints

    def has(self, feature: str) -> bool:
        """A feature by its field name ("" = always)."""
        return feature == "" or bool(getattr(self, feature))

    def available(self) -> list[str]:
        return [m for m in MECHANISMS if getattr(self, FIELD[m])]

    def missing(self) -> list[str]:
        return [m for m in MECHANISMS if not getattr(self, FIELD[m])]

    def summary(self) -> str:
        """``kernel 6.18.0: tracepoints, uprobes; not kprobes, fentry, ...``"""
        have = ", ".join(self.available()) or "none"
        lack = ", ".join(self.missing())
        return f"kernel {self.release}: {have}" + (f"; not {lack}" if lack else "")


# the build machines' kernel (no kprobes, no trampolines): what compiler tests assume by default
NONE = KernelFeatures(release="", syscall_tracepoints=True, uprobes=True, btf=True)


def with_features(base: KernelFeatures, **changes: object) -> KernelFeatures:
    """A copy with some features changed (tests; and reports of what a kernel would choose)."""
    return replace(base, **changes)  # type: ignore[arg-type]


def _error_injection() -> frozenset[str]:
    try:
        text = (DEBUGFS / "error_injection" / "list").read_text()
    except OSError:
        return frozenset()
    return frozenset(line.split()[0] for line in text.splitlines() if line.strip())


def _with_both_names(why: dict[str, str]) -> dict[str, str]:
    return {**why, **{FIELD[m]: r for m, r in why.items() if m in FIELD}}


class _Refused(Exception):
    pass


def _syscall(nr: int, *args: object) -> int:
    fd = _libc.syscall(nr, *args)
    if fd < 0:
        err = ctypes.get_errno()
        raise _Refused(os.strerror(err) + f" (errno {err})")
    return fd


def _prog_load(prog_type: int, insns: bytes, attach_type: int = 0, btf_id: int = 0) -> int:
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQ", attr, 0, prog_type, len(insns) // 8, ctypes.addressof(code), ctypes.addressof(lic))
    struct.pack_into("<I", attr, 68, attach_type)
    struct.pack_into("<I", attr, 108, btf_id)
    return _syscall(_NR_BPF, _BPF_PROG_LOAD, attr, ctypes.c_uint(128))


def _attach_and_close(prog_type: int, attach_type: int, btf_id: int) -> None:
    prog = _prog_load(prog_type, _EXIT0, attach_type, btf_id)
    try:
        attr = ctypes.create_string_buffer(16)
        struct.pack_into("<QI", attr, 0, 0, prog)
        os.close(_syscall(_NR_BPF, _BPF_RAW_TRACEPOINT_OPEN, attr, ctypes.c_uint(16)))
    finally:
        os.close(prog)


def _perf_open(pmu_type: int, config: int = 0, config1: bytes | None = None, config2: int = 0) -> None:
    keep = ctypes.create_string_buffer(config1) if config1 is not None else None
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQ", attr, 0, pmu_type, 128, config)
    struct.pack_into("<Q", attr, 40, 1)  # disabled
    struct.pack_into("<QQ", attr, 56, ctypes.addressof(keep) if keep else 0, config2)
    os.close(_syscall(_NR_PERF_EVENT_OPEN, attr, -1, 0, -1, 8))  # pid -1, cpu 0, FD_CLOEXEC


def _pmu_type(name: str) -> int:
    try:
        return int(Path(f"/sys/bus/event_source/devices/{name}/type").read_text())
    except OSError:
        raise _Refused(f"no {name} PMU (CONFIG_{name.upper()}_EVENTS unset?)") from None


def _btf_func_ids(names: list[str], path: str = BTF_PATH) -> dict[str, int]:
    """BTF type ids of the FUNC entries with these names, read from the kernel's BTF."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise _Refused(f"no kernel BTF ({exc.strerror})") from None
    magic, _, _, hdr_len, type_off, type_len, str_off, _ = struct.unpack_from("<HBBIIIII", data, 0)
    if magic != 0xEB9F:
        raise _Refused("kernel BTF unreadable")
    strs = hdr_len + str_off
    wanted: dict[int, str] = {}
    for name in names:
        at = data.find(b"\0" + name.encode() + b"\0", strs)
        if at >= 0:
            wanted[at + 1 - strs] = name
    extra = {1: 4, 3: 12, 14: 4, 17: 4}
    per_member = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}
    found: dict[str, int] = {}
    pos, end, tid = hdr_len + type_off, hdr_len + type_off + type_len, 1
    unpack = struct.Struct("<III").unpack_from
    while pos < end and len(found) < len(wanted):
        name_off, info, _ = unpack(data, pos)
        kind = (info >> 24) & 0x1F
        if kind == _BTF_KIND_FUNC and name_off in wanted:
            found[wanted[name_off]] = tid
        pos += 12 + extra.get(kind, 0) + per_member.get(kind, 0) * (info & 0xFFFF)
        tid += 1
    return found


def _tracefs() -> Path:
    for p in (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing")):
        if (p / "events").is_dir():
            return p
    raise _Refused("tracefs not mounted")


def _try(results: dict[str, bool], why: dict[str, str], name: str, fn: object) -> None:
    try:
        fn()  # type: ignore[operator]
        results[name] = True
    except _Refused as exc:
        results[name] = False
        why[name] = str(exc)
    except OSError as exc:
        results[name] = False
        why[name] = exc.strerror or str(exc)


def probe() -> KernelFeatures:
    """Try each mechanism once; see the module's docstring."""
    release = platform.release()
    if os.geteuid() != 0:
        return KernelFeatures(release, btf=os.path.exists(BTF_PATH),
                              why=_with_both_names({m: "not root" for m in MECHANISMS}))
    res: dict[str, bool] = {}
    why: dict[str, str] = {}
    _try(res, why, "kprobes", lambda: _perf_open(_pmu_type("kprobe"), config1=b"security_file_open"))
    _try(res, why, "uprobes", lambda: _perf_open(_pmu_type("uprobe"),
                                                  config1=os.path.realpath("/bin/true").encode()))

    def tracepoint() -> None:
        tp = _tracefs() / "events/syscalls/sys_enter_getpid/id"
        _perf_open(2, config=int(tp.read_text()))  # PERF_TYPE_TRACEPOINT

    _try(res, why, "tracepoints", tracepoint)
    try:
        ids = _btf_func_ids(["security_file_open", "bpf_lsm_file_open"])
    except _Refused as exc:
        ids = {}
        for m in ("fentry", "fmod_ret", "bpf_lsm"):
            why[m] = str(exc)

    def tracing(kind: int, attach: int, fn: str) -> None:
        if fn not in ids:
            raise _Refused(f"{fn} not in the kernel BTF")
        _attach_and_close(kind, attach, ids[fn])

    if ids:
        _try(res, why, "fentry", lambda: tracing(_PROG_TRACING, _TRACE_FENTRY, "security_file_open"))
        _try(res, why, "fmod_ret", lambda: tracing(_PROG_TRACING, _MODIFY_RETURN, "security_file_open"))
        _try(res, why, "bpf_lsm", lambda: tracing(_PROG_LSM, _LSM_MAC, "bpf_lsm_file_open"))

    def override() -> None:
        os.close(_prog_load(_PROG_KPROBE, _OVERRIDE))
        if not res.get("kprobes"):
            raise _Refused("the helper loads but kprobes are missing")

    _try(res, why, "override_return", override)
    return KernelFeatures(release, **{FIELD[k]: v for k, v in res.items() if k in FIELD},
                          btf=os.path.exists(BTF_PATH), error_injection=_error_injection(),
                          why=_with_both_names(why))


if __name__ == "__main__":
    import time

    t0 = time.monotonic()
    feats = probe()
    print(feats.summary(), f"({time.monotonic() - t0:.3f}s)")
    for mech, reason in feats.why.items():
        print(f"  {mech}: {reason}")
