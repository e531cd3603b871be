"""Idioms of Tetragon's example policy library (issue 11), on this machine's kernel, real BPF:
GetUrl/DnsLookup done in user space by the collector (a real HTTP server on 127.0.0.1 receives
the GET), ``int32_arr`` arguments read at the syscall's return (pipe2, socketpair) and
``spec.rawtracepoints`` (BTF-typed raw tracepoints). One policy with every hook: one compile."""

from __future__ import annotations

import asyncio
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import bpf_unavailable_reason, skip_or_fail
from harness import wait_until

from bpf import records as r
from collector import loader, procfs
from collector.drain import RecordQueue
from collector.policy import parser
from collector.policy.manager import PolicyManager
from collector.policy.model import PolicyError
from collector.policy.tetragon_actions import USER_ACTIONS, UserActions
from enricher.policy_events import typed_arg

POLICY = """
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: library-idioms
spec:
  kprobes:
  - call: sys_openat
    syscall: true
    args:
    - index: 1
      type: string
    selectors:
    - matchArgs:
      - index: 1
        operator: Equal
        values: ["CANARY"]
      matchActions:
      - action: GetUrl
        argUrl: URL
  - call: sys_pipe2
    syscall: true
    args:
    - index: 0
      type: int32_arr
      size: 2
      returnCopy: true
      label: pipefd
  - call: sys_socketpair
    syscall: true
    args:
    - index: 0
      type: int
      label: domain
    - index: 3
      type: int32_arr
      size: 2
      returnCopy: true
      label: sv
  rawtracepoints:
  - subsystem: sched
    event: sched_process_exec
    args:
    - index: 2
      type: linux_binprm
      label: bprm
  lists:
  - name: dups
    type: syscalls
    values: ["sys_dup", "sys_dup2"]
  killers:
  - syscalls: ["list:dups"]
  tracepoints:
  - subsystem: raw_syscalls
    event: sys_enter
    args:
    - index: 4
      type: syscall64
    selectors:
    - matchArgs:
      - index: 0
        operator: InMap
        values: ["list:dups"]
      matchBinaries:
      - operator: In
        values: ["KILLEXE"]
      matchActions:
      - action: NotifyKiller
        argError: -1
        argSig: 9
"""


class _Handler(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        _Handler.hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_server() -> Iterator[tuple[str, list[str]]]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/canary-{os.getpid()}", _Handler.hits
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory,
          http_server: tuple[str, list[str]]) -> Iterator[tuple[PolicyManager, Path]]:
    reason = bpf_unavailable_reason()
    if reason:
        skip_or_fail(reason)
    canary = tmp_path_factory.mktemp("idioms") / "canary"
    canary.write_text("x")
    loader.prepare()
    m = PolicyManager(RecordQueue(1_000_000, asyncio.new_event_loop()), procfs.host_namespaces())
    try:
        shutil.copy(os.path.realpath(sys.executable), canary.parent / "tpkill")   # python under its own name
        m.load_text(POLICY.replace("CANARY", str(canary)).replace("URL", http_server[0])
                    .replace("KILLEXE", str(canary.parent / "tpkill")), "idioms.yaml")
        yield m, canary
    finally:
        m.stop()


def _hooks(m: PolicyManager) -> list[r.HookBody]:
    out = []
    for raw in m.queue.take(1_000_000):
        rec = r.decode(raw)
        if isinstance(rec, r.HookRecord):
            out.append(r.decode_hook(rec))
    return out


def _counts(m: PolicyManager) -> None:
    m._last_counts = 0.0   # the counts are read every COUNTS_EVERY_S: now
    m.tick()


def test_get_url_fetched_when_the_selector_matches(setup: tuple[PolicyManager, Path],
                                                   http_server: tuple[str, list[str]]) -> None:
    m, canary = setup
    url, hits = http_server
    _hooks(m)
    _counts(m)
    hits.clear()
    subprocess.run([sys.executable, "-c", f"open({str(canary)!r}).close()"], check=True)
    time.sleep(0.3)
    bodies = [b for b in _hooks(m) if b.action == 7]
    assert bodies, "no hook record with KPROBE_ACTION_GETURL"
    _counts(m)
    assert wait_until(lambda: hits, timeout=10), "the HTTP server got no GET"
    assert hits[0] == "/" + url.split("/", 3)[3]
    # another file: no match, no GET
    hits.clear()
    m.user_actions._last.clear()
    other = canary.parent / "other"
    other.write_text("y")
    subprocess.run([sys.executable, "-c", f"open({str(other)!r}).close()"], check=True)
    _counts(m)
    time.sleep(0.5)
    assert hits == []


INT32_ARR_CHILD = """
import os, socket
r, w = os.pipe2(0)
a, b = socket.socketpair()
print(os.getpid(), r, w, a.fileno(), b.fileno())
"""


def test_int32_arr_read_at_return_pipe2_socketpair(setup: tuple[PolicyManager, Path]) -> None:
    m, _ = setup
    _hooks(m)
    out = subprocess.run([sys.executable, "-c", INT32_ARR_CHILD], check=True, capture_output=True, text=True)
    pid, r0, w0, s0, s1 = (int(x) for x in out.stdout.split())
    time.sleep(0.3)
    rendered = []
    for raw in m.queue.take(1_000_000):
        rec = r.decode(raw)
        if isinstance(rec, r.HookRecord) and rec.header.pid == pid:
            rendered.append([typed_arg(a) for a in r.decode_hook(rec).args])
    assert [{"label": "", "string_arg": f"[{r0}, {w0}]"}] in rendered
    assert [{"label": "", "int_arg": socket.AF_UNIX}, {"label": "", "string_arg": f"[{s0}, {s1}]"}] in rendered


def test_int32_arr_errors_name_line_and_reason() -> None:
    sized = "      size: 2\n      returnCopy: true\n      label: pipefd"
    text = POLICY.replace("URL", "http://127.0.0.1/").replace(sized, "      label: pipefd")
    with pytest.raises(PolicyError) as exc:
        parser.parse_text(text, "p.yaml")
    assert "p.yaml:24: spec.kprobes[1].args[0].size: an int32_arr argument needs size (1 to 32)" in str(exc.value)


def test_rawtracepoint_args_by_tp_proto_position(setup: tuple[PolicyManager, Path], tmp_path: Path) -> None:
    m, _ = setup
    [lp] = m.loaded.values()
    assert [ch.mechanism for ch in lp.compiled.hooks if ch.hook.raw] == ["rawtp"]
    exe = tmp_path / "rawtp-true"
    exe.symlink_to("/bin/true")
    _hooks(m)
    proc = subprocess.Popen([str(exe)])
    proc.wait(timeout=10)
    time.sleep(0.3)
    rendered = [[typed_arg(a) for a in r.decode_hook(rec).args] for rec in map(r.decode, m.queue.take(1_000_000))
                if isinstance(rec, r.HookRecord) and rec.header.pid == proc.pid]
    # the binprm's file: the path exec opened (the symlink resolved), as Tetragon's linux_binprm_arg
    # with its inode's mode as Tetragon's permission (a raw tracepoint reads kernel memory)
    want = {"path": os.path.realpath("/bin/true"), "permission": "-rwxr-xr-x"}
    assert [{"label": "", "linux_binprm_arg": want}] in rendered


@pytest.mark.parametrize("hook, why", [
    ("  - subsystem: sched\n    event: sched_process_exec\n    args:\n    - index: 3\n      type: int",
     "44: spec.rawtracepoints[0].args[0].index: raw tracepoint sched_process_exec has 3 arguments (arg0, arg1, arg2)"),
    ("  - subsystem: sched\n    event: no_such_event_x",
     "42: spec.rawtracepoints[0].event: no raw tracepoint no_such_event_x in this kernel's BTF"),
])
def test_rawtracepoint_errors_name_line_and_reason(hook: str, why: str) -> None:
    from collector import kernel_features
    from collector.policy import compiler
    text = POLICY.split("  rawtracepoints:")[0].replace("URL", "http://127.0.0.1/")
    text += "  rawtracepoints:\n" + hook + "\n"
    [p] = parser.parse_text(text, "p.yaml")
    with pytest.raises(PolicyError) as exc:
        compiler.compile_policy(p, 1, [], kernel_features.probe())
    assert f"p.yaml:{why}" in str(exc.value)


def test_user_actions_bounded_and_counted() -> None:
    ua = UserActions(maxlen=1, min_interval_s=60, timeout_s=0.5)
    ua._start = lambda: None   # type: ignore[method-assign] - no worker: the queue stays full
    before = USER_ACTIONS.labels(action="GetUrl", result="dropped", policy="t")._value.get()
    rl = USER_ACTIONS.labels(action="GetUrl", result="ratelimited", policy="t")._value.get()
    assert ua.submit("GetUrl", "http://127.0.0.1:9/a", "t")
    assert not ua.submit("GetUrl", "http://127.0.0.1:9/a", "t", matches=3)   # within min_interval
    assert not ua.submit("GetUrl", "http://127.0.0.1:9/b", "t")              # queue full
    assert USER_ACTIONS.labels(action="GetUrl", result="dropped", policy="t")._value.get() == before + 1
    assert USER_ACTIONS.labels(action="GetUrl", result="ratelimited", policy="t")._value.get() == rl + 3


def test_dns_lookup_and_failures_counted() -> None:
    ua = UserActions(timeout_s=2)
    try:
        assert ua.submit("DnsLookup", "localhost", "t")
        # nothing listens on a fresh port: the GET fails, counted, never raised
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        assert ua.submit("GetUrl", f"http://127.0.0.1:{port}/x", "t")
        assert wait_until(lambda: len(ua.done) == 2, timeout=10)
        assert [(q.action, res) for q, res in ua.done] == [("DnsLookup", "sent"), ("GetUrl", "failed")]
    finally:
        ua.stop()


@pytest.mark.parametrize("bad, why", [
    ("action: GetUrl\n        argUrl: ftp://x", "20: spec.kprobes[0].selectors[0].matchActions[0].argUrl: "
     "'ftp://x' is not an http:// or https://"),
    ("action: GetUrl", "19: spec.kprobes[0].selectors[0].matchActions[0].argUrl: required"),
    ("action: DnsLookup\n        argFqdn: 'a b'", "20: spec.kprobes[0].selectors[0].matchActions[0].argFqdn: "
     "'a b' is not a domain name"),
])
def test_user_action_errors_name_line_and_reason(bad: str, why: str) -> None:
    text = POLICY.replace("action: GetUrl\n        argUrl: URL", bad)
    with pytest.raises(PolicyError) as exc:
        parser.parse_text(text, "p.yaml")
    assert f"p.yaml:{why}" in str(exc.value)


CAPSET = """
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: capset
spec:
  lsmhooks:
  - hook: capset
    args:
    - index: 2
      type: TYPE
    selectors:
    - matchArgs:
      - operator: Capability
        index: 2
        values: [VALUES]
"""


def test_capability_operator_is_a_mask_of_the_named_bits() -> None:
    text = CAPSET.replace("TYPE", "kernel_cap_t")
    [p] = parser.parse_text(text.replace("VALUES", "CAP_SYS_ADMIN, net_raw"), "c.yaml")
    [f] = p.hooks[0].selectors[0].match_args
    assert (f.operator, f.values) == ("Mask", [str(1 << 21 | 1 << 13)])
    with pytest.raises(PolicyError, match=r"c.yaml:16: spec.lsmhooks\[0\].selectors\[0\].matchArgs\[0\].values\[0\]: "
                                          "unknown capability 'CAP_NOPE'"):
        parser.parse_text(text.replace("VALUES", "CAP_NOPE"), "c.yaml")
    with pytest.raises(PolicyError, match=r"c.yaml:14: .*matchArgs\[0\].operator: the Capability operator applies "
                                          "to a kernel_cap_t argument"):
        parser.parse_text(CAPSET.replace("TYPE", "int").replace("VALUES", "CAP_SYS_ADMIN"), "c.yaml")


def test_tracepoint_raw_true_is_a_raw_tracepoint() -> None:
    text = POLICY.split("  rawtracepoints:")[0].replace("URL", "http://127.0.0.1/")
    text += "  tracepoints:\n  - subsystem: sched\n    event: sched_process_exec\n    raw: true\n"
    [p] = parser.parse_text(text, "p.yaml")
    assert [(h.kind, h.event, h.raw) for h in p.hooks if h.kind == "tracepoint"] == [
        ("tracepoint", "sched_process_exec", True)]


def test_killer_served_signal_only_here(setup: tuple[PolicyManager, Path]) -> None:
    """Tetragon's killer idiom (spec.killers + NotifyKiller at raw_syscalls:sys_enter): this kernel
    cannot change dup's return value, so the policy loads signal-only (SIGKILL is in the action: the
    process never sees the call's result) and says so; dup3 (not listed) and another binary's dup
    go through."""
    m, canary = setup
    [lp] = m.loaded.values()
    assert any("served signal-only" in n and "__x64_sys_dup" in n for n in lp.compiled.notices)
    exe = canary.parent / "tpkill"
    _hooks(m)
    killed = subprocess.Popen([str(exe), "-c", "import os; os.dup2(1, 5)"])
    assert killed.wait(timeout=30) == -9
    time.sleep(0.3)
    (hid,) = [ch.hook_id for ch in lp.compiled.hooks if ch.hook.subsystem == "raw_syscalls"]
    mine = [b for raw in m.queue.take(1_000_000) if isinstance(rec := r.decode(raw), r.HookRecord)
            and rec.header.pid == killed.pid for b in [r.decode_hook(rec)] if b.hook_id == hid]
    assert [typed_arg(b.args[0]) for b in mine] == [{"label": "", "uint_arg": 33}]   # dup2, as syscall64
    kept = subprocess.run([str(exe), "-c", "import os; os.dup2(1, 5, inheritable=False)"], timeout=30)
    assert kept.returncode == 0
    assert subprocess.run([sys.executable, "-c", "import os; os.dup2(1, 5)"], timeout=30).returncode == 0
