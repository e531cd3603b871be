"""Tetragon's library as written (collector/policy/tetragon_compat.py and the parser's spellings):
an Override on a syscall the kernel cannot change at its wrapper served on the syscall's LSM hook,
an Override beside ``return: true`` split into an enforcing and a reporting program, Tetragon's
tracepoint argument numbering (``common_*`` fields counted) and ``InMap`` on a syscalls list,
uprobes' ``symbol``, actions in any case, a trailing NUL in string values.

Compiles run against a Debian 6.12-like feature set (BPF LSM, trampolines, kprobes, no error
injection: collector/kernel_features.py ``with_features``) and this machine's BTF; the tracepoint
policy loads here for real (raw_syscalls:sys_enter reaches this kernel) and its events are checked.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from conftest import bpf_unavailable_reason, skip_or_fail

from bpf import records
from collector import kernel_features, loader, procfs
from collector.drain import RecordQueue
from collector.policy import compiler, parser
from collector.policy.manager import PolicyManager
from collector.policy.model import PolicyError

DEBIAN_612 = kernel_features.with_features(kernel_features.NONE, release="6.12.0-sim", bpf_lsm=True,
                                           fmod_ret=True, kprobes=True, trampolines=True, btf=True)

HEAD = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: {name}\nspec:\n"


def compile_text(text: str, feats: kernel_features.KernelFeatures = DEBIAN_612) -> compiler.Compiled:
    (p,) = parser.parse_text(text, "t.yaml")
    return compiler.compile_policy(p, 1, procfs.host_namespaces(), feats)


LINKAT = HEAD.format(name="linkat-override") + """  kprobes:
  - call: "sys_linkat"
    syscall: true
    args:
    - {index: 0, type: int}
    - {index: 1, type: string}
    - {index: 2, type: int}
    - {index: 3, type: string}
    - {index: 4, type: int}
    selectors:
    - matchArgs:
      - index: 1
        operator: Equal
        values: ["/etc/passwd\\0"]
      matchActions:
      - action: Override
        argError: -1
"""


def test_syscall_override_served_on_its_lsm_hook() -> None:
    c = compile_text(LINKAT)
    (h,) = c.hooks
    assert (h.mechanism, h.serve) == ("lsm", "lsm path_link (Override)")
    assert [(a.index, a.type) for a in h.hook.args] == [(0, "dentry"), (2, "dentry")]
    assert h.hook.selectors[0].match_args[0].index == 0
    assert any("served on LSM hook path_link" in n and "0, 2, 4 not seen there" in n for n in c.notices)
    assert b"/etc/passwd" in c.strings and b"/etc/passwd\0" not in c.strings   # the NUL is no part of it
    assert "bpf_lsm" not in c.text or "path_link" in c.text


NUL_NAMES = HEAD.format(name="nul-names") + """  kprobes:
  - call: "security_file_permission"
    syscall: false
    args:
    - {index: 0, type: file}
    - {index: 1, type: int}
    selectors:
    - matchArgs:
      - {index: 0, operator: Equal, values: ["/etc/shadow\\0", "/etc/gshadow"]}
      - {index: 0, operator: Prefix, values: ["/etc/ssh/\\0"]}
      matchBinaries:
      - {operator: In, values: ["/usr/bin/cat\\0"]}
"""


def test_trailing_nul_dropped_once_at_parse_for_names_only() -> None:
    """One strip at parse time: the string sets, the inode sets and the uncaught-road counter all
    see the clean name; an integer value with a NUL stays refused."""
    from collector.policy import uncaught  # noqa: PLC0415

    (p,) = parser.parse_text(NUL_NAMES, "t.yaml")
    sel = p.hooks[0].selectors[0]
    assert [f.values for f in sel.match_args] == [["/etc/shadow", "/etc/gshadow"], ["/etc/ssh/"]]
    assert sel.match_binaries[0].values == ["/usr/bin/cat"]
    prot = uncaught.protected_of(p.name, p.hooks)
    assert prot is not None and prot.exact == {"/etc/shadow", "/etc/gshadow"} and prot.prefixes == ["/etc/ssh/"]
    c = compiler.compile_policy(p, 1, procfs.host_namespaces(), DEBIAN_612)
    assert not any(b"\0" in s for s in c.strings)
    assert {b"/etc/shadow", b"/etc/ssh/", b"/usr/bin/cat"} <= set(c.strings)
    assert sorted((how, v) for _sid, how, v in c.inode_sets) == [("equal", ["/etc/shadow", "/etc/gshadow"]),
                                                                 ("prefix", ["/etc/ssh/"])]
    bad = NUL_NAMES.replace('- {index: 0, operator: Prefix, values: ["/etc/ssh/\\0"]}',
                            '- {index: 1, operator: Equal, values: ["5\\0"]}')
    assert bad != NUL_NAMES
    with pytest.raises(PolicyError) as e:
        compile_text(bad)
    assert "matchArgs[1].values" in e.value.path


def test_syscall_override_kept_at_the_wrapper_where_error_injection_allows() -> None:
    feats = kernel_features.with_features(DEBIAN_612, error_injection=frozenset({"__x64_sys_linkat"}))
    (h,) = compile_text(LINKAT, feats).hooks
    assert (h.mechanism, h.serve) == ("fmod_ret", "fmod_ret __x64_sys_linkat (Override)")


def test_syscall_override_on_an_argument_the_hook_does_not_see_is_refused() -> None:
    text = LINKAT.replace("index: 1\n        operator: Equal", "index: 4\n        operator: Equal")
    with pytest.raises(PolicyError) as e:
        compile_text(text)
    assert e.value.line and "does not see argument 4" in e.value.reason and "path_link" in e.value.reason


def test_socket_override_keeps_its_arguments() -> None:
    text = HEAD.format(name="sock") + """  kprobes:
  - call: sys_socket
    syscall: true
    args: [{index: 0, type: int}, {index: 1, type: int}, {index: 2, type: int}]
    selectors:
    - matchArgs: [{index: 0, operator: Equal, values: ["38"]}]
      matchActions: [{action: Override, argError: -1}]
"""
    (h,) = compile_text(text).hooks
    assert h.serve == "lsm socket_create (Override)"
    assert [(a.index, a.type) for a in h.hook.args] == [(0, "int"), (1, "int"), (2, "int")]


def test_override_beside_a_return_value_is_two_programs() -> None:
    text = HEAD.format(name="modreq") + """  kprobes:
  - call: security_kernel_module_request
    return: true
    args: [{index: 0, type: string}]
    returnArg: {index: 0, type: int}
    selectors:
    - matchNamespaces: [{namespace: Pid, operator: NotIn, values: [host_ns]}]
      matchActions: [{action: Override, argError: -1}, {action: Sigkill}]
"""
    (p,) = parser.parse_text(text, "t.yaml")
    enforce, report = p.hooks
    assert (enforce.return_, [a.action for a in enforce.selectors[0].match_actions]) == \
        (False, ["Override", "Sigkill", "NoPost"])
    assert (report.return_, report.return_arg is not None, report.selectors[0].match_actions) == (True, True, [])
    assert report.selectors[0].match_namespaces == enforce.selectors[0].match_namespaces
    assert any("two programs" in n for n in p.notices)
    c = compiler.compile_policy(p, 1, procfs.host_namespaces(), DEBIAN_612)
    assert [h.mechanism for h in c.hooks] == ["lsm", "fexit"]
    assert "(s64)(s32)ctx[" in c.text   # an int return: sign-extended from the low 32 bits (-EPERM, not 4294967295)


def test_tetragon_spellings() -> None:
    text = HEAD.format(name="spell") + """  uprobes:
  - path: /bin/sh
    symbol: main
    selectors:
    - matchActions: [{action: SigKill}]
"""
    (p,) = parser.parse_text(text, "t.yaml")
    (h,) = p.hooks
    assert (h.call, h.binary, h.selectors[0].match_actions[0].action) == ("main", "/bin/sh", "Sigkill")
    (k,) = parser.parse_text(HEAD.format(name="ul") + "  kprobes:\n  - call: sys_clone\n    syscall: true\n"
                             "    args: [{index: 0, type: unsigned long}]\n", "t.yaml")
    assert k.hooks[0].args[0].type == "uint64"   # Tetragon's alias
    with pytest.raises(PolicyError) as e:
        parser.parse_text(text.replace("SigKill", "Sigkil"), "t.yaml")
    assert e.value.line == 10 and 'unknown action "Sigkil"' in e.value.reason


def test_inmap_list_of_syscalls_needs_a_syscalls_list() -> None:
    text = HEAD.format(name="l") + """  lists:
  - {name: fns, values: [do_dup2]}
  tracepoints:
  - subsystem: raw_syscalls
    event: sys_enter
    args: [{index: 4, type: uint64}]
    selectors:
    - matchArgs: [{index: 4, operator: InMap, values: ["list:fns"]}]
"""
    with pytest.raises(PolicyError) as e:
        parser.parse_text(text, "t.yaml")
    assert e.value.line == 13 and "no list of type syscalls" in e.value.reason


DUPS = HEAD.format(name="tp-dups") + """  lists:
  - name: dups
    type: syscalls
    values: [sys_dup, sys_dup2]
  tracepoints:
  - subsystem: raw_syscalls
    event: sys_enter
    args:
    - index: 4
      type: uint64
    selectors:
    - matchArgs:
      - index: 4
        operator: InMap
        values: ["list:dups"]
"""


@pytest.fixture(scope="module")
def dups() -> Iterator[tuple[PolicyManager, int]]:
    reason = bpf_unavailable_reason()
    if reason:
        skip_or_fail(reason)
    loader.prepare()
    mgr = PolicyManager(RecordQueue(1_000_000, asyncio.new_event_loop()), procfs.host_namespaces())
    try:
        (lp,) = mgr.load_text(DUPS, "tp-dups.yaml")
        assert any("Tetragon's" in n and "4→id" in n for n in lp.compiled.notices)
        yield mgr, lp.policy_id
    finally:
        mgr.stop()


def _events(mgr: PolicyManager, seen: list[tuple[int, records.HookBody]]) -> None:
    for raw in mgr.queue.take(1_000_000):
        rec = records.decode(raw)
        if isinstance(rec, records.HookRecord):
            seen.append((rec.header.pid, records.decode_hook(rec)))


@pytest.mark.kernel
def test_tracepoint_indexes_and_syscall_list_in_the_kernel(dups: tuple[PolicyManager, int]) -> None:
    mgr, pid_ = dups
    code = "import ctypes, os, time\nctypes.CDLL(None).dup(0); os.dup2(0, 9)\ntime.sleep(0.2)"
    dup = subprocess.Popen([sys.executable, "-c", code])
    quiet = subprocess.Popen(["/bin/true"])
    assert dup.wait(30) == 0 and quiet.wait(30) == 0
    seen: list[tuple[int, records.HookBody]] = []
    end = time.monotonic() + 10
    while time.monotonic() < end and not any(p == dup.pid for p, _ in seen):
        _events(mgr, seen)
        time.sleep(0.1)
    time.sleep(0.3)
    _events(mgr, seen)
    mine = [b for _, b in seen if b.policy_id == pid_]
    ids = {int.from_bytes(b.args[0].data[:8], "little") for b in mine}
    assert ids and ids <= {32, 33}, f"only dup (32) and dup2 (33) pass the InMap: {ids}"
    from_dup = {int.from_bytes(b.args[0].data[:8], "little") for p, b in seen if p == dup.pid and b.policy_id == pid_}
    assert from_dup == {32, 33}
    assert not [b for p, b in seen if p == quiet.pid and b.policy_id == pid_]


def test_override_on_a_hook_bpf_lsm_may_not_attach_to_goes_to_fmod_ret() -> None:
    """6.12 refuses BPF LSM programs on inode_copy_up_xattr ("attach_btf_id ... points to disabled
    hook", seen loading Tetragon's cve-2023-2640 policy in the guest): fmod_ret on the security_*
    function instead; an lsmhooks: entry on it is refused with the reason."""
    text = HEAD.format(name="copyup") + """  kprobes:
  - call: security_inode_copy_up_xattr
    args: [{index: 0, type: string}]
    selectors:
    - matchArgs: [{index: 0, operator: Equal, values: ["security.capability\\\\0"]}]
      matchActions: [{action: Override, argError: 1}]
"""
    (h,) = compile_text(text).hooks
    assert h.serve == "fmod_ret security_inode_copy_up_xattr (Override)"
    with pytest.raises(PolicyError) as e:
        compile_text(HEAD.format(name="l") + "  lsmhooks:\n  - hook: inode_copy_up_xattr\n")
    assert e.value.line == 7 and "may not attach to inode_copy_up_xattr" in e.value.reason



def test_override_with_an_error_bpf_lsm_may_not_return_goes_to_fmod_ret() -> None:
    """A BPF LSM program may return only 0 or -4095..-1 (6.12's verifier refused Tetragon's
    security-socket-connect-block-others, argError 1, with "R0 has smin=1 smax=1 should have been
    in [-4095, 0]", seen with the library count's --load): fmod_ret on the security_* function
    takes any value; a negative errno stays on the LSM hook."""
    text = HEAD.format(name="connect") + """  kprobes:
  - call: security_socket_connect
    syscall: false
    args: [{index: 0, type: socket}]
    selectors:
    - matchActions: [{action: Override, argError: 1}]
"""
    (h,) = compile_text(text).hooks
    assert h.serve == "fmod_ret security_socket_connect (Override)"
    (h,) = compile_text(text.replace("argError: 1", "argError: -13")).hooks
    assert h.serve == "lsm socket_connect (Override)"
    no_fmod_ret = kernel_features.with_features(DEBIAN_612, fmod_ret=False)
    with pytest.raises(PolicyError) as e:
        compile_text(text, no_fmod_ret)
    assert "lsm: argError 1 is outside what a BPF LSM program may return (0 or -4095..-1" in e.value.reason
    lsm = HEAD.format(name="l") + """  lsmhooks:
  - hook: socket_connect
    selectors:
    - matchActions: [{action: Override, argError: 1}]
"""
    with pytest.raises(PolicyError) as e:
        compile_text(lsm)
    assert e.value.line == 9 and e.value.reason.startswith("argError 1 is outside what a BPF LSM program")
    (h,) = compile_text(lsm.replace("argError: 1", "argError: -1")).hooks
    assert h.serve == "lsm socket_connect"

WALKS = HEAD.format(name="walks") + """  kprobes:
  - call: "security_socket_connect"
    syscall: false
    args:
    - {index: 1, type: sockaddr}
    data:
    - {index: 0, source: current_task, type: uint32, resolve: cred.euid.val, label: euid}
    selectors:
    - matchData:
      - {index: 0, operator: NotEqual, values: ["0"]}
      matchActions:
      - action: NotifyEnforcer
        argError: -1
  lsmhooks:
  - hook: bprm_check_security
    args:
    - {index: 0, type: linux_binprm, extractParam: mm.owner.real_parent.comm, overwriteType: string}
  enforcers:
  - calls: ["security_socket_connect"]
"""


def test_btf_walks_data_and_enforcer_as_c() -> None:
    """resolve from the current task, extractParam through pointers to a char array, matchData on
    the data entry, the enforcer as BPF LSM on the call's hook (collector/policy/btfwalk.py,
    enforcers.py)."""
    c = compile_text(WALKS)
    assert [h.mechanism for h in c.hooks] == ["fentry", "lsm"]
    assert ("lsm", "socket_connect") in c.kattach
    for line in ("TP_RD(p, ((struct task_struct *)p)->cred);", "p = (u64)&((struct cred *)p)->euid;",
                 "TP_RD(v, ((kuid_t *)p)->val);", "((u64)a[6] & 4294967295ULL) != 0ULL",
                 "TP_RD(p, ((struct mm_struct *)p)->owner);", "p = (u64)&((struct task_struct *)p)->comm;",
                 "enforcer_marks.update(&eid, &e);", "ovr = -1;"):
        assert line in c.text, line
    # events: the data entry follows the arguments, with its label (the catalog lists it after args)
    from bpf import records
    from collector.policy.manager import Loaded
    from enricher.policy_events import typed_arg
    (hook, _) = Loaded(c.policy, c, 1, None, None).catalog()["hooks"]
    assert [(a["type"], a["label"]) for a in hook["args"]] == [("sockaddr", ""), ("uint32", "euid")]
    euid = records.HookArg(records.ARG_UINT, 0, 8, (0).to_bytes(8, "little"))
    assert typed_arg(euid, hook["args"][1]["label"]) == {"label": "euid", "uint_arg": 0}


@pytest.mark.parametrize("old, new, why", [
    ("cred.euid.val", "cred.euidx.val",
     "t.yaml:12: spec.kprobes[0].data[0].resolve: cred.euidx.val: struct cred (at cred) has no member 'euidx'"),
    ("mm.owner.real_parent.comm", "mm.owner.comm.x",
     "spec.lsmhooks[0].args[0].resolve: mm.owner.comm.x: member 'comm' of struct task_struct (at mm.owner) is "
     "char[16]"),
    ("type: uint32, resolve", "type: string, resolve", "cred.euid.val is unsigned int: read it as an integer type"),
    ("  enforcers:\n  - calls: [\"security_socket_connect\"]\n", "",
     "t.yaml:17: spec.kprobes[0].selectors[0].matchActions[0].action: NotifyEnforcer needs spec.enforcers"),
    ("argError: -1", "argSig: 0", "t.yaml:17: spec.kprobes[0].selectors[0].matchActions[0]: NotifyEnforcer needs "
                                  "argError and/or argSig"),
])
def test_btf_walk_and_enforcer_errors_name_line_and_reason(old: str, new: str, why: str) -> None:
    with pytest.raises(PolicyError) as exc:
        compile_text(WALKS.replace(old, new))
    assert why in str(exc.value)


def test_enforcer_error_refused_where_no_program_can_change_the_return() -> None:
    """This machine (tracepoints only): an argError on dup cannot be served, refused with the
    reason; with SIGKILL beside it the policy loads signal-only and says so."""
    text = HEAD.format(name="kill") + """  killers:
  - syscalls: ["sys_dup"]
  tracepoints:
  - subsystem: raw_syscalls
    event: sys_enter
    args:
    - {index: 4, type: syscall64}
    selectors:
    - matchArgs:
      - {index: 0, operator: Equal, values: ["32"]}
      matchActions:
      - action: NotifyKiller
        argError: -1
"""
    with pytest.raises(PolicyError) as exc:
        compile_text(text, kernel_features.NONE)
    assert ("spec.tracepoints[0].selectors[0].matchActions[0].argError: NotifyEnforcer: argError cannot be "
            "served: the enforcer cannot change the return value of __x64_sys_dup") in str(exc.value)
    c = compile_text(text.replace("argError: -1", "argError: -1\n        argSig: 9"), kernel_features.NONE)
    assert any("served signal-only" in n for n in c.notices) and "bpf_send_signal(9)" in c.text
    with pytest.raises(PolicyError) as exc:   # a walk where the hook is a tracepoint
        compile_text(text.replace("type: syscall64}", "type: uint64, resolve: a.b}")
                     .replace("argError: -1", "argSig: 9"), kernel_features.NONE)
    assert "resolve/extractParam (BTF field walks) are served at kernel-function hooks" in str(exc.value)


TTY_54 = HEAD.format(name="tty") + """  kprobes:
  - call: "tty_write"
    syscall: false
    args:
    - {index: 0, type: "file"}
    - {index: 1, type: "char_buf", sizeArgIndex: 3}
    - {index: 2, type: "size_t"}
"""


def test_old_tty_write_signature_read_from_the_new_one() -> None:
    """tty_54.yaml (tty_write before 5.11: file, buf, count, ppos) on a kernel whose tty_write is
    (iocb, from), as this machine's BTF has it: Tetragon loads it with a warning; here the file is
    the kiocb's, the buffer the iov_iter's data, the count (not in the call) left out, all said.
    A selector on the count is refused; tty.yaml's own form (kiocb, iov_iter) is left alone."""
    c = compile_text(TTY_54)
    (h,) = c.hooks
    assert [(a.index, a.type, a.size_arg_index) for a in h.hook.args] == [(0, "kiocb", 0), (1, "iov_iter", 0)]
    (note,) = [n for n in c.notices if "tty_write has the arguments (iocb, from) since Linux 5.11" in n]
    assert "argument 2 is not in the call" in note and "Tetragon loads it too" in note
    with pytest.raises(PolicyError, match="argument 2 of the older call is not in it"):
        compile_text(TTY_54 + '    selectors:\n    - matchArgs: [{index: 2, operator: GT, values: ["0"]}]\n')
    modern = TTY_54.replace('"file"', '"kiocb"').replace('"char_buf", sizeArgIndex: 3', '"iov_iter"') \
        .replace('    - {index: 2, type: "size_t"}\n', "")
    assert not any("since Linux" in n for n in compile_text(modern).notices)
