"""Enforcement semantics the bypass review (issue #12) fixed, on the real kernel: the kill comes
before a selector's rate limit and beside NoPost; integer arguments compare as their declared type
(unsigned 32-bit -1, 64-bit values past 2^63); per-process exec state is inherited at fork and
dropped at exit, seeded from /proc for processes older than the policy; followForks at any depth;
truncated paths counted, never matched as whole; Sigkill refused where the hook runs outside the
process; notices for kills on return hooks. One in-process PolicyManager, as the collector runs it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import bpf_unavailable_reason, skip_or_fail

from bpf import records

ATTACKER_C = Path(__file__).parent / "bypass" / "attacker.c"


class Mgr:
    def __init__(self, tmp: Path) -> None:
        from collector import loader, procfs
        from collector.drain import RecordQueue
        from collector.policy.manager import PolicyManager

        loader.prepare(tmp / "kernel-headers")
        self.loop = asyncio.new_event_loop()
        self.q = RecordQueue(1_000_000, self.loop)
        self.mgr = PolicyManager(self.q, procfs.host_namespaces())
        self.hits: list[tuple[int, int, int]] = []   # (pid, policy id, action)

    def hooks(self, policy_id: int, pid: int) -> list[int]:
        time.sleep(0.6)   # drained every 100 ms
        for raw in self.q.take(1 << 30):
            rec = records.decode(raw)
            if isinstance(rec, records.HookRecord):
                body = records.decode_hook(rec)
                self.hits.append((rec.header.pid, body.policy_id, body.action))
        return [a for p, pol, a in self.hits if p == pid and pol == policy_id]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mgr, Path]]:
    reason = bpf_unavailable_reason()
    if reason:
        skip_or_fail(reason)
    tmp = tmp_path_factory.mktemp("semantics")
    os.chmod(tmp, 0o755)
    helper = tmp / "semantics-helper"
    subprocess.run(["gcc", "-O1", "-no-pie", "-pthread", "-o", str(helper), str(ATTACKER_C)], check=True)
    m = Mgr(tmp)
    try:
        yield m, helper
    finally:
        m.mgr.stop()
        m.loop.close()


def _policy(name: str, body: str) -> str:
    return f"apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: {name}\nspec:\n" + \
        textwrap.indent(textwrap.dedent(body), "  ")


@pytest.mark.kernel
def test_rate_limit_never_spares_the_kill_and_nopost_beside_sigkill(env: tuple[Mgr, Path]) -> None:
    m, helper = env
    (lp,) = m.mgr.load_text(_policy("sem-kill-rl", f"""\
        kprobes:
        - call: sys_getppid
          syscall: true
          selectors:
          - matchBinaries: [{{operator: In, values: ["{helper}"]}}]
            matchActions: [{{action: Sigkill}}, {{action: Post, rateLimit: 1m, rateLimitScope: global}}]
        - call: sys_getpgrp
          syscall: true
          selectors:
          - matchBinaries: [{{operator: In, values: ["{helper}"]}}]
            matchActions: [{{action: Sigkill}}, {{action: NoPost}}]
        """), "sem-kill-rl.yaml")
    try:
        runs = [_run([str(helper), "sys64", "110"]) for _ in range(3)]    # getppid
        assert [rc for _pid, rc in runs] == [-9, -9, -9]     # every one killed, not just the first
        events = [len(m.hooks(lp.policy_id, pid)) for pid, _rc in runs]
        assert events == [1, 0, 0], "one event per minute (global scope): the rate limit spares events only"
        pid, rc = _run([str(helper), "sys64", "111"])       # getpgrp: Sigkill + NoPost
        assert rc == -9
        assert m.hooks(lp.policy_id, pid) == []             # killed, no event
    finally:
        m.mgr.delete("sem-kill-rl")


@pytest.mark.kernel
def test_unsigned_arguments_compare_unsigned(env: tuple[Mgr, Path]) -> None:
    m, helper = env
    (lp,) = m.mgr.load_text(_policy("sem-unsigned", f"""\
        kprobes:
        - call: sys_setresuid
          syscall: true
          args: [{{index: 0, type: uint32}}]
          selectors:
          - matchArgs: [{{index: 0, operator: Equal, values: ["4294967295"]}}]
            matchBinaries: [{{operator: In, values: ["{helper}"]}}]
        - call: sys_lseek
          syscall: true
          args: [{{index: 1, type: uint64}}]
          selectors:
          - matchArgs: [{{index: 1, operator: GT, values: ["9223372036854775808"]}}]
            matchBinaries: [{{operator: In, values: ["{helper}"]}}]
        """), "sem-unsigned.yaml")
    try:
        pid_p, rc = _run([str(helper), "sys64", "117", "-1", "-1", "-1"])   # setresuid(-1, -1, -1)
        assert rc == 0
        pid_q, rc = _run([str(helper), "sys64", "8", "0", "-1", "1"])       # lseek(0, -1, SEEK_CUR)
        assert rc == 0
        assert len(m.hooks(lp.policy_id, pid_p)) == 1       # uid_t -1 == 4294967295 unsigned
        assert len(m.hooks(lp.policy_id, pid_q)) == 1       # 2^64-1 > 2^63 unsigned (signed: -1)
    finally:
        m.mgr.delete("sem-unsigned")


def _run(argv: list[str]) -> tuple[int, int]:
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return p.pid, p.wait(30)


@pytest.mark.kernel
def test_namespace_change_state_inherited_at_fork_and_dropped_at_exit(env: tuple[Mgr, Path]) -> None:
    """A process forked without exec that leaves its UTS namespace is a change (before: no state
    for the child, so never); the entry leaves the map with the process (a reused pid must not
    read it)."""
    m, _helper = env
    py = os.path.realpath(sys.executable)
    (lp,) = m.mgr.load_text(_policy("sem-nschange", f"""\
        kprobes:
        - call: sys_getppid
          syscall: true
          selectors:
          - matchNamespaceChanges: [{{operator: In, values: [Uts]}}]
            matchBinaries: [{{operator: In, values: ["{py}"]}}]
        """), "sem-nschange.yaml")
    try:
        code = textwrap.dedent("""
            import ctypes, os, sys
            libc = ctypes.CDLL(None, use_errno=True)
            os.getppid()                      # the exec'd process: no change
            pid = os.fork()
            if pid == 0:
                assert libc.unshare(0x04000000) == 0
                os.getppid()                  # the forked child, in a new UTS namespace: a change
                os._exit(0)
            os.waitpid(pid, 0)
            print(pid, flush=True)
        """)
        proc = subprocess.Popen([py, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        child, p_pid = int(out.split()[0]), proc.pid
        assert len(m.hooks(lp.policy_id, child)) == 1
        assert [pid for pid, pol, _a in m.hits if pol == lp.policy_id] == [child]   # not the parent
        table = lp.bpf["exec_state"]
        assert not any(k.value == child for k in table), "the exited child's state is still in the map"
        assert not any(k.value == p_pid for k in table), "the exited parent's state is still in the map"
    finally:
        m.mgr.delete("sem-nschange")


@pytest.mark.kernel
def test_change_by_a_process_older_than_the_policy_is_seen(env: tuple[Mgr, Path]) -> None:
    """A process exec'd before the load has its state seeded from /proc at the load: it leaving
    its UTS namespace (matchNamespaceChanges) and dropping its capabilities by setuid
    (matchCapabilityChanges) after the load are changes (before #12's seeding: no state, never);
    no process judged was without state."""
    from collector.policy import gaps

    m, _helper = env
    py = os.path.realpath(sys.executable)
    code = textwrap.dedent("""
        import ctypes, os, sys, threading
        libc = ctypes.CDLL(None, use_errno=True)
        print("up", flush=True)
        sys.stdin.readline()              # the policy is loaded now
        go = threading.Event()
        t = threading.Thread(target=go.wait)
        t.start()                         # a thread: no exec_state entry of its own
        print(t.native_id, flush=True)
        sys.stdin.readline()
        go.set()
        t.join()
        os.getppid()                      # no change yet
        os.getpgrp()
        assert libc.unshare(0x04000000) == 0
        os.getppid()                      # a namespace change, by a process older than the policy
        os.setuid(65534)                  # root → nobody: CAP_SYS_ADMIN leaves the effective set
        os.getpgrp()                      # a capability change
        print("done", flush=True)
    """)
    proc = subprocess.Popen([py, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == "up"
    (lp,) = m.mgr.load_text(_policy("sem-old-nschange", f"""\
        kprobes:
        - call: sys_getppid
          syscall: true
          selectors:
          - matchBinaries: [{{operator: In, values: ["{py}"]}}]
            matchNamespaceChanges: [{{operator: In, values: [Uts]}}]
        - call: sys_getpgrp
          syscall: true
          selectors:
          - matchBinaries: [{{operator: In, values: ["{py}"]}}]
            matchCapabilityChanges: [{{type: Effective, operator: In, values: [CAP_SYS_ADMIN]}}]
        """), "sem-old-nschange.yaml")
    try:
        proc.stdin.write("go\n")
        proc.stdin.flush()
        tid = int(proc.stdout.readline())
        keys = {k.value for k in lp.bpf["exec_state"]}
        assert proc.pid in keys and tid not in keys    # seeded; per process, not per thread
        out, err = proc.communicate("go\n", timeout=60)
        assert proc.returncode == 0 and "done" in out, err
        hits = m.hooks(lp.policy_id, proc.pid)
        assert len(hits) == 2, hits                  # the getppid and getpgrp after the changes only
        assert gaps.read(lp.bpf)[gaps.NO_STATE] == 0, "a process was judged without seeded state"
    finally:
        m.mgr.delete("sem-old-nschange")


@pytest.mark.kernel
def test_follow_forks_matches_at_any_depth_before_and_after_the_load(env: tuple[Mgr, Path]) -> None:
    """matchPIDs In followForks: a descendant 70 levels down (past the 64 ancestors the kernel
    walks) is matched, whether its chain was forked before the load (marked from /proc) or after
    it (marked at each fork, its ancestors gone: reparented, no walk can link it)."""
    m, _helper = env
    py = os.path.realpath(sys.executable)
    code = textwrap.dedent("""
        import os, sys
        def chain(n, wait):
            for _ in range(n):
                pid = os.fork()
                if pid:
                    if not wait:
                        os._exit(0)       # its child is reparented
                    _, st = os.waitpid(pid, 0)
                    os._exit(os.waitstatus_to_exitcode(st))
        chain(70, True)                   # before the load: 70 levels, each waiting
        print(os.getpid(), flush=True)
        sys.stdin.readline()              # the policy is loaded
        os.getppid()                      # 70 levels below the followed process
        r, w = os.pipe()
        chain(70, False)                  # after the load: 70 more, each parent gone at once
        print(os.getpid(), flush=True)
        os.getppid()
        os._exit(0)
    """)
    proc = subprocess.Popen([py, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    before = int(proc.stdout.readline())
    (lp,) = m.mgr.load_text(_policy("sem-deep-forks", f"""\
        kprobes:
        - call: sys_getppid
          syscall: true
          selectors:
          - matchPIDs: [{{operator: In, followForks: true, values: ["{proc.pid}"]}}]
        """), "sem-deep-forks.yaml")
    try:
        out, err = proc.communicate("go\n", timeout=60)
        assert proc.returncode == 0, err
        after = int(out.split()[0])
        assert len(m.hooks(lp.policy_id, before)) == 1
        assert len(m.hooks(lp.policy_id, after)) == 1
        assert m.hooks(lp.policy_id, os.getpid()) == []      # os.getppid() of this process
        os.getppid()
        assert m.hooks(lp.policy_id, os.getpid()) == []
    finally:
        m.mgr.delete("sem-deep-forks")


def test_followed_processes_from_the_tree_and_the_forks_seen_while_loading() -> None:
    from collector.policy.proc_state import followed

    tree = {1: (0, 1), 10: (1, 10), 11: (10, 11), 12: (11, 12), 20: (1, 20), 30: (1, 1)}
    assert followed(tree, {10}, False) == {10, 11, 12}
    assert followed(tree, {1}, True) == {1, 10, 11, 12, 20, 30}     # pid 30 is 1 in its namespace
    # 30 was forked by 11's child 25 while the policy loaded; 25 exited, 30 was reparented to 1
    assert followed(tree, {10}, False, {25: 11, 30: 25}) == {10, 11, 12, 30}


def _deep_dir(top: Path, n: int) -> Path:
    deep = top / "/".join(["d"] * n)
    deep.mkdir(parents=True)
    d = deep
    while d != top.parent:
        os.chmod(d, 0o755)
        d = d.parent
    return deep


@pytest.mark.kernel
def test_truncated_path_counted_never_matched_as_whole(env: tuple[Mgr, Path], tmp_path: Path) -> None:
    """Paths deeper than 32 components keep their last 32, flagged truncated; a name filter never
    compares them as whole, and each judgment is counted with its verdict:
    - a binary 40 directories down, named whole by matchBinaries (no inode set): not matched,
      counted unknown (truncated_paths{matched=unknown}, the uncaught road); the same binary at a
      short path matches;
    - a write to a file 40 directories below a Prefix directory of an fd filter: matched by inode
      (matched=inode); 40 directories down elsewhere: its inode proves it outside (matched=no);
      70 directories below the Prefix directory (past the 64 ancestors walked): not matched,
      counted unknown."""
    import shutil

    from collector.policy import gaps
    from collector.policy.metrics import TRUNCATED_PATHS
    from collector.policy.uncaught import UNCAUGHT

    m, helper = env
    deep = _deep_dir(tmp_path / "bin", 40)
    deep_exe, short_exe = deep / "deep-helper", tmp_path / "short-helper"
    shutil.copy(helper, deep_exe)
    shutil.copy(helper, short_exe)
    prot = tmp_path / "prot"
    under40, under70 = _deep_dir(prot, 40) / "f", _deep_dir(prot / "x", 70) / "f"
    outside40 = _deep_dir(tmp_path / "other", 40) / "f"
    (lp,) = m.mgr.load_text(_policy("sem-trunc", f"""\
        kprobes:
        - call: sys_getppid
          syscall: true
          selectors:
          - matchBinaries: [{{operator: In, values: ["{deep_exe}", "{short_exe}"]}}]
        - call: sys_write
          syscall: true
          args: [{{index: 0, type: fd}}]
          selectors:
          - matchArgs: [{{index: 0, operator: Prefix, values: ["{prot}/"]}}]
        """), "sem-trunc.yaml")
    try:
        def metric(counter: Any, **labels: str) -> float:
            return counter.labels(**labels)._value.get()

        def counts() -> list[float]:
            m.mgr._collect_counts(lp)
            return [metric(TRUNCATED_PATHS, policy="sem-trunc", matched=v) for v in ("unknown", "inode", "no")] + \
                [metric(UNCAUGHT, policy="sem-trunc", road=gaps.ROAD_TRUNC)]

        def write(f: Path) -> int:
            pid, rc = _run(["/bin/sh", "-c", f"echo x >> {f}"])
            assert rc == 0
            return pid

        c0 = counts()
        pid_deep, rc = _run([str(deep_exe), "sys64", "110"])
        assert rc == 0
        pid_short, rc = _run([str(short_exe), "sys64", "110"])
        assert rc == 0
        assert m.hooks(lp.policy_id, pid_deep) == []          # not matched as whole
        assert len(m.hooks(lp.policy_id, pid_short)) == 1
        c1 = counts()
        assert c1[0] > c0[0] and c1[3] > c0[3]                # unknown, and the uncaught road
        assert len(m.hooks(lp.policy_id, write(under40))) == 1    # by inode
        c2 = counts()
        assert c2[1] > c1[1]
        assert m.hooks(lp.policy_id, write(outside40)) == []
        c3 = counts()
        assert c3[2] > c2[2]                                  # proved outside by its inode
        assert m.hooks(lp.policy_id, write(under70)) == []       # the hole: counted
        c4 = counts()
        assert c4[0] > c3[0] and c4[3] > c3[3]
    finally:
        m.mgr.delete("sem-trunc")


def test_sigkill_refused_where_the_hook_runs_outside_the_process() -> None:
    from collector.policy import compiler, parser
    from collector.policy.model import PolicyError

    text = _policy("sem-close-kill", """\
        kprobes:
        - call: tcp_close
          syscall: false
          args: [{index: 0, type: sock}]
          selectors:
          - matchActions: [{action: Sigkill}]
        """)
    (p,) = parser.parse_text(text, "close.yaml")
    with pytest.raises(PolicyError, match="outside the socket owner's process context"):
        compiler.compile_policy(p, 1, [0] * 10)


def test_load_notices_kill_on_return_no_follow_forks_depth() -> None:
    from collector.policy import compiler, parser

    text = _policy("sem-notices", """\
        kprobes:
        - call: sys_openat
          syscall: true
          return: true
          args: [{index: 1, type: string}]
          selectors:
          - matchPIDs: [{operator: In, followForks: true, values: ["1"]}]
            matchReturnArgs: [{index: 0, operator: GT, values: ["0"]}]
            matchActions: [{action: Sigkill}]
        """)
    (p,) = parser.parse_text(text, "n.yaml")
    notices = " ".join(compiler.compile_policy(p, 1, [0] * 10).notices)
    assert "ancestors" not in notices              # marks at fork: no depth limit to say
    assert "the call has taken effect" in notices


@pytest.mark.parametrize("arg_type,value,ok", [
    ("uint32", "4294967295", True), ("uint64", "18446744073709551615", True), ("uint64", "-1", False),
    ("int64", "9223372036854775808", False), ("int", "-1", True)])
def test_integer_values_checked_against_their_type(arg_type: str, value: str, ok: bool) -> None:
    from collector.policy import compiler, parser
    from collector.policy.model import PolicyError

    text = _policy("sem-range", f"""\
        kprobes:
        - call: sys_lseek
          syscall: true
          args: [{{index: 1, type: {arg_type}}}]
          selectors:
          - matchArgs: [{{index: 1, operator: Equal, values: ["{value}"]}}]
        """)
    (p,) = parser.parse_text(text, "r.yaml")
    if ok:
        c = compiler.compile_policy(p, 1, [0] * 10)
        assert ("ULL" if arg_type.startswith("uint") else "LL") in c.text
    else:
        with pytest.raises(PolicyError, match="out of range"):
            compiler.compile_policy(p, 1, [0] * 10)



def test_raw_user_path_comparison_warned_at_load_shipped_policies_silent() -> None:
    from collector.policy import compiler, gaps, parser

    text = _policy("sem-raw", """\
        kprobes:
        - call: sys_openat
          syscall: true
          args: [{index: 1, type: string}]
          selectors:
          - matchArgs: [{index: 1, operator: Prefix, values: ["/etc/"]}]
        """)
    (p,) = parser.parse_text(text, "raw.yaml")
    notices = compiler.compile_policy(p, 1, [0] * 10).notices
    (warning,) = [n for n in notices if "WARNING" in n]
    # the gauge tetrapipe_tracingpolicy_unjudged_roads names them (a string-path openat: io_uring
    # OPENAT is not judged either)
    assert gaps.unjudged(notices) == {"raw user path", "io_uring (arguments in the request)"}
    assert warning.startswith("spec.kprobes[0].selectors[0].matchArgs[0]: WARNING: Prefix compares the path")
    assert "a relative name" in warning and "symlink" in warning and "judge the file instead" in warning
    examples = Path(__file__).resolve().parent.parent / "examples" / "policies"
    for f in sorted(examples.glob("*.yaml")):
        for pol in parser.parse_file(str(f)):
            notices = compiler.compile_policy(pol, 1, [0] * 10).notices if not pol.loader or pol.hooks else []
            assert not [n for n in notices if "WARNING" in n], f"{f.name} compares a raw user path"
            assert "raw user path" not in gaps.unjudged(notices)


@pytest.mark.kernel
def test_tcp_close_in_softirq_names_the_socket_owner(env: tuple[Mgr, Path]) -> None:
    """The server resets the connection (SO_LINGER 0): on loopback the client socket moves to
    TCP_CLOSE in softirq, in the server's (this test's) context. The event names the client."""
    import socket
    import struct as st

    m, _helper = env
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    (lp,) = m.mgr.load_text(_policy("sem-close", f"""\
        kprobes:
        - call: tcp_close
          syscall: false
          args: [{{index: 0, type: sock}}]
          selectors:
          - matchArgs: [{{index: 0, operator: DPort, values: ["{port}"]}}]
        """), "sem-close.yaml")
    try:
        code = (f"import socket, time\ns = socket.create_connection(('127.0.0.1', {port}))\n"
                "print('up', flush=True)\ntime.sleep(3)\n")
        client = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert client.stdout is not None and client.stdout.readline().strip() == "up"
        conn, _ = srv.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, st.pack("ii", 1, 0))
        conn.close()                 # RST: the client's socket closes in this process's softirq
        hits = m.hooks(lp.policy_id, client.pid)
        mine = m.hooks(lp.policy_id, os.getpid())
        client.wait(10)
        assert len(hits) == 1 and mine == [], (hits, mine)
    finally:
        srv.close()
        m.mgr.delete("sem-close")


def test_write_hooked_alone_names_its_siblings_at_load() -> None:
    """The seed hooks write(2) only (as Tetragon's example): pwrite64, writev, sendfile, splice,
    copy_file_range and mmap put the same bytes into the file unjudged. The load answer names them
    and the gauge unjudged_roads{road="write calls not hooked"} says the policy has that hole; a
    policy hooking the whole family (etc-passwd-shadow-writes.yaml) or the permission check says
    nothing."""
    from collector.policy import compiler, evasion, gaps, parser

    repo = Path(__file__).resolve().parent.parent
    (seed,) = parser.parse_file(str(repo / "tests" / "data" / "seed" / "deny-tmp-forbidden-write.yaml"))
    notices = compiler.compile_policy(seed, 1, [0] * 10).notices
    (notice,) = [n for n in notices if evasion.UNHOOKED_WRITES in n]
    assert notice.startswith("spec.kprobes[3]: pwrite64, writev, pwritev, pwritev2, sendfile64, splice, "
                             "copy_file_range, mmap not hooked")
    assert "write calls not hooked" in gaps.unjudged(notices)
    (passwd,) = parser.parse_file(str(repo / "examples" / "policies" / "etc-passwd-shadow-writes.yaml"))
    assert "write calls not hooked" not in gaps.unjudged(compiler.compile_policy(passwd, 1, [0] * 10).notices)
    assert evasion.unhooked_writes([("spec.kprobes[0]", "__x64_sys_write"),
                                    ("spec.kprobes[1]", "security_file_permission")]) == []
    assert evasion.unhooked_writes([("spec.kprobes[0]", "sys_read")]) == []
