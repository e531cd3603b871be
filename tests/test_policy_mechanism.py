"""Mechanism per hook, chosen from what the kernel offers (collector/policy/mechanism.py TABLE).

The choices are checked by compiling policies for feature sets as the stock kernels have them
(collector/kernel_features.py, values measured in the VM: tests/guest/test_guest_kfunc.py loads
them there); on this machine's kernel every refusal names the missing feature. One bcc compile:
kprobe and kretprobe programs load on this kernel (they share the uprobe program type) even
though kprobes cannot attach here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import bpf_unavailable_reason, skip_or_fail

from collector import btf_funcs, kernel_features
from collector.policy import compiler, parser
from collector.policy.model import PolicyError

HOST_NS = [0] * 10
NONE = kernel_features.NONE
# Debian 6.12 as probed in the VM (kprobes, trampolines, fmod_ret, BPF LSM; no kprobe override)
STOCK = kernel_features.with_features(NONE, release="6.12-like", kprobes=True, trampolines=True, fmod_ret=True,
                                      bpf_lsm=True)
KPROBES_ONLY = kernel_features.with_features(NONE, release="kprobes-only", kprobes=True,
                                             why={"trampolines": "BPF trampolines refused (EPERM)",
                                                  "fmod_ret": "fmod_ret refused (EPERM)",
                                                  "bpf_lsm": "bpf is not among the active LSMs",
                                                  "kprobe_override": "CONFIG_BPF_KPROBE_OVERRIDE is not set"})
HAVE_BTF = btf_funcs.vmlinux() is not None


def policy(body: str, name: str = "m") -> str:
    return f"apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: {name}\nspec:\n{body}"


def compile_for(body: str, features: kernel_features.KernelFeatures) -> compiler.Compiled:
    (p,) = parser.parse_text(policy(body), "m.yaml")
    return compiler.compile_policy(p, 3, HOST_NS, features)


def mechs(c: compiler.Compiled) -> list[tuple[str, str]]:
    return [(h.mechanism, h.serve) for h in c.hooks]


FILE_PERM = """  kprobes:
  - call: security_file_permission
    args:
    - index: 0
      type: file
    - index: 1
      type: int
"""
FILE_PERM_RET = FILE_PERM.replace("    args:", "    return: true\n    returnArg:\n      index: 0\n      type: int\n"
                                  "    args:", 1)
LSM_OPEN = """  lsmhooks:
  - hook: file_open
    args:
    - index: 0
      type: file
"""


def override(call: str, syscall: bool = False) -> str:
    return (f"  kprobes:\n  - call: {call}\n" + ("    syscall: true\n" if syscall else "")
            + "    selectors:\n    - matchActions:\n      - action: Override\n        argError: -13\n")


needs_btf = pytest.mark.skipif(not HAVE_BTF, reason="kernel BTF (or bpftool) needed to read function prototypes")


@needs_btf
def test_kernel_functions_by_fentry_fexit_where_trampolines_load_else_kprobes() -> None:
    assert mechs(compile_for(FILE_PERM, STOCK)) == [("fentry", "fentry security_file_permission")]
    assert mechs(compile_for(FILE_PERM_RET, STOCK)) == [("fexit", "fexit security_file_permission")]
    assert mechs(compile_for(FILE_PERM, KPROBES_ONLY)) == [("kprobe", "kprobe security_file_permission")]
    c = compile_for(FILE_PERM_RET, KPROBES_ONLY)
    assert mechs(c) == [("kretprobe", "kretprobe security_file_permission")]
    # the arguments are kept at the entry and the event made at the return
    assert c.kattach == [("kprobe", "security_file_permission"), ("kretprobe", "security_file_permission")]
    assert "PT_REGS_RC(ctx)" in c.text and "int tp_kretprobe__security_file_permission(" in c.text


def test_refusals_name_the_missing_feature() -> None:
    with pytest.raises(PolicyError, match=r"kernel function 'security_file_permission' cannot be served: "
                                          r"this kernel has no kprobes .* refuses BPF trampolines"):
        compile_for(FILE_PERM, NONE)
    probed = kernel_features.probe()
    if probed.kprobes or probed.trampolines:
        pytest.skip("this kernel can hook kernel functions")
    with pytest.raises(PolicyError, match=r"cannot be served: fentry: .*; kprobe: no kprobe PMU"):
        compile_for(FILE_PERM, probed)
    with pytest.raises(PolicyError, match=r"lsmhook 'file_open' cannot be served: lsm: "):
        compile_for(LSM_OPEN, probed)


@needs_btf
def test_lsmhooks_as_bpf_lsm_programs() -> None:
    c = compile_for(LSM_OPEN, STOCK)
    assert mechs(c) == [("lsm", "lsm file_open")]
    assert "LSM_PROBE(file_open)" in c.text
    with pytest.raises(PolicyError, match="lsm: bpf is not among the active LSMs"):
        compile_for(LSM_OPEN, KPROBES_ONLY)


@needs_btf
@pytest.mark.parametrize(("features", "call", "want"), [
    # an LSM hook where BPF LSM works (runs before the effect); security_bprm_check's hook has another name
    (STOCK, "security_file_open", ("lsm", "lsm file_open (Override)")),
    (STOCK, "security_bprm_check", ("lsm", "lsm bprm_check_security (Override)")),
    # fmod_ret on security_* where BPF LSM is off
    (kernel_features.with_features(STOCK, bpf_lsm=False), "security_file_open",
     ("fmod_ret", "fmod_ret security_file_open (Override)")),
    # bpf_override_return from a kprobe on an error-injectable function
    (kernel_features.with_features(KPROBES_ONLY, kprobe_override=True,
                                   error_injection=frozenset({"security_file_open"})),
     "security_file_open", ("kprobe+bpf_override_return", "kprobe+bpf_override_return security_file_open (Override)")),
], ids=["lsm", "lsm-renamed-hook", "fmod_ret", "kprobe-override"])
def test_override_mechanism(features: kernel_features.KernelFeatures, call: str, want: tuple[str, str]) -> None:
    c = compile_for(override(call), features)
    assert mechs(c) == [want]
    assert "ovr = -13;" in c.text


@needs_btf
def test_override_refused_with_each_reason() -> None:
    with pytest.raises(PolicyError, match=r"matchActions\[0\]\.action: Override cannot be served: .*"
                                          r"fmod_ret: .*refused.*kprobe\+bpf_override_return: "
                                          r"CONFIG_BPF_KPROBE_OVERRIDE is not set"):
        compile_for(override("security_file_open"), KPROBES_ONLY)
    # a function neither security_* nor error-injectable: no mechanism may change its return
    with pytest.raises(PolicyError, match=r"vfs_write is neither security_\* nor error-injectable"):
        compile_for(override("vfs_write"), STOCK)


@needs_btf
def test_syscall_hooks_keep_the_tracepoints_unless_overridden() -> None:
    body = "  kprobes:\n  - call: sys_write\n    syscall: true\n    args:\n    - index: 0\n      type: int\n"
    assert mechs(compile_for(body, STOCK)) == [("tracepoint", "syscalls:sys_enter_write")]
    # Override of a syscall: fmod_ret on its wrapper when the wrapper is error-injectable
    inj = kernel_features.with_features(STOCK, error_injection=frozenset({"__x64_sys_write"}))
    c = compile_for(override("sys_write", syscall=True), inj)
    assert mechs(c) == [("fmod_ret", "fmod_ret __x64_sys_write (Override)")]
    assert "struct pt_regs *sr = (struct pt_regs *)ctx[0];" in c.text   # arguments from the wrapper's regs
    with pytest.raises(PolicyError, match="__x64_sys_write is neither security_"):
        compile_for(override("sys_write", syscall=True), STOCK)


@needs_btf
def test_fd_install_followfd_on_the_real_function_where_it_can_be_hooked() -> None:
    seed = (Path(__file__).parent / "data" / "seed" / "deny-tmp-forbidden-write.yaml").read_text()
    (p,) = parser.parse_text(seed, "seed.yaml")
    stock = compiler.compile_policy(p, 3, HOST_NS, STOCK)
    assert [h.mechanism for h in stock.hooks] == ["fentry", "tracepoint", "tracepoint", "tracepoint"]
    assert "KFUNC_PROBE(fd_install)" in stock.text
    here = compiler.compile_policy(p, 3, HOST_NS, NONE)   # today's emulation, unchanged
    assert [h.mechanism for h in here.hooks][0] == "tracepoint (fd_install emulation)"
    assert here.hooks[0].serve == "exits of open, openat, openat2, creat"


@needs_btf
def test_typed_kernel_arguments_checked_against_btf() -> None:
    bad = FILE_PERM.replace("type: file", "type: path", 1)
    with pytest.raises(PolicyError, match=r"a path argument reads struct path \*; argument 0 of "
                                          r"security_file_permission is struct file \*"):
        compile_for(bad, STOCK)
    with pytest.raises(PolicyError, match="not in this kernel's BTF"):
        compile_for(FILE_PERM.replace("security_file_permission", "no_such_kernel_function_x"), STOCK)
    c = compile_for("""  kprobes:
  - call: security_path_truncate
    args:
    - index: 0
      type: path
  - call: security_bprm_check
    args:
    - index: 0
      type: linux_binprm
  - call: commit_creds
    args:
    - index: 0
      type: nop
""", STOCK)
    assert "tp_path_ptr(pb, task, (struct path *)a[0]" in c.text
    assert "((struct linux_binprm *)a[0])->file" in c.text


@pytest.mark.kernel
def test_kprobe_programs_compile_and_load_here() -> None:
    """kprobe + kretprobe programs of a kernel-function policy: compiled by bcc and loaded by this
    kernel's verifier (the program type kprobes and uprobes share); attaching needs kprobes."""
    reason = bpf_unavailable_reason()
    if reason:
        skip_or_fail(reason)
    if not HAVE_BTF:
        skip_or_fail("kernel BTF needed")
    from bcc import BPF

    from collector import loader

    loader.prepare()
    c = compile_for(FILE_PERM_RET + """    selectors:
    - matchArgs:
      - index: 0
        operator: Prefix
        values: ["/etc/"]
  - call: security_path_truncate
    args:
    - index: 0
      type: path
""", KPROBES_ONLY)
    bpf = loader.load_program("kprobe policy", text=c.text)
    try:
        names = re.findall(r"int (tp_k(?:ret)?probe__\w+)\(", c.text)
        assert sorted(names) == ["tp_kprobe__security_file_permission", "tp_kprobe__security_path_truncate",
                                 "tp_kretprobe__security_file_permission"]
        for name in names:
            assert bpf.load_func(name, BPF.KPROBE).fd >= 0
    finally:
        bpf.cleanup()
