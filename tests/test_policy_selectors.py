"""Every operator and selector kind, in the kernel: for each, one process that matches and one that
does not. Policies load in this process through the collector's PolicyManager (real bcc programs,
real processes); the hook records the kernel wrote are read back from the drain queue.

Each case is one hook on ``openat`` that also requires the opened path to start with the case's
own directory, so other programs on the machine never disturb it. Cases are grouped into a few
policies (one compile each) to keep the module under a minute.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import bpf_unavailable_reason, skip_or_fail

from bpf import records
from collector import loader, procfs
from collector.drain import RecordQueue
from collector.policy.manager import PolicyManager

ROOT = Path(f"/tmp/tp-sel-{uuid.uuid4().hex[:8]}")
PY = sys.executable
CAT = "/usr/bin/cat"
HEAD = "/usr/bin/head"


def run(argv: list[str]) -> int:
    return subprocess.run(argv, capture_output=True, timeout=30).returncode


def cat(path: str) -> int:
    return run([CAT, path])


def py_open(path: str, flags: str = "os.O_RDONLY", mode: int = 0o644, before: str = "") -> int:
    return run([PY, "-c", f"import os, ctypes\n{before}\nos.close(os.open({path!r}, {flags}, {mode}))"])


def in_this_process(path: str) -> int:
    os.close(os.open(path, os.O_RDONLY))
    return 0


@dataclass
class Case:
    name: str
    selector: str                    # YAML lines of the selector after the directory filter
    match: Callable[[str], object]   # opens the given path in a way that matches
    nomatch: Callable[[str], object]
    match_file: str = "a"
    nomatch_file: str = "a"
    hook_extra: str = ""
    signal: int = 0                  # the matching process dies of this signal

    @property
    def dir(self) -> Path:
        return ROOT / self.name


UNSHARE_UTS = "ctypes.CDLL(None, use_errno=True).unshare(0x04000000)"
CASES = [
    # matchArgs, string operators on the file name
    Case("equal", '      - index: 1\n        operator: "Equal"\n        values: ["{d}/a"]', cat, cat, "a", "ab"),
    Case("notequal", '      - index: 1\n        operator: "NotEqual"\n        values: ["{d}/skip"]', cat, cat, "a", "skip"),
    Case("notprefix", '      - index: 1\n        operator: "NotPrefix"\n        values: ["{d}/skip"]', cat, cat,
         "a", "skipme"),
    Case("postfix", '      - index: 1\n        operator: "Postfix"\n        values: [".log"]', cat, cat, "a.log", "a.txt"),
    Case("notpostfix", '      - index: 1\n        operator: "NotPostfix"\n        values: [".log"]', cat, cat,
         "a.txt", "a.log"),
    # matchArgs, integer operators on flags (index 2) and mode (index 3: glibc passes it with O_CREAT only)
    Case("mask", '      - index: 2\n        operator: "Mask"\n        values: ["64"]',
         lambda p: py_open(p, "os.O_WRONLY | os.O_CREAT"), lambda p: py_open(p)),
    Case("intequal", '      - index: 2\n        operator: "Equal"\n        values: ["524288"]',  # O_CLOEXEC: Python adds it
         lambda p: py_open(p), lambda p: py_open(p, "os.O_WRONLY")),
    Case("intnotequal", '      - index: 2\n        operator: "NotEqual"\n        values: ["524288"]',
         lambda p: py_open(p, "os.O_WRONLY"), lambda p: py_open(p)),
    Case("gt", '      - index: 3\n        operator: "GT"\n        values: ["400"]',
         lambda p: py_open(p, "os.O_WRONLY | os.O_CREAT", 0o644), lambda p: py_open(p, "os.O_WRONLY | os.O_CREAT", 0o600)),
    Case("lt", '      - index: 3\n        operator: "LT"\n        values: ["400"]',
         lambda p: py_open(p, "os.O_WRONLY | os.O_CREAT", 0o600), lambda p: py_open(p, "os.O_WRONLY | os.O_CREAT", 0o644)),
    Case("inrange", '      - index: 3\n        operator: "InRange"\n        values: ["400:500"]',
         lambda p: py_open(p, "os.O_WRONLY | os.O_CREAT", 0o644), lambda p: py_open(p, "os.O_WRONLY | os.O_CREAT", 0o600)),
    Case("notinrange", '      - index: 3\n        operator: "NotInRange"\n        values: ["400:500"]',
         lambda p: py_open(p, "os.O_WRONLY | os.O_CREAT", 0o600), lambda p: py_open(p, "os.O_WRONLY | os.O_CREAT", 0o644)),
    # matchReturnArgs: the open failed
    Case("returnlt", None, cat, cat, "missing", "a", hook_extra="    return: true\n"),  # type: ignore[arg-type]
    # matchPIDs
    Case("pidin", "    matchPIDs:\n    - operator: In\n      values: [{pid}]", in_this_process, cat),
    Case("pidnotin", "    matchPIDs:\n    - operator: NotIn\n      values: [{pid}]", cat, in_this_process),
    Case("pidforks", "    matchPIDs:\n    - operator: In\n      followForks: true\n      values: [{pid}]", cat,
         lambda p: run(["setsid", "-f", CAT, p]) or time.sleep(0.3)),
    Case("nspid", "    matchPIDs:\n    - operator: In\n      isNamespacePID: true\n      values: [1]",
         lambda p: run(["unshare", "--pid", "--fork", CAT, p]), cat),
    # matchBinaries / matchParentBinaries
    Case("binin", f'    matchBinaries:\n    - operator: In\n      values: ["{CAT}"]', cat, lambda p: run([HEAD, p])),
    Case("binnotin", f'    matchBinaries:\n    - operator: NotIn\n      values: ["{CAT}"]', lambda p: run([HEAD, p]), cat),
    Case("binprefix", '    matchBinaries:\n    - operator: Prefix\n      values: ["/usr/bin/ca"]', cat,
         lambda p: run([HEAD, p])),
    Case("binpostfix", '    matchBinaries:\n    - operator: Postfix\n      values: ["/head"]', lambda p: run([HEAD, p]), cat),
    Case("parentbin", '    matchParentBinaries:\n    - operator: In\n      values: ["/usr/bin/dash"]',
         lambda p: run(["/bin/sh", "-c", f"{CAT} {p}; true"]), cat),
    # matchNamespaces
    Case("nsnotinhost", '    matchNamespaces:\n    - namespace: Uts\n      operator: NotIn\n      values: ["host_ns"]',
         lambda p: run(["unshare", "--uts", CAT, p]), cat),
    Case("nsinhost", '    matchNamespaces:\n    - namespace: Uts\n      operator: In\n      values: ["host_ns"]',
         cat, lambda p: run(["unshare", "--uts", CAT, p])),
    # matchCapabilities
    Case("capin", '    matchCapabilities:\n    - type: Effective\n      operator: In\n      values: ["CAP_SYS_ADMIN"]',
         cat, lambda p: run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", CAT, p])),
    Case("capnotin", '    matchCapabilities:\n    - type: Effective\n      operator: NotIn\n      values: ["CAP_SYS_ADMIN"]',
         lambda p: run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", CAT, p]), cat),
    Case("capns", '    matchCapabilities:\n    - operator: In\n      isNamespaceCapability: true\n'
                  '      values: ["CAP_SYS_ADMIN"]',
         lambda p: run(["unshare", "--user", "--map-root-user", CAT, p]), cat),
    # matchNamespaceChanges / matchCapabilityChanges: compared with the state at exec
    Case("nschange", '    matchNamespaceChanges:\n    - operator: In\n      values: ["Uts"]',
         lambda p: py_open(p, before=UNSHARE_UTS), lambda p: py_open(p)),
    Case("capchange", '    matchCapabilityChanges:\n    - type: Effective\n      operator: In\n'
                      '      values: ["CAP_SYS_ADMIN"]',
         lambda p: py_open(p, before="os.setgid(65534); os.setuid(65534)"), lambda p: py_open(p)),
    # actions
    Case("signal", "    matchActions:\n    - action: Signal\n      argSig: 10", cat, lambda p: run([HEAD, p]),
         signal=10),
]
CASES[-1].selector = ('    matchBinaries:\n    - operator: In\n      values: ["/usr/bin/cat"]\n'
                      "    matchActions:\n    - action: Signal\n      argSig: 10")
GROUPS = 4


def hook_yaml(c: Case) -> str:
    d = c.dir
    if c.selector is None:  # matchReturnArgs
        extra = '      matchReturnArgs:\n      - operator: "LT"\n        values: ["0"]'
        arg_filters = ""
    elif c.selector.startswith("      - index"):
        extra = ""
        arg_filters = "\n" + c.selector.format(d=d)
    else:
        extra = textwrap.indent(c.selector.format(pid=os.getpid()), "  ")
        arg_filters = ""
    return (f'  - call: "sys_openat"\n    syscall: true\n{c.hook_extra}'
            '    args:\n    - index: 1\n      type: "string"\n    - index: 2\n      type: "int"\n'
            '    - index: 3\n      type: "int"\n'
            f'    selectors:\n    - matchArgs:\n      - index: 1\n        operator: "Prefix"\n'
            f'        values: ["{d}/"]{arg_filters}\n{extra}\n'.replace("\n\n", "\n"))


@pytest.fixture(scope="module")
def policies() -> Iterator[tuple[PolicyManager, dict[str, tuple[int, int]]]]:
    reason = bpf_unavailable_reason()
    if reason:
        skip_or_fail(reason)
    ROOT.mkdir()
    os.chmod(ROOT, 0o755)
    for c in CASES:
        c.dir.mkdir()
        os.chmod(c.dir, 0o777)
        for f in {c.match_file, c.nomatch_file} - {"missing"}:
            (c.dir / f).write_text("x\n")
            os.chmod(c.dir / f, 0o666)
    loader.prepare()
    mgr = PolicyManager(RecordQueue(1_000_000, asyncio.new_event_loop()), procfs.host_namespaces())
    where: dict[str, tuple[int, int]] = {}
    try:
        for g in range(GROUPS):
            group = CASES[g::GROUPS]
            text = (f"apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: sel-{g}\n"
                    "spec:\n  kprobes:\n" + "".join(hook_yaml(c) for c in group))
            (lp,) = mgr.load_text(text, f"sel-{g}.yaml")
            for i, c in enumerate(group):
                where[c.name] = (lp.policy_id, i)
        yield mgr, where
    finally:
        mgr.stop()
        shutil.rmtree(ROOT, ignore_errors=True)


def hook_paths(mgr: PolicyManager, seen: list[records.HookBody], policy_id: int, hook_id: int) -> list[str]:
    for raw in mgr.queue.take(1_000_000):
        rec = records.decode(raw)
        if isinstance(rec, records.HookRecord):
            seen.append(records.decode_hook(rec))
    return [b.args[0].data.decode() for b in seen if b.policy_id == policy_id and b.hook_id == hook_id]


_seen: list[records.HookBody] = []


@pytest.mark.kernel
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_selector_matches_and_does_not_match(policies: tuple[PolicyManager, dict], case: Case) -> None:
    mgr, where = policies
    pid, hid = where[case.name]
    yes, no = str(case.dir / case.match_file), str(case.dir / case.nomatch_file)
    rc = case.match(yes)
    if case.signal:
        assert rc == -case.signal, f"the matching process should die of signal {case.signal}, rc {rc}"
    case.nomatch(no)
    deadline = time.monotonic() + 5
    while True:
        paths = hook_paths(mgr, _seen, pid, hid)
        if yes in paths or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    time.sleep(0.2)
    paths = hook_paths(mgr, _seen, pid, hid)
    assert yes in paths, f"{case.name}: no event for the matching open of {yes}"
    if no != yes:
        assert no not in paths, f"{case.name}: event for the non-matching open of {no}"
    else:
        assert paths.count(yes) == 1, f"{case.name}: the non-matching open was reported too: {paths}"


@pytest.mark.kernel
def test_nopost_counts_without_events(policies: tuple[PolicyManager, dict]) -> None:
    mgr, _ = policies
    d = ROOT / "nopost"
    d.mkdir()
    text = ("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: sel-nopost\nspec:\n"
            "  kprobes:\n" + hook_yaml(Case("nopost", "    matchActions:\n    - action: NoPost", cat, cat)))
    (lp,) = mgr.load_text(text, "nopost.yaml")
    try:
        cat(str(d / "a"))
        time.sleep(0.3)
        assert not hook_paths(mgr, _seen, lp.policy_id, 0)
        counts = lp.bpf["sel_counts"]
        assert sum(counts[ctypes.c_int(0)]) >= 1   # the selector matched (hook 0, selector 0)
    finally:
        mgr.delete("sel-nopost")
