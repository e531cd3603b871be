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


def head(path: str) -> int:
    return run([HEAD, path])


def creat(mode: int) -> Callable[[str], int]:
    return lambda p: py_open(p, "os.O_WRONLY | os.O_CREAT", mode)


_FOLLOWED: list[subprocess.Popen[str]] = []


def followed_sh() -> subprocess.Popen[str]:
    """A shell the pidforks case follows (its pid in the policy): a process of the test itself
    descends from pytest, not from it."""
    if not _FOLLOWED:
        _FOLLOWED.append(subprocess.Popen(["/bin/sh"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    return _FOLLOWED[0]


def orphan_cat_of_followed(path: str) -> None:
    """cat in an orphaned subshell of the followed shell: by the time it opens, the shell between
    them has exited and it is reparented; it still descends from the followed shell (marked at
    fork; before #12's marks the ancestor walk lost it)."""
    sh = followed_sh()
    assert sh.stdin is not None and sh.stdout is not None
    sh.stdin.write(f"/bin/sh -c '(sleep 0.3; exec {CAT} {path}) >/dev/null 2>&1 &'; echo started\n")
    sh.stdin.flush()
    assert sh.stdout.readline().strip() == "started"
    time.sleep(0.8)


def open_at(path: str, dirfd_of: str) -> int:
    """openat(fd of ``dirfd_of``, absolute ``path``): the kernel ignores the dirfd, a hook sees it."""
    return run([PY, "-c", f"import os\nd = os.open({dirfd_of!r}, os.O_RDONLY)\n"
                          f"os.close(os.open({path!r}, os.O_RDONLY, dir_fd=d))"])


FD_ARG = '    - index: 0\n      type: "fd"\n'


def in_this_process(path: str) -> int:
    os.close(os.open(path, os.O_RDONLY))
    return 0


def arg(index: int, op: str, values: str) -> str:
    """A matchArgs filter (YAML lines) on the hook's argument ``index``."""
    return f'      - index: {index}\n        operator: "{op}"\n        values: [{values}]'


CAPS_SEL = '    matchCapabilities:\n    - type: Effective\n      operator: {}\n      values: ["CAP_SYS_ADMIN"]'
BIN_SEL = '    matchBinaries:\n    - operator: {}\n      values: ["{}"]'
NS_SEL = '    matchNamespaces:\n    - namespace: Uts\n      operator: {}\n      values: ["host_ns"]'
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


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
    args_extra: str = ""             # YAML lines of more declared arguments (after the path)

    @property
    def dir(self) -> Path:
        return ROOT / self.name


UNSHARE_UTS = "ctypes.CDLL(None, use_errno=True).unshare(0x04000000)"
CASES = [
    # matchArgs, string operators on the file name
    Case("equal", arg(1, "Equal", '"{d}/a"'), cat, cat, "a", "ab"),
    Case("notequal", arg(1, "NotEqual", '"{d}/skip"'), cat, cat, "a", "skip"),
    Case("notprefix", arg(1, "NotPrefix", '"{d}/skip"'), cat, cat,
         "a", "skipme"),
    Case("postfix", arg(1, "Postfix", '".log"'), cat, cat, "a.log", "a.txt"),
    Case("notpostfix", arg(1, "NotPostfix", '".log"'), cat, cat,
         "a.txt", "a.log"),
    # matchArgs, integer operators on flags (index 2) and mode (index 3: glibc passes it with O_CREAT only)
    Case("mask", arg(2, "Mask", '"64"'),
         lambda p: py_open(p, "os.O_WRONLY | os.O_CREAT"), lambda p: py_open(p)),
    Case("intequal", arg(2, "Equal", '"524288"'),  # O_CLOEXEC: Python adds it
         lambda p: py_open(p), lambda p: py_open(p, "os.O_WRONLY")),
    Case("intnotequal", arg(2, "NotEqual", '"524288"'),
         lambda p: py_open(p, "os.O_WRONLY"), lambda p: py_open(p)),
    Case("gt", arg(3, "GT", '"400"'),
         creat(0o644), creat(0o600)),
    Case("lt", arg(3, "LT", '"400"'),
         creat(0o600), creat(0o644)),
    Case("inrange", arg(3, "InRange", '"400:500"'),
         creat(0o644), creat(0o600)),
    Case("notinrange", arg(3, "NotInRange", '"400:500"'),
         creat(0o600), creat(0o644)),
    # string sets (one map lookup per value length) and InMap (values and ranges in a hash map)
    Case("equalset", arg(1, "Equal", '"{d}/zz", "{d}/a", "{d}/bbbbbbb"'), cat, cat, "a", "ab"),
    Case("postfixset", arg(1, "Postfix", '".log", ".conf", ".x"'), cat, cat, "a.conf", "a.txt"),
    Case("inmap", arg(3, "InMap", '"100:200", "420"'), creat(0o644), creat(0o600)),
    Case("notinmap", arg(3, "NotInMap", '"100:200", "420"'), creat(0o600), creat(0o644)),
    # FileType on openat's dirfd (an fd argument; an absolute path ignores it, the hook sees it)
    Case("filetype", arg(0, "FileType", '"dir"'), lambda p: open_at(p, "."), lambda p: open_at(p, CAT),
         args_extra=FD_ARG),
    Case("notfiletype", arg(0, "NotFileType", '"dir", "fifo"'), lambda p: open_at(p, CAT),
         lambda p: open_at(p, "."), args_extra=FD_ARG),
    # matchReturnArgs: the open failed
    Case("returnlt", None, cat, cat, "missing", "a", hook_extra="    return: true\n"),  # type: ignore[arg-type]
    # matchPIDs
    Case("pidin", "    matchPIDs:\n    - operator: In\n      values: [{pid}]", in_this_process, cat),
    Case("pidnotin", "    matchPIDs:\n    - operator: NotIn\n      values: [{pid}]", cat, in_this_process),
    Case("pidforks", "    matchPIDs:\n    - operator: In\n      followForks: true\n      values: [{fpid}]",
         orphan_cat_of_followed, cat),
    Case("nspid", "    matchPIDs:\n    - operator: In\n      isNamespacePID: true\n      values: [1]",
         lambda p: run(["unshare", "--pid", "--fork", CAT, p]), cat),
    # matchBinaries / matchParentBinaries
    Case("binin", BIN_SEL.format("In", CAT), cat, head),
    Case("binnotin", BIN_SEL.format("NotIn", CAT), head, cat),
    Case("binprefix", BIN_SEL.format("Prefix", "/usr/bin/ca"), cat, head),
    Case("binpostfix", BIN_SEL.format("Postfix", "/head"), head, cat),
    Case("binfollow", '    matchBinaries:\n    - operator: In\n      followChildren: true\n      values: ["/usr/bin/dash"]',
         lambda p: run(["/bin/sh", "-c", f"{CAT} {p}; true"]), cat),
    Case("parentbin", '    matchParentBinaries:\n    - operator: In\n      values: ["/usr/bin/dash"]',
         lambda p: run(["/bin/sh", "-c", f"{CAT} {p}; true"]), cat),
    # matchNamespaces
    Case("nsnotinhost", NS_SEL.format("NotIn"), lambda p: run(["unshare", "--uts", CAT, p]), cat),
    Case("nsinhost", NS_SEL.format("In"), cat, lambda p: run(["unshare", "--uts", CAT, p])),
    # matchCapabilities
    Case("capin", CAPS_SEL.format("In"), cat, lambda p: run([*NOBODY, CAT, p])),
    Case("capnotin", CAPS_SEL.format("NotIn"), lambda p: run([*NOBODY, CAT, p]), cat),
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
    Case("signal", "    matchActions:\n    - action: Signal\n      argSig: 10", cat, head,
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
    elif c.selector.startswith("      - index"):  # more matchArgs filters
        extra = ""
        arg_filters = "\n" + c.selector.format(d=d)
    else:
        extra = textwrap.indent(c.selector.format(pid=os.getpid(), fpid=followed_sh().pid), "  ")
        arg_filters = ""
    return (f'  - call: "sys_openat"\n    syscall: true\n{c.hook_extra}'
            '    args:\n    - index: 1\n      type: "string"\n    - index: 2\n      type: "int"\n'
            f'    - index: 3\n      type: "int"\n{c.args_extra}'
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
        for sh in _FOLLOWED:
            sh.kill()
            sh.wait()


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


@pytest.mark.kernel
def test_post_rate_limit_per_process(policies: tuple[PolicyManager, dict]) -> None:
    mgr, _ = policies
    d = ROOT / "ratelimit"
    d.mkdir()
    for n in "abc":
        (d / n).write_text("x")
    post = "    matchActions:\n    - action: Post\n      rateLimit: 1m\n      rateLimitScope: process"
    text = ("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: sel-ratelimit\nspec:\n"
            "  kprobes:\n" + hook_yaml(Case("ratelimit", post, cat, cat)))
    (lp,) = mgr.load_text(text, "ratelimit.yaml")
    try:
        three = "; ".join(f"os.close(os.open({str(d / n)!r}, os.O_RDONLY))" for n in "abc")
        run([PY, "-c", f"import os; {three}"])   # one process, three opens: one event
        run([PY, "-c", f"import os; {three}"])   # another process: its own event
        time.sleep(0.3)
        paths = hook_paths(mgr, _seen, lp.policy_id, 0)
        assert paths == [str(d / "a"), str(d / "a")], paths
    finally:
        mgr.delete("sel-ratelimit")


@pytest.mark.kernel
def test_tracepoint_hook_args_by_format_index(policies: tuple[PolicyManager, dict]) -> None:
    """``tracepoints:`` args by index of the format's non-common fields: sched_process_exec's
    filename (a __data_loc string) and pid, filtered in the kernel by the filename's postfix."""
    mgr, _ = policies
    text = ("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: sel-tracepoint\nspec:\n"
            "  tracepoints:\n  - subsystem: sched\n    event: sched_process_exec\n    args:\n"
            "    - index: 0\n      type: string\n    - index: 1\n      type: int\n    selectors:\n"
            "    - matchArgs:\n      - index: 0\n        operator: Postfix\n        values: [\"/cat\"]\n")
    (lp,) = mgr.load_text(text, "tracepoint.yaml")
    try:
        c = subprocess.Popen([CAT, "/dev/null"])
        h = subprocess.Popen([HEAD, "-c0", "/dev/null"])
        c.wait(10)
        h.wait(10)
        time.sleep(0.3)
        got = [(b.args[0].data.decode(), int.from_bytes(b.args[1].data, "little"))
               for b in _drain(mgr) if b.policy_id == lp.policy_id]
        assert (CAT, c.pid) in got
        assert not any(pid == h.pid for _, pid in got)
    finally:
        mgr.delete("sel-tracepoint")


def _drain(mgr: PolicyManager) -> list[records.HookBody]:
    hook_paths(mgr, _seen, -1, -1)
    return _seen
