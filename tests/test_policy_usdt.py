"""spec.usdts on this kernel (uprobes work here): a real binary with a USDT note
(tests/data/usdt_probe.c, built with gcc), hooked through bcc's USDT support by the policy manager
in this process. The probe's arguments are read where the note says (a register, memory at a
stack offset), typed (an int32 sign-extended), matched by selectors in the kernel, and acted on
(Sigkill inside the probe). Tetragon's usdt.yaml/usdt-set.yaml name a tester binary under
/home/jolsa: refused for the missing path, as Tetragon refuses it at load; Set is refused with its
reason on a binary that has the probe."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import bpf_unavailable_reason, skip_or_fail
from guest.kfunc_common import Hooks

from collector import kernel_features, loader, procfs
from collector.drain import RecordQueue
from collector.policy import compiler, parser
from collector.policy.manager import Loaded, PolicyManager
from collector.policy.model import PolicyError

DATA = Path(__file__).parent / "data"
SRC = DATA / "usdt_probe.c"
REPO = Path(__file__).resolve().parent.parent
TESTERS = "/home/jolsa/tetragon/contrib/tester-progs"


def usdt_policy(binary: Path | str, extra: str = "") -> str:
    return textwrap.dedent(f"""\
        apiVersion: cilium.io/v1alpha1
        kind: TracingPolicy
        metadata:
          name: usdts
        spec:
          usdts:
          - path: "{binary}"
            provider: "test"
            name: "usdt3"
            args:
            - index: 0
              type: "uint64"
            - index: 1
              type: "int32"
        """) + textwrap.indent(textwrap.dedent(extra), "    ")


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("usdt") / "usdt_probe"
    subprocess.run(["gcc", "-O1", "-o", str(out), str(SRC)], check=True)
    return out


@pytest.fixture(scope="module")
def testers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("testers")
    for name in ("usdt_tester", "usdt_override_tester"):
        subprocess.run(["gcc", "-O1", "-o", str(out / name), str(DATA / f"{name}.c")], check=True)
    return {"usdt": out / "usdt_tester", "usdt-override": out / "usdt_override_tester"}


@pytest.fixture(scope="module")
def manager() -> Iterator[PolicyManager]:
    reason = bpf_unavailable_reason()
    if reason:
        skip_or_fail(reason)
    loader.prepare()
    mgr = PolicyManager(RecordQueue(1_000_000, asyncio.new_event_loop()), procfs.host_namespaces(),
                        kernel_features.probe())
    mgr.uncaught.enabled = False
    try:
        yield mgr
    finally:
        mgr.stop()


@pytest.fixture(scope="module")
def loaded(binary: Path, manager: PolicyManager) -> Iterator[tuple[Hooks, Loaded]]:
    mgr = manager
    try:
        (lp,) = mgr.load_text(usdt_policy(binary, """\
            selectors:
            - matchArgs:
              - {index: 1, operator: Equal, values: ["-7"]}
            - matchArgs:
              - {index: 0, operator: Equal, values: ["13"]}
              matchActions:
              - action: Sigkill
            """), "usdts.yaml")
        yield Hooks(mgr), lp
    finally:
        mgr.delete("usdts")


def run(binary: Path, *args: str) -> tuple[int, int]:
    p = subprocess.Popen([str(binary), *args], stdout=subprocess.DEVNULL)
    return p.pid, p.wait(timeout=30)


def test_usdt_arguments_typed_matched_and_acted_on(binary: Path, loaded: tuple[Hooks, Loaded]) -> None:
    hooks, lp = loaded
    (ch,) = lp.compiled.hooks
    assert ch.serve.startswith(f"usdt test:usdt3 in {binary} (uprobe at 1 location")
    assert lp.catalog()["hooks"][0]["symbol"] == "test:usdt3"
    silent, rc = run(binary, "6", "8")               # no selector matches: no record
    assert rc == 0
    pid, rc = run(binary, "5", "-7")                 # the int32 in memory, sign-extended: Post
    assert rc == 0
    (ev,) = hooks.wait(lp, 0, pid)
    assert int.from_bytes(ev.args[0].data[:8], "little") == 5
    assert int.from_bytes(ev.args[1].data[:8], "little", signed=True) == -7
    assert ev.selector == 0
    # the silent run's record, had there been one, came through the same ring before this one
    assert hooks.of(lp, 0, silent) == []
    killed, rc = run(binary, "13", "1")             # the u64 in a register: Sigkill inside the probe
    assert rc == -9
    assert [e.selector for e in hooks.wait(lp, 0, killed)] == [1]


def test_uprobes_carry_no_stray_reference_counter(binary: Path, loaded: tuple[Hooks, Loaded]) -> None:
    """Every uprobe goes through collector/uprobe_pmu.py with the reference counter it means (here
    none). Debian's Python bcc passes libbcc's bpf_attach_uprobe six arguments of seven, so its
    uprobes got stack garbage as their counter (0x6 here): the kernel then refuses any other uprobe
    at the same place without that counter (another tracer's), as it refuses one with another."""
    from bcc import BPF

    from collector import uprobe_pmu

    _, lp = loaded
    target = lp.compiled.hooks[0].uprobe
    assert target is not None
    path, off = BPF._check_path_symbol(str(binary).encode(), b"", target.offset, -1)
    os.close(uprobe_pmu._perf_uprobe(path, off, 0))   # the same place, no counter: the kernel agrees
    with pytest.raises(uprobe_pmu.UprobeAttachError, match="Invalid argument"):
        uprobe_pmu._perf_uprobe(path, off, 2)          # a different counter at the same place


def test_usdt_refusals(binary: Path) -> None:
    feats = kernel_features.probe()

    def refusal(text: str) -> str:
        (p,) = parser.parse_text(text, "u.yaml")
        with pytest.raises(PolicyError) as ei:
            compiler.compile_policy(p, 1, [0] * 10, feats)
        return str(ei.value)

    # Tetragon's usdt.yaml / usdt-set.yaml: the tester binary is not on this machine
    missing = "/home/jolsa/tetragon/contrib/tester-progs/usdt"
    assert refusal(usdt_policy(missing)) == f"u.yaml:7: spec.usdts[0].path: {missing} does not exist or is not a file"
    set_action = """\
        selectors:
        - matchActions:
          - action: Set
            argIndex: 0
            argValue: 32
        """
    assert "tetrapipe does not write into traced processes" in refusal(usdt_policy(binary, set_action))
    assert "no USDT probe test:nope" in refusal(usdt_policy(binary).replace('"usdt3"', '"nope"'))
    assert "(its probes: test:usdt3)" in refusal(usdt_policy(binary).replace('"usdt3"', '"nope"'))
    assert "has 2 arguments: index 2 is out of range" in refusal(
        usdt_policy(binary).replace('- index: 1\n      type: "int32"', '- index: 2\n      type: "int32"'))


# Tetragon's library policies as it publishes them, the path aside (the tester's, given)
LIBRARY_USDT = """\
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "usdts-library"
spec:
  usdts:
  - path: "{path}"
    provider: "test"
    name: "usdt3"
    args:
    - index: 0
      type: "uint64"
"""
LIBRARY_USDT_SET = """\
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "usdts-set"
spec:
  usdts:
  - path: "{path}"
    provider: "tetragon"
    name: "test_4B"
    args:
    - index: 0
      type: "int32"
    - index: 1
      type: "int32"
    - index: 2
      type: "int32"
    selectors:
      - matchActions:
        - action: Set
          argIndex: 0
          argValue: 32
"""


def test_library_usdt_policies_on_our_testers(testers: dict[str, Path], manager: PolicyManager) -> None:
    hooks = Hooks(manager)
    (lp,) = manager.load_text(LIBRARY_USDT.format(path=testers["usdt"]), "usdt.yaml")
    try:
        pid, rc = run(testers["usdt"], "0x1234567890")
        assert rc == 0
        (ev,) = hooks.wait(lp, 0, pid)
        assert int.from_bytes(ev.args[0].data[:8], "little") == 0x1234567890
    finally:
        manager.delete(lp.name)
    with pytest.raises(PolicyError) as ei:
        manager.load_text(LIBRARY_USDT_SET.format(path=testers["usdt-override"]), "usdt-set.yaml")
    assert str(ei.value).startswith("usdt-set.yaml:19: spec.usdts[0].selectors[0].matchActions[0].action: "
                                    "Set writes the USDT argument's register or memory")
    # nothing was written: the tester's result (its exit status) is the 0 it started with
    assert subprocess.run([str(testers["usdt-override"]), "4", "5"], capture_output=True).returncode == 0


def test_count_places_named_files_in_its_own_mount_namespace(tmp_path: Path) -> None:
    lib = tmp_path / "library"
    lib.mkdir()
    (lib / "usdt.yaml").write_text(LIBRARY_USDT.format(path=f"{TESTERS}/usdt"))
    (lib / "usdt-set.yaml").write_text(LIBRARY_USDT_SET.format(path=f"{TESTERS}/usdt-override"))
    (lib / "uprobe-binaries.yaml").write_text(textwrap.dedent("""\
        apiVersion: cilium.io/v1alpha1
        kind: TracingPolicy
        metadata:
          name: "uprobe"
        spec:
          uprobes:
          - path: "/lib64/libc.so.6"
            symbol: "malloc"
        """))
    before = {p: os.path.lexists(p) for p in ("/lib64/libc.so.6", "/home/jolsa", f"{TESTERS}/usdt")}
    out = tmp_path / "count.json"
    subprocess.run([sys.executable, str(REPO / "scripts" / "count-policies.py"), str(lib), "--with-named-files",
                    "--json", str(out)], check=True, capture_output=True, timeout=120)
    got = json.loads(out.read_text())
    named = got["with_named_files"]
    if not before["/lib64/libc.so.6"]:   # as on Debian
        assert "/lib64/libc.so.6 does not exist" in got["results"]["uprobe-binaries.yaml"]
        assert named["placed"]["/lib64/libc.so.6"].startswith("bound from /")
    assert "usdt-override does not exist" in got["results"]["usdt-set.yaml"]
    assert named["placed"][f"{TESTERS}/usdt"] == "built from tests/data/usdt_tester.c"
    assert named["results"]["usdt.yaml"] == "loaded"
    assert named["results"]["uprobe-binaries.yaml"] == "loaded"
    assert "Set writes the USDT argument" in named["results"]["usdt-set.yaml"]
    assert (named["served"], named["total"]) == (2, 3)
    # the placements lived only in the count's own mount namespace
    assert {p: os.path.lexists(p) for p in before} == before


SEM_POLICY = """\
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "usdt-semaphore"
spec:
  usdts:
  - path: "{path}"
    provider: "test"
    name: "usdt4"
    args:
    - index: 0
      type: "uint64"
"""


@pytest.fixture(scope="module")
def sem_tester(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sem") / "usdt_semaphore_tester"
    subprocess.run(["gcc", "-O1", "-o", str(out), str(DATA / "usdt_semaphore_tester.c")], check=True)
    return out


def _ask(proc: subprocess.Popen[str]) -> str:
    """One round of the --lines tester: "<its semaphore now> <1 if the probe fired>"."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


def test_usdt_semaphore_counted_by_the_kernel(sem_tester: Path, manager: PolicyManager) -> None:
    """An is-enabled probe (tests/data/usdt_semaphore_tester.c) as Tetragon serves it: the uprobe
    carries the semaphore's file offset as its reference counter, so the kernel raises the
    semaphore in a process already running and in each new one while the policy is loaded, the
    probe fires with its argument, and at unload the semaphore is back to 0."""
    assert run(sem_tester, "11")[1] == 0             # nobody traces it: the probe does not fire
    older = subprocess.Popen([str(sem_tester), "7", "--lines"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    hooks = Hooks(manager)
    try:
        assert _ask(older) == "0 0"
        (lp,) = manager.load_text(SEM_POLICY.format(path=sem_tester), "usdt-semaphore.yaml")
        try:
            (ch,) = lp.compiled.hooks
            assert "semaphore +0x" in ch.serve and ch.serve.endswith("counted by the kernel)")
            pid, rc = run(sem_tester, "0x1234567890")
            assert rc == 3                           # the semaphore was raised: it fired
            (ev,) = hooks.wait(lp, 0, pid)
            assert int.from_bytes(ev.args[0].data[:8], "little") == 0x1234567890
            assert _ask(older) == "1 1"              # raised in the process older than the policy too
            (ev,) = hooks.wait(lp, 0, older.pid)
            assert int.from_bytes(ev.args[0].data[:8], "little") == 7
        finally:
            manager.delete(lp.name)
        assert _ask(older) == "0 0"                  # taken back in the running process
        assert run(sem_tester, "11")[1] == 0         # and new processes no longer fire it
    finally:
        assert older.stdin is not None
        older.stdin.close()
        assert older.wait(timeout=30) == 0


def test_usdt_semaphore_in_a_shared_library(tmp_path: Path, manager: PolicyManager) -> None:
    """The probe and its semaphore in a shared library (as libc's, libpython's), the policy naming
    the library: the program that loads it fires only while the policy is loaded."""
    src = str(DATA / "usdt_semaphore_tester.c")
    lib, prog = tmp_path / "libusdtsem.so", tmp_path / "usdt_semaphore_caller"
    subprocess.run(["gcc", "-O1", "-shared", "-fPIC", "-DNO_MAIN", "-o", str(lib), src], check=True)
    subprocess.run(["gcc", "-O1", "-DLIBRARY_PROBE", "-o", str(prog), src, f"-L{tmp_path}", "-lusdtsem",
                    f"-Wl,-rpath,{tmp_path}"], check=True)
    assert run(prog, "5")[1] == 0
    (lp,) = manager.load_text(SEM_POLICY.format(path=lib), "usdt-semaphore-lib.yaml")
    try:
        pid, rc = run(prog, "21")
        assert rc == 3
        (ev,) = Hooks(manager).wait(lp, 0, pid)
        assert int.from_bytes(ev.args[0].data[:8], "little") == 21
    finally:
        manager.delete(lp.name)
    assert run(prog, "5")[1] == 0


def test_usdt_semaphore_refused_without_kernel_counters(sem_tester: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel without uprobe reference counters (< 4.20) refuses the semaphore probe with that
    reason. Stand-in: this kernel has them, so the uprobe PMU's sysfs directory is replaced by one
    without format/ref_ctr_offset, as such a kernel's looks."""
    from collector import uprobe_pmu

    (tmp_path / "type").write_text("8\n")
    monkeypatch.setattr(uprobe_pmu, "UPROBE_PMU", str(tmp_path))
    (p,) = parser.parse_text(SEM_POLICY.format(path=sem_tester), "s.yaml")
    with pytest.raises(PolicyError) as ei:
        compiler.compile_policy(p, 1, [0] * 10, kernel_features.probe())
    assert str(ei.value) == (f"s.yaml:7: spec.usdts[0]: USDT probe test:usdt4 in {sem_tester} has a semaphore "
                             "(an is-enabled probe): this kernel's uprobe PMU has no ref_ctr_offset (uprobe "
                             "reference counters, Linux >= 4.20), so the kernel cannot enable it and the "
                             "process would never fire it")


def test_usdt_semaphore_outside_the_file_refused(tmp_path: Path) -> None:
    """A semaphore with no file contents (.bss) cannot be a reference counter (the kernel counts a
    file offset): refused with the reason, not attached to count nothing."""
    out = tmp_path / "usdt_semaphore_bss"
    subprocess.run(["gcc", "-O1", "-DSEMAPHORE_IN_BSS", "-o", str(out), str(DATA / "usdt_semaphore_tester.c")],
                   check=True)
    (p,) = parser.parse_text(SEM_POLICY.format(path=out), "b.yaml")
    with pytest.raises(PolicyError) as ei:
        compiler.compile_policy(p, 1, [0] * 10, kernel_features.probe())
    assert "has a semaphore (an is-enabled probe): the semaphore at 0x" in str(ei.value)
    assert "is in no loaded segment of" in str(ei.value)


def test_uprobe_ref_ctr_offsets(sem_tester: Path, manager: PolicyManager) -> None:
    """Tetragon's spec.uprobes refCtrOffsets (one per offset): the same kernel counting for a
    uprobe given by file offsets, here the tester's probe location and semaphore."""
    from bcc import BPF, USDT

    from collector import usdt_semaphore

    ctx = USDT(path=str(sem_tester))   # its probes read through it: kept alive until done
    (pr,) = ctx.enumerate_probes()
    _, loc = BPF._check_path_symbol(str(sem_tester).encode(), b"", pr.get_location(0).address, -1)
    sem = usdt_semaphore.file_offset(str(sem_tester), pr.semaphore)
    del pr, ctx
    text = textwrap.dedent(f"""\
        apiVersion: cilium.io/v1alpha1
        kind: TracingPolicy
        metadata:
          name: "uprobe-refctr"
        spec:
          uprobes:
          - path: "{sem_tester}"
            offsets: [{loc}]
            refCtrOffsets: [{sem}]
        """)
    with pytest.raises(PolicyError, match=r"^r.yaml:9: spec.uprobes\[0\].refCtrOffsets: refCtrOffsets\(2\) has "
                                          r"different dimension than offsets\(1\)$"):
        parser.parse_text(text.replace(f"[{sem}]", f"[{sem}, {sem}]"), "r.yaml")
    assert run(sem_tester, "8")[1] == 0
    (lp,) = manager.load_text(text, "uprobe-refctr.yaml")
    try:
        assert lp.compiled.hooks[0].serve.endswith(f", reference counter +{sem:#x}")
        pid, rc = run(sem_tester, "8")
        assert rc == 3
        assert Hooks(manager).wait(lp, 0, pid)
    finally:
        manager.delete(lp.name)
    assert run(sem_tester, "8")[1] == 0
