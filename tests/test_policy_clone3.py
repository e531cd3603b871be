"""clone3 with new namespaces: its flags live in ``struct clone_args`` (user memory the first
argument points to), not in a register. A policy's integer argument 0 of ``sys_clone3`` is
served as clone_args.flags, so the namespace-escape example (examples/policies/) matches
clone3(CLONE_NEWUTS|CLONE_NEWNS) as it matches clone, and stays silent on a clone3 without
namespace flags.

A program the test compiles with gcc calls clone3 (glibc has no wrapper: syscall(SYS_clone3))
three ways, the negative first: plain, with namespace flags from its stack, and with namespace
flags from a file mapping it has not touched yet (the page is not resident at the syscall's
enter, where bpf_probe_read_user cannot fault it in; the flags are read at the exit). Policies
load in this process through the collector's PolicyManager (real bcc programs); the hook records
the kernel wrote are read back from the drain queue and turned into events by the enricher.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import bpf_unavailable_reason, skip_or_fail

from bpf import records
from collector import loader, procfs
from collector.drain import RecordQueue
from collector.policy import compiler, parser
from collector.policy.manager import PolicyManager
from enricher.event_builder import EventBuilder
from enricher.policy_events import PolicyEvents
from enricher.process_cache import ProcessCache
from exporters import protojson
from schemas import codec

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "policies" / "namespace-escape.yaml"
CLONE_NEWNS, CLONE_NEWUTS, CLONE_FILES = 0x00020000, 0x04000000, 0x00000400
NS_FLAGS = CLONE_NEWUTS | CLONE_NEWNS

CLONE3_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* clone3 from *args; the child exits at once, the parent waits for it */
static int call(struct clone_args *args) {
    long pid = syscall(SYS_clone3, args, sizeof(*args));
    if (pid < 0)
        return 1;
    if (pid == 0)
        _exit(0);
    int st = 0;
    return waitpid((pid_t)pid, &st, 0) == pid && WIFEXITED(st) ? 0 : 1;
}

int main(int argc, char **argv) {
    struct clone_args a;
    memset(&a, 0, sizeof(a));
    a.exit_signal = SIGCHLD;
    a.flags = strtoull(argv[2], 0, 0);
    if (!strcmp(argv[1], "stack"))
        return call(&a);
    /* "mapped": the struct in a file mapping this process has not touched (not resident) */
    int fd = open(argv[3], O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, &a, sizeof(a)) != sizeof(a))
        return 3;
    struct clone_args *m = mmap(0, 4096, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED)
        return 4;
    return call(m);
}
"""


@pytest.fixture(scope="module")
def prog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("clone3")
    (d / "clone3.c").write_text(CLONE3_C)
    subprocess.run(["gcc", "-O1", "-o", str(d / "clone3"), str(d / "clone3.c")], check=True)
    return d / "clone3"


RET_POLICY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: clone3-return
spec:
  kprobes:
  - call: sys_clone3
    syscall: true
    return: true
    returnArg: {index: 0, type: int}
    args:
    - {index: 0, type: uint64, label: flags}
    selectors:
    - matchArgs:
      - {index: 0, operator: Mask, values: ["0x04000000"]}
"""


@pytest.fixture(scope="module")
def mgr() -> Iterator[PolicyManager]:
    reason = bpf_unavailable_reason()
    if reason:
        skip_or_fail(reason)
    loader.prepare()
    m = PolicyManager(RecordQueue(1_000_000, asyncio.new_event_loop()), procfs.host_namespaces())
    try:
        m.load_text(EXAMPLE.read_text(), str(EXAMPLE))
        m.load_text(RET_POLICY, "clone3-return.yaml")
        yield m
    finally:
        m.stop()


class Seen:
    """Every record the policies wrote, turned into events by the enricher's code."""

    def __init__(self) -> None:
        self.pe = PolicyEvents()
        self.builder = EventBuilder(ProcessCache(1000))
        self.events: list[dict] = []

    def take(self, mgr: PolicyManager) -> None:
        for raw in mgr.queue.take(1_000_000):
            rec = records.decode(raw)
            if isinstance(rec, records.PolicyRecord):
                self.pe.on_catalog(rec, "n")
            elif isinstance(rec, records.HookRecord):
                ev = self.pe.on_hook(rec, "n", 0, self.builder)
                if ev is not None:
                    self.events.append(protojson.to_protojson(codec.decode("event", codec.encode("event", ev))))

    def of(self, mgr: PolicyManager, pid: int, policy: str, n: int, timeout: float = 10) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            self.take(mgr)
            got = [e["process_kprobe"] for e in self.events
                   if e.get("process_kprobe", {}).get("policy_name") == policy
                   and e["process_kprobe"]["process"]["pid"] == pid]
            if len(got) >= n or time.monotonic() > deadline:
                time.sleep(0.3)
                self.take(mgr)
                return [e["process_kprobe"] for e in self.events
                        if e.get("process_kprobe", {}).get("policy_name") == policy
                        and e["process_kprobe"]["process"]["pid"] == pid]
            time.sleep(0.1)


@pytest.fixture(scope="module")
def seen() -> Seen:
    return Seen()


def _args(ev: dict) -> dict[str, object]:
    return {a["label"]: next(v for k, v in a.items() if k != "label") for a in ev.get("args", [])}


def _spawn(prog: Path, *argv: str) -> int:
    p = subprocess.Popen([str(prog), *argv])
    assert p.wait(30) == 0, f"clone3 helper {argv} failed"
    return p.pid


@pytest.mark.kernel
def test_clone3_with_namespace_flags_fires_plain_stays_silent(mgr: PolicyManager, seen: Seen, prog: Path) -> None:
    plain = _spawn(prog, "stack", str(CLONE_FILES))          # negative: no namespace flag
    ns = _spawn(prog, "stack", str(NS_FLAGS))                # positive
    evs = seen.of(mgr, ns, "namespace-escape", 1)
    assert [e["function_name"] for e in evs] == ["sys_clone3"]
    args = _args(evs[0])
    assert int(args["flags"]) == NS_FLAGS and int(args["size"]) == 88   # CLONE_ARGS_SIZE_VER2
    assert evs[0]["message"] == "new namespaces (clone3)"
    assert seen.of(mgr, plain, "namespace-escape", 1, timeout=1) == []


@pytest.mark.kernel
def test_clone3_flags_from_memory_not_resident_at_the_call(mgr: PolicyManager, seen: Seen, prog: Path,
                                                           tmp_path: Path) -> None:
    plain = _spawn(prog, "mapped", str(CLONE_FILES), str(tmp_path / "plain.args"))
    ns = _spawn(prog, "mapped", str(NS_FLAGS), str(tmp_path / "ns.args"))
    evs = seen.of(mgr, ns, "namespace-escape", 1)
    assert [(e["function_name"], int(_args(e)["flags"])) for e in evs] == [("sys_clone3", NS_FLAGS)]
    assert seen.of(mgr, plain, "namespace-escape", 1, timeout=1) == []


@pytest.mark.kernel
def test_clone3_return_hook_reads_flags_at_exit(mgr: PolicyManager, seen: Seen, prog: Path) -> None:
    other = _spawn(prog, "stack", str(CLONE_NEWNS))          # a namespace flag, not the one asked
    uts = _spawn(prog, "stack", str(CLONE_NEWUTS))
    evs = seen.of(mgr, uts, "clone3-return", 1)
    assert len(evs) == 1 and int(_args(evs[0])["flags"]) == CLONE_NEWUTS
    assert int(evs[0]["return"]["int_arg"]) > 0              # the parent's side: the child's pid
    assert seen.of(mgr, other, "clone3-return", 1, timeout=1) == []


def test_clone3_argument_zero_served_as_flags_only_when_integer() -> None:
    """Without a kernel: the notice says how argument 0 is served; a char_buf argument 0 keeps
    the raw struct (the pointer), so nothing changes for policies that copy it."""
    (p,) = parser.parse_text(EXAMPLE.read_text(), str(EXAMPLE))
    comp = compiler.compile_policy(p, 1, [0] * 10)
    (hook,) = [h for h in comp.hooks if h.function_name == "sys_clone3"]
    assert hook.attach == ["syscalls:sys_enter_clone3", "syscalls:sys_exit_clone3"]
    assert any("clone_args.flags" in n for n in comp.notices)
    assert "tp_clone3_flags(a)" in comp.text
    raw = RET_POLICY.replace("clone3-return", "clone3-raw").replace(
        "args:\n    - {index: 0, type: uint64, label: flags}",
        "args:\n    - {index: 0, type: char_buf, sizeArgIndex: 2}\n    - {index: 1, type: size_t}").replace(
        "    selectors:\n    - matchArgs:\n      - {index: 0, operator: Mask, values: [\"0x04000000\"]}\n", "")
    (q,) = parser.parse_text(raw, "raw.yaml")
    comp = compiler.compile_policy(q, 2, [0] * 10)
    assert "tp_clone3_flags" not in comp.text
    assert not any("clone_args.flags" in n for n in comp.notices)
