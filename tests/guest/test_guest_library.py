"""Tetragon's library idioms inside a stock kernel (collector/policy/tetragon_compat.py): one
policy, five programs, compiled once per boot.

- Override on ``sys_symlinkat``/``sys_linkat``/``sys_socket``: Debian's kernels cannot change a
  syscall wrapper's return (no error injection), so each is served on the LSM hook the syscall
  passes (path_symlink, path_link, socket_create); the call fails with EPERM, an event names it;
  the same call on another file/family goes through, silent. linkat is also tried through a
  directory fd with a relative name (the hook sees the resolved dentry).
- Override with ``return: true`` on ``security_file_open``: an enforcing LSM program (no event) and
  an fexit that reports the overridden return value (-EACCES).
- tty_54.yaml's ``tty_write`` (file, buf with sizeArgIndex 3, size_t: the call before 5.11) on the
  kernels' (iocb, from): the file read as the kiocb's, the buffer as the iov_iter's data, the size
  left out; its Post takes both stack traces, symbolised by the collector (kernel: vfs_write on
  the way; user: at least the write's frame).
- The ``dns`` argument (dns-egress.yaml's hooks): real DNS queries to a UDP socket on loopback port
  53, the query name decoded in the kernel and matched by Postfix there; other names are silent.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpf import records
from bpf.names import ACTION_NUMBERS
from collector import kernel_features, loader, procfs
from collector.drain import RecordQueue
from collector.policy.manager import Loaded, PolicyManager
from guest.kfunc_common import Hooks

ROOT = Path(f"/var/tmp/tpl-{uuid.uuid4().hex[:8]}")   # on the guest's root: dentry paths are mount-relative
PORT = 54321   # nothing listens: an allowed connect fails with ECONNREFUSED
PY = sys.executable


def policy() -> str:
    return f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: library-idioms
spec:
  kprobes:
  - call: "sys_symlinkat"
    syscall: true
    args:
    - {{index: 0, type: "string"}}
    - {{index: 1, type: "int"}}
    - {{index: 2, type: "string"}}
    selectors:
    - matchArgs:
      - index: 0
        operator: "Equal"
        values: ["{ROOT}/secret\\0"]
      matchActions:
      - action: Override
        argError: -1
  - call: "sys_linkat"
    syscall: true
    args:
    - {{index: 0, type: "int"}}
    - {{index: 1, type: "string"}}
    - {{index: 2, type: "int"}}
    - {{index: 3, type: "string"}}
    - {{index: 4, type: "int"}}
    selectors:
    - matchArgs:
      - index: 1
        operator: "Equal"
        values: ["{ROOT}/secret\\0"]
      matchActions:
      - action: Override
        argError: -1
  - call: "sys_socket"
    syscall: true
    args:
    - {{index: 0, type: "int"}}
    - {{index: 1, type: "int"}}
    - {{index: 2, type: "int"}}
    selectors:
    - matchArgs:
      - index: 0
        operator: "Equal"
        values: ["38"]
      matchActions:
      - action: Override
        argError: -1
  - call: "security_file_open"
    syscall: false
    return: true
    args:
    - {{index: 0, type: "file"}}
    returnArg:
      index: 0
      type: "int"
    selectors:
    - matchArgs:
      - index: 0
        operator: "Equal"
        values: ["{ROOT}/denied"]
      matchActions:
      - action: Override
        argError: -13
  - call: "security_socket_connect"
    syscall: false
    args:
    - {{index: 1, type: "sockaddr"}}
    data:
    - {{index: 0, source: "current_task", type: "uint32", resolve: "cred.euid.val", label: "euid"}}
    selectors:
    - matchArgs:
      - {{index: 1, operator: "DPort", values: ["{PORT}"]}}
      matchData:
      - {{index: 0, operator: "Equal", values: ["0"]}}
      matchActions:
      - action: Post
      - action: NotifyEnforcer
        argError: -1
  - call: "udp_sendmsg"
    syscall: false
    args:
    - {{index: 0, type: "sock"}}
    - {{index: 1, type: "dns", label: "dns"}}
    selectors:
    - matchArgs:
      - {{index: 0, operator: "DPort", values: ["53"]}}
      - {{index: 1, operator: "Postfix", values: ["example.com"]}}
  - call: "udpv6_sendmsg"
    syscall: false
    args:
    - {{index: 0, type: "sock"}}
    - {{index: 1, type: "dns", label: "dns"}}
    selectors:
    - matchArgs:
      - {{index: 0, operator: "DPort", values: ["53"]}}
      - {{index: 1, operator: "Postfix", values: ["example.com"]}}
  - call: "tty_write"
    syscall: false
    args:
    - {{index: 0, type: "file"}}
    - {{index: 1, type: "char_buf", sizeArgIndex: 3}}
    - {{index: 2, type: "size_t"}}
    selectors:
    - matchBinaries:
      - {{operator: "In", values: ["{ROOT}/tptty"]}}
      matchActions:
      - {{action: Post, kernelStackTrace: true, userStackTrace: true}}
  lsmhooks:
  - hook: "bprm_check_security"
    args:
    - {{index: 0, type: "linux_binprm", extractParam: "mm.owner.real_parent.real_parent.comm",
        overwriteType: "string", label: "grandparent"}}
    selectors:
    - matchArgs:
      - {{index: 0, operator: "Equal", values: ["tpgrandpa"]}}
  enforcers:
  - calls: ["security_socket_connect"]
"""


def killer_policy() -> str:
    """Tetragon's killer idiom (killer.yaml): NotifyKiller at raw_syscalls:sys_enter for dup/dup2.
    Debian's kernels cannot change a syscall wrapper's return value (no error injection), so it is
    served signal-only: SIGKILL at sys_enter, in the thread."""
    return f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: kill-dups
spec:
  lists:
  - name: "dups"
    type: "syscalls"
    values: ["sys_dup", "sys_dup2", "__ia32_sys_dup"]
  killers:
  - syscalls: ["list:dups"]
  tracepoints:
  - subsystem: "raw_syscalls"
    event: "sys_enter"
    args:
    - {{index: 4, type: "syscall64"}}
    selectors:
    - matchArgs:
      - {{index: 0, operator: "InMap", values: ["list:dups"]}}
      matchBinaries:
      - {{operator: "In", values: ["{ROOT}/tpkill"]}}
      matchActions:
      - action: "NotifyKiller"
        argError: -1
        argSig: 9
"""


KILLER: dict[str, Loaded] = {}


@pytest.fixture(scope="module")
def loaded() -> Iterator[tuple[Hooks, Loaded]]:
    ROOT.mkdir(parents=True)
    for f in ("secret", "other", "denied", "allowed"):
        (ROOT / f).write_text("x\n")
    loader.prepare()
    feats = kernel_features.probe()
    mgr = PolicyManager(RecordQueue(1_000_000, asyncio.new_event_loop()), procfs.host_namespaces(), feats)
    mgr.uncaught.enabled = False
    try:
        t0 = time.monotonic()
        (lp,) = mgr.load_text(policy(), "library-idioms.yaml")
        print(f"library-idioms compiled and loaded in {time.monotonic() - t0:.1f}s")
        t0 = time.monotonic()
        (KILLER["lp"],) = mgr.load_text(killer_policy(), "kill-dups.yaml")
        print(f"kill-dups compiled and loaded in {time.monotonic() - t0:.1f}s")
        yield Hooks(mgr), lp
    finally:
        mgr.stop()
        shutil.rmtree(ROOT, ignore_errors=True)


def _child(code: str) -> tuple[int, int]:
    """(pid, errno the child's call failed with, 0 when it worked)."""
    full = (f"import os, socket\ntry:\n{code}\n    raise SystemExit(0)\n"
            "except OSError as e:\n    raise SystemExit(e.errno)")
    p = subprocess.Popen([PY, "-c", full])
    return p.pid, p.wait(timeout=60)


def test_served_on_lsm_hooks(loaded: tuple[Hooks, Loaded]) -> None:
    _, lp = loaded
    assert [h.mechanism for h in lp.compiled.hooks] == ["lsm", "lsm", "lsm", "lsm", "fexit", "fentry", "fentry",
                                                       "fentry", "fentry", "lsm"]
    assert ("lsm", "socket_connect") in lp.compiled.kattach   # the enforcer program
    assert [h.serve for h in lp.compiled.hooks[:3]] == ["lsm path_symlink (Override)", "lsm path_link (Override)",
                                                         "lsm socket_create (Override)"]


def test_symlinkat_override(loaded: tuple[Hooks, Loaded]) -> None:
    hooks, lp = loaded
    pid, rc = _child(f"    os.symlink({str(ROOT / 'secret')!r}, {str(ROOT / 'l1')!r})")
    assert rc == errno.EPERM and not (ROOT / "l1").is_symlink()
    (ev, *_) = hooks.wait(lp, 0, pid)
    assert (ev.selector, ev.action) == (0, ACTION_NUMBERS["Override"])
    assert ev.args[0].type == records.ARG_STRING and ev.args[0].data.decode() == f"{ROOT}/secret"
    assert ev.args[1].data.decode() == f"{ROOT}/l1"
    other, rc = _child(f"    os.symlink({str(ROOT / 'other')!r}, {str(ROOT / 'l2')!r})")
    time.sleep(0.5)
    assert rc == 0 and (ROOT / "l2").is_symlink() and hooks.of(lp, 0, other) == []


def test_linkat_override_also_through_a_dirfd(loaded: tuple[Hooks, Loaded]) -> None:
    hooks, lp = loaded
    pid, rc = _child(f"    os.link({str(ROOT / 'secret')!r}, {str(ROOT / 'h1')!r})")
    assert rc == errno.EPERM and not (ROOT / "h1").exists()
    (ev, *_) = hooks.wait(lp, 1, pid)
    assert [a.data.decode() for a in ev.args] == [f"{ROOT}/secret", f"{ROOT}/h1"]
    rel, rc = _child(f"    d = os.open({str(ROOT)!r}, os.O_RDONLY)\n"
                     "    os.link('secret', 'h2', src_dir_fd=d, dst_dir_fd=d)")
    assert rc == errno.EPERM and not (ROOT / "h2").exists()
    assert hooks.wait(lp, 1, rel)
    other, rc = _child(f"    os.link({str(ROOT / 'other')!r}, {str(ROOT / 'h3')!r})")
    time.sleep(0.5)
    assert rc == 0 and (ROOT / "h3").exists() and hooks.of(lp, 1, other) == []


def test_socket_override(loaded: tuple[Hooks, Loaded]) -> None:
    hooks, lp = loaded
    pid, rc = _child("    socket.socket(38, socket.SOCK_SEQPACKET, 0)")
    assert rc == errno.EPERM
    (ev, *_) = hooks.wait(lp, 2, pid)
    assert [int.from_bytes(a.data[:4], "little", signed=True) for a in ev.args] == [38, socket.SOCK_SEQPACKET, 0]
    other, rc = _child("    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()")
    time.sleep(0.5)
    assert rc == 0 and hooks.of(lp, 2, other) == []


def test_override_with_return_value(loaded: tuple[Hooks, Loaded]) -> None:
    hooks, lp = loaded
    pid, rc = _child(f"    os.close(os.open({str(ROOT / 'denied')!r}, os.O_RDONLY))")
    assert rc == errno.EACCES
    (ev, *_) = hooks.wait(lp, 4, pid)
    assert ev.flags & 2 and ev.ret == -errno.EACCES and ev.args[0].data.decode() == f"{ROOT}/denied"
    assert hooks.of(lp, 3, pid) == []          # the enforcing program makes no event (NoPost)
    other, rc = _child(f"    os.close(os.open({str(ROOT / 'allowed')!r}, os.O_RDONLY))")
    time.sleep(0.5)
    assert rc == 0 and hooks.of(lp, 4, other) == [] and hooks.of(lp, 3, other) == []
    assert os.path.exists(ROOT / "denied")


def test_enforcer_denies_after_data_match(loaded: tuple[Hooks, Loaded]) -> None:
    """security_socket_connect marks the thread (DPort and euid 0 read by a BTF walk from the
    current task's cred); the enforcer, BPF LSM on socket_connect, fails that connect with EPERM."""
    hooks, lp = loaded
    code = f"    s = socket.socket()\n    s.connect(('127.0.0.1', {PORT}))"
    pid, rc = _child(code)
    assert rc == errno.EPERM
    (ev, *_) = hooks.wait(lp, 5, pid)
    assert ev.args[-1].type == records.ARG_UINT and int.from_bytes(ev.args[-1].data[:8], "little") == 0
    assert ev.action == ACTION_NUMBERS["NotifyEnforcer"]
    nobody, rc = _child(f"    os.setresuid(65534, 65534, 65534)\n{code}")   # matchData: euid 0 only
    assert rc == errno.ECONNREFUSED
    other, rc = _child(f"    s = socket.socket()\n    s.connect(('127.0.0.1', {PORT + 1}))")
    assert rc == errno.ECONNREFUSED
    again, rc = _child(code)   # a mark is taken by the call it denied: nothing lingers, each call judged
    assert rc == errno.EPERM
    time.sleep(0.5)
    assert hooks.of(lp, 5, nobody) == [] and hooks.of(lp, 5, other) == []


def test_extract_param_walks_to_the_grandparent(loaded: tuple[Hooks, Loaded]) -> None:
    """bprm_check_security with extractParam mm.owner.real_parent.real_parent.comm: only the exec
    whose grandparent is the shell named tpgrandpa matches, and the event carries that name."""
    hooks, lp = loaded
    lsm = next(h.hook_id for h in lp.compiled.hooks if h.function_name == "bprm_check_security")
    gp = ROOT / "tpgrandpa"
    shutil.copy("/bin/sh", gp)
    # tpgrandpa → sh → /bin/true: the exec of /bin/true (parent sh) has tpgrandpa as grandparent
    assert subprocess.run([str(gp), "-c", "sh -c '/bin/true; true'; true"], timeout=60).returncode == 0
    end = time.monotonic() + 10
    while not hooks.of(lp, lsm) and time.monotonic() < end:
        time.sleep(0.1)
    assert subprocess.run(["/bin/sh", "-c", "sh -c '/bin/true; true'; true"], timeout=60).returncode == 0
    time.sleep(0.5)
    evs = hooks.of(lp, lsm)
    assert len(evs) == 1 and evs[0].args[0].type == records.ARG_STRING
    assert evs[0].args[0].data.decode() == "tpgrandpa"


def test_killer_signal_only(loaded: tuple[Hooks, Loaded]) -> None:
    """NotifyKiller on dup/dup2 from raw_syscalls:sys_enter: SIGKILL in the calling thread; dup3
    (not in the list) and another binary's dup go through."""
    hooks, _ = loaded
    klp = KILLER["lp"]
    assert any("signal-only" in n for n in klp.compiled.notices)
    exe = ROOT / "tpkill"
    shutil.copy(os.path.realpath(PY), exe)   # the same python under its own exe path
    killed = subprocess.Popen([str(exe), "-c", "import os; os.dup2(1, 5)"])
    assert killed.wait(timeout=60) == -9
    (ev, *_) = hooks.wait(klp, 0, killed.pid)
    assert int.from_bytes(ev.args[0].data[:8], "little") == 33   # dup2 (os.dup is fcntl F_DUPFD_CLOEXEC)
    kept = subprocess.run([str(exe), "-c", "import os; os.dup2(1, 5, inheritable=False)"], timeout=60)
    assert kept.returncode == 0
    mine = subprocess.run([PY, "-c", "import os; os.dup2(1, 5)"], timeout=60)
    assert mine.returncode == 0


DNS_CHILD = r"""
import socket, struct, sys
def query(name, tid):
    qname = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0"
    return struct.pack(">HHHHHH", tid, 0x0100, 1, 0, 0, 0) + qname, struct.pack(">HH", 1, 1)
for fam, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    r = socket.socket(fam, socket.SOCK_DGRAM)
    r.bind((addr, 53))
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.connect((addr, 53))   # as resolvers do: the sock's DPort is 53 (an unconnected one has 0)
    # the other name first: its record, had there been one, is in the ring before the match's
    for tid, name in ((1, "www.example.org"), (2, "evil-example.net"), (3, "WWW.Example.COM")):
        head, tail = query(name if fam == socket.AF_INET else name.replace("WWW", "api"), tid)
        if fam == socket.AF_INET:
            s.send(head + tail)              # one buffer (ITER_UBUF)
        else:
            s.sendmsg([head, tail])          # two iovecs (ITER_IOVEC): the name in the first
        assert r.recv(512) == head + tail
"""


def test_dns_query_name_matched_in_the_kernel(loaded: tuple[Hooks, Loaded]) -> None:
    """A query for WWW.Example.COM (v4, one buffer) and api.Example.COM (v6, two iovecs) are
    reported with the decoded, lower-cased name; www.example.org and evil-example.net sent before
    them by the same process are not (their records would precede the match's in the ring)."""
    hooks, lp = loaded
    ids = {h.function_name: h.hook_id for h in lp.compiled.hooks}   # by name: other hooks may come before
    assert {h.function_name: h.mechanism for h in lp.compiled.hooks
            if h.function_name in ("udp_sendmsg", "udpv6_sendmsg")} == {"udp_sendmsg": "fentry",
                                                                         "udpv6_sendmsg": "fentry"}
    p = subprocess.Popen([PY, "-c", DNS_CHILD], stderr=subprocess.PIPE, text=True)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    for hid, want in ((ids["udp_sendmsg"], "www.example.com"), (ids["udpv6_sendmsg"], "api.example.com")):
        got = hooks.wait(lp, hid, p.pid)
        assert got, f"no event of hook {hid}"
        names = [ev.args[1].data.decode() for ev in hooks.of(lp, hid, p.pid)]
        assert names == [want], (hid, names)
        assert got[0].args[1].type == records.ARG_STRING


def test_old_tty_write_signature_and_stack_traces(loaded: tuple[Hooks, Loaded]) -> None:
    """A write to a pty by ROOT/tptty: the event has the pty's path and the written bytes, the
    kernel stack passes vfs_write (symbolised from kallsyms), the user stack has frames; the
    notice says how the old signature was served. Another binary's tty write is silent."""
    hooks, lp = loaded
    (hid,) = [h.hook_id for h in lp.compiled.hooks if h.function_name == "tty_write"]
    assert any("tty_write has the arguments (iocb, from) since Linux 5.11" in n for n in lp.compiled.notices)
    exe = ROOT / "tptty"
    shutil.copy(os.path.realpath(PY), exe)
    code = ("import os, pty, sys\nm, s = pty.openpty()\nos.write(s, b'tetrapipe-tty-write')\n"
            "print(os.ttyname(s))\nsys.stdout.flush()\nsys.stdin.readline()")
    other = subprocess.run([PY, "-c", code], input="\n", capture_output=True, text=True, timeout=60)
    assert other.returncode == 0
    p = subprocess.Popen([str(exe), "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    tty = p.stdout.readline().strip()
    evs = hooks.wait(lp, hid, p.pid)      # symbolised while the writer waits on stdin
    p.communicate("\n", timeout=60)
    assert len(evs) == 1 and len(hooks.of(lp, hid)) == 1     # the other binary's write: no event
    ev = evs[0]
    assert [a.type for a in ev.args] == [records.ARG_FILE, records.ARG_BYTES]
    assert ev.args[0].data.decode().endswith("/" + tty.rsplit("/", 1)[1]), (ev.args[0].data, tty)
    assert ev.args[1].data.startswith(b"tetrapipe-tty-write")
    ksyms = [f.symbol for f in ev.kernel_stack.frames]
    assert "vfs_write" in ksyms and all(f.address >= 1 << 63 for f in ev.kernel_stack.frames), ksyms
    assert ev.user_stack is not None and ev.user_stack.frames and ev.user_stack.frames[0].address
