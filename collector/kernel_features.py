"""What the running kernel offers BPF programs, probed once at collector start.

Each answer is measured, not inferred from the version: kprobes from tracefs, BPF trampolines
by loading a tiny fentry program (the build machines' kernel has BTF yet refuses them with
EPERM), BPF LSM by ``bpf`` in the active LSM list *and* a tiny LSM program loading,
``bpf_override_return`` from the kernel config, error-injectable functions from debugfs. The
policy compiler chooses each hook's mechanism from this (collector/policy/mechanism.py) and the
startup report prints ``summary()``.
"""

from __future__ import annotations

import ctypes
import errno
import gzip
import os
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path

from collector import btf_funcs

TRACEFS = Path("/sys/kernel/tracing")
DEBUGFS = Path("/sys/kernel/debug")

# bpf(2) numbers (uapi/linux/bpf.h)
_BPF_PROG_LOAD = 5
_PROG_TYPE_TRACING, _PROG_TYPE_LSM = 26, 29
_TRACE_FENTRY, _MODIFY_RETURN, _LSM_MAC = 24, 26, 27
_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), 321)


@dataclass(frozen=True)
class KernelFeatures:
    release: str
    kprobes: bool                 # kprobe_events in tracefs (CONFIG_KPROBES)
    trampolines: bool             # fentry/fexit programs load
    fmod_ret: bool                # fmod_ret programs load (on security_file_open)
    bpf_lsm: bool                 # "bpf" in the LSM list and an LSM program loads
    kprobe_override: bool         # CONFIG_BPF_KPROBE_OVERRIDE: bpf_override_return from kprobes
    syscall_tracepoints: bool
    btf: bool
    error_injection: frozenset[str] = field(default_factory=frozenset)   # functions, from debugfs
    why: dict[str, str] = field(default_factory=dict)   # feature → why it is missing

    def has(self, feature: str) -> bool:
        return feature == "" or bool(getattr(self, feature))

    def summary(self) -> str:
        names = ("kprobes", "trampolines", "fmod_ret", "bpf_lsm", "kprobe_override", "syscall_tracepoints")
        have = [n for n in names if getattr(self, n)]
        lack = [f"{n} ({self.why.get(n, 'absent')})" for n in names if not getattr(self, n)]
        return f"kernel {self.release}: hooks can use {', '.join(have) or 'nothing'}; " \
               f"not {', '.join(lack) or 'lacking nothing'}"


# the kernel the build machines run (no kprobes, no trampolines): what tests on them assume
NONE = KernelFeatures(release="", kprobes=False, trampolines=False, fmod_ret=False, bpf_lsm=False,
                      kprobe_override=False, syscall_tracepoints=True, btf=True)


def kernel_config() -> dict[str, str]:
    """CONFIG_* of the running kernel from /proc/config.gz or /boot/config-<release>; {} if neither."""
    text = ""
    try:
        text = gzip.decompress(Path("/proc/config.gz").read_bytes()).decode()
    except OSError:
        try:
            text = Path(f"/boot/config-{platform.release()}").read_text()
        except OSError:
            return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            k, _, v = line.partition("=")
            out[k] = v
    return out


def _lsms() -> list[str] | None:
    try:
        return Path("/sys/kernel/security/lsm").read_text().strip().split(",")
    except OSError:
        return None


def _error_injection() -> frozenset[str]:
    try:
        text = (DEBUGFS / "error_injection" / "list").read_text()
    except OSError:
        return frozenset()
    return frozenset(line.split()[0] for line in text.splitlines() if line.strip())


def try_load(prog_type: int, attach_type: int, btf_id: int) -> int:
    """Load ``r0 = 0; exit`` as a program of that type attached to BTF id ``btf_id``: 0 when it
    loads (it is closed at once, never attached), else the errno."""
    insns = (ctypes.c_uint64 * 2)(0x00000000000000b7, 0x0000000000000095)   # mov r0, 0; exit
    lic = ctypes.create_string_buffer(b"GPL")
    attr = (ctypes.c_uint8 * 128)()
    ctypes.c_uint32.from_buffer(attr, 0).value = prog_type
    ctypes.c_uint32.from_buffer(attr, 4).value = 2
    ctypes.c_uint64.from_buffer(attr, 8).value = ctypes.addressof(insns)
    ctypes.c_uint64.from_buffer(attr, 16).value = ctypes.addressof(lic)
    ctypes.c_uint32.from_buffer(attr, 68).value = attach_type
    ctypes.c_uint32.from_buffer(attr, 108).value = btf_id
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(_NR_BPF, _BPF_PROG_LOAD, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        return ctypes.get_errno() or errno.EINVAL
    os.close(fd)
    return 0


def _try(what: str, prog_type: int, attach_type: int, func: str, why: dict[str, str], key: str) -> bool:
    funcs = btf_funcs.vmlinux()
    proto = funcs.proto(func) if funcs else None
    if proto is None:
        why[key] = f"no BTF for {func}" if funcs else "no kernel BTF (or no bpftool)"
        return False
    err = try_load(prog_type, attach_type, proto.btf_id)
    if err:
        why[key] = f"a {what} program on {func} was refused ({errno.errorcode.get(err, err)})"
    return err == 0


def probe() -> KernelFeatures:
    why: dict[str, str] = {}
    btf = os.path.exists(btf_funcs.BTF_PATH)
    kprobes = (TRACEFS / "kprobe_events").exists()
    if not kprobes:
        why["kprobes"] = "no kprobe_events in tracefs (CONFIG_KPROBES unset)"
    tramp = _try("fentry", _PROG_TYPE_TRACING, _TRACE_FENTRY, "fd_install", why, "trampolines") if btf else False
    fmod = _try("fmod_ret", _PROG_TYPE_TRACING, _MODIFY_RETURN, "security_file_open", why, "fmod_ret") \
        if btf else False
    lsms = _lsms()
    lsm = lsms is not None and "bpf" in lsms
    if not lsm:
        why["bpf_lsm"] = ("/sys/kernel/security/lsm not readable (securityfs not mounted)" if lsms is None
                          else f"bpf is not among the active LSMs ({','.join(lsms)}; boot with lsm=...,bpf)")
    elif btf:
        lsm = _try("BPF LSM", _PROG_TYPE_LSM, _LSM_MAC, "bpf_lsm_file_open", why, "bpf_lsm")
    config = kernel_config()
    override = config.get("CONFIG_BPF_KPROBE_OVERRIDE") == "y" and kprobes
    if not override:
        why["kprobe_override"] = ("CONFIG_BPF_KPROBE_OVERRIDE is not set" if config else
                                  "kernel config not readable (no /proc/config.gz or /boot/config-<release>)")
    if not btf:
        for k in ("trampolines", "fmod_ret", "bpf_lsm"):
            why.setdefault(k, "no kernel BTF")
    return KernelFeatures(
        release=platform.release(), kprobes=kprobes, trampolines=tramp, fmod_ret=fmod, bpf_lsm=lsm,
        kprobe_override=override, syscall_tracepoints=(TRACEFS / "events" / "syscalls").is_dir(), btf=btf,
        error_injection=_error_injection(), why=why)


def with_features(base: KernelFeatures, **changes: object) -> KernelFeatures:
    """A copy with some features changed (tests; and reports of what a kernel would choose)."""
    return replace(base, **changes)  # type: ignore[arg-type]
