"""``spec.loader: true`` in a TracingPolicy: as in Tetragon, a policy that asks for ``process_loader``
events turns the loader sensor on while it is loaded, without the collector's global
``--enable-loader-events``; deleting the last such policy turns it off again.

The kernel test runs the real pipeline (collector without the global option, broker, enricher,
JSON export), adds the policy over the control socket, and has a program the test compiles
dlopen() a library the test builds: its ``process_loader`` event appears. After the policy is
deleted, the same program dlopen()s a second library, then a marker process execs; once the
marker's exec is exported, no loader event of the second run has come (nor any of it later).
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from harness import Pipeline, wait_until

from bpf import records
from collector import loader, procfs
from collector.drain import RecordQueue
from collector.policy import compiler, parser
from collector.policy.manager import PolicyManager
from collector.policy.model import PolicyError
from tetrapipe import control_client

BUILD_ID = "feedfacecafebeef00112233445566778899aabb"
LIB_C = "int tp_answer(void) { return 42; }\n"
MAIN_C = r"""
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    int (*f)(void) = (int (*)(void))dlsym(h, "tp_answer");
    return f && f() == 42 ? 0 : 2;
}
"""

REPO = Path(__file__).resolve().parent.parent
POLICY = (REPO / "examples" / "policies" / "library-loads.yaml").read_text()   # the example, as is


def _build(tmp: Path) -> tuple[Path, Path, Path]:
    (tmp / "lib.c").write_text(LIB_C)
    (tmp / "main.c").write_text(MAIN_C)
    first, second, prog = tmp / "libtpfirst.so", tmp / "libtpsecond.so", tmp / "dlopener"
    for lib in (first, second):
        subprocess.run(["gcc", "-shared", "-fPIC", f"-Wl,--build-id=0x{BUILD_ID}", "-o", lib, tmp / "lib.c"],
                       check=True)
    subprocess.run(["gcc", "-o", prog, tmp / "main.c", "-ldl"], check=True)
    return first, second, prog


def _loaders(pipeline: Pipeline, pid: int) -> list[dict[str, Any]]:
    return [e["process_loader"] for e in pipeline.exported()
            if e.get("process_loader", {}).get("process", {}).get("pid") == pid]


def _exec_of(pipeline: Pipeline, pid: int) -> bool:
    return any(e.get("process_exec", {}).get("process", {}).get("pid") == pid for e in pipeline.exported())


@pytest.mark.kernel
def test_loader_policy_turns_loader_events_on_and_off(bpf_ok: None, pipeline: Pipeline, tmp_path: Path) -> None:
    first, second, prog = _build(tmp_path)
    pipeline.start_all()   # no enable_loader_events: only the policy asks for them
    sock = pipeline.base["control_socket"]

    # before the policy: nothing
    before = subprocess.Popen([str(prog), str(first)])
    assert before.wait(30) == 0

    reply = control_client.request(sock, {"op": "add", "yaml": POLICY, "source": "library-loads.yaml"})
    assert reply["ok"], reply
    (info,) = reply["loaded"]
    assert info["loader"] is True and info["hooks"] == []
    listed = control_client.request(sock, {"op": "list"})["policies"]
    assert [(p["name"], p["loader"], p["state"]) for p in listed] == [("library-loads", True, "enabled")]

    on = subprocess.Popen([str(prog), str(first)])
    assert on.wait(30) == 0
    wait_until(lambda: any(ld["path"] == str(first) for ld in _loaders(pipeline, on.pid)), 30,
               what="process_loader of the test library while the policy is loaded")
    ld = next(ld for ld in _loaders(pipeline, on.pid) if ld["path"] == str(first))
    assert base64.b64decode(ld["buildid"]).hex() == BUILD_ID
    assert ld["process"].get("binary") == str(prog), ld
    assert _exec_of(pipeline, before.pid) and _loaders(pipeline, before.pid) == []

    reply = control_client.request(sock, {"op": "delete", "name": "library-loads"})
    assert reply["ok"], reply
    assert "loader sensor off" in pipeline.services["collector"].log()

    off = subprocess.Popen([str(prog), str(second)])
    assert off.wait(30) == 0
    marker = subprocess.Popen(["/bin/true"])
    marker.wait(30)
    wait_until(lambda: _exec_of(pipeline, marker.pid) and _exec_of(pipeline, off.pid), 30,
               what="exec events after the policy was deleted")
    time.sleep(1.0)   # a loader record of `off` would have been in the same or an earlier batch
    assert _loaders(pipeline, off.pid) == []
    assert not any(e.get("process_loader", {}).get("path") == str(second) for e in pipeline.exported())


def test_loader_field_parsed_and_refused_with_line() -> None:
    (p,) = parser.parse_text(POLICY, "ok.yaml")
    assert p.loader and p.hooks == []
    comp = compiler.compile_policy(p, 1, [0] * 10)
    assert comp.text == "" and comp.hooks == []
    (q,) = parser.parse_text(POLICY.replace("loader: true", "loader: false\n  tracepoints:\n"
                                            "  - {subsystem: sched, event: sched_process_exec}"), "f.yaml")
    assert not q.loader
    with pytest.raises(PolicyError) as e:
        parser.parse_text(POLICY.replace("loader: true", "loader: 1"), "bad.yaml")
    assert str(e.value) == "bad.yaml:10: spec.loader: expected true or false, got 1"
    with pytest.raises(PolicyError) as e:
        parser.parse_text(POLICY.replace("loader: true", "loader: [true]"), "bad.yaml")
    assert str(e.value).startswith("bad.yaml:10: spec.loader: expected true or false")
    with pytest.raises(PolicyError) as e:
        parser.parse_text(POLICY.replace("loader: true", "loader: false"), "empty.yaml")
    assert "no hooks" in str(e.value) and "loader: true" in str(e.value)
    with pytest.raises(PolicyError) as e:
        parser.parse_text(POLICY + "  podSelector:\n    matchLabels: {app: web}\n", "pod.yaml")
    assert str(e.value).startswith("pod.yaml:11: spec.podSelector: spec.loader: the loader sensor")


MIXED = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: loads-and-execs
spec:
  loader: true
  tracepoints:
  - subsystem: sched
    event: sched_process_exec
    message: exec
    args:
    - {index: 0, type: string}
    selectors:
    - matchArgs:
      - {index: 0, operator: Postfix, values: ["/dlopener"]}
"""


def _loader_paths(mgr: PolicyManager) -> list[tuple[int, str]]:
    out = []
    for raw in mgr.queue.take(1_000_000):
        rec = records.decode(raw)
        if isinstance(rec, records.LoaderRecord):
            out.append((rec.header.pid, rec.path.decode()))
    return out


def _dlopen(prog: Path, lib: Path, mgr: PolicyManager, expect: bool) -> None:
    p = subprocess.Popen([str(prog), str(lib)])
    assert p.wait(30) == 0
    deadline = time.monotonic() + (10 if expect else 1.5)
    got: list[tuple[int, str]] = []
    while time.monotonic() < deadline:
        got += _loader_paths(mgr)
        if (p.pid, str(lib)) in got:
            break
        time.sleep(0.1)
    assert ((p.pid, str(lib)) in got) == expect, f"loader record of {lib} expected: {expect}"


@pytest.mark.kernel
def test_loader_sensor_follows_enabled_loader_policies(bpf_ok: None, tmp_path: Path) -> None:
    """In the collector's PolicyManager: on with the first enabled loader policy (alone or with
    hooks), off when disabled, on again when enabled, on while any remains, off after the last;
    with the collector's own loader sensor (--enable-loader-events) no second one is loaded."""
    first, _, prog = _build(tmp_path)
    loader.prepare()
    mgr = PolicyManager(RecordQueue(1_000_000, asyncio.new_event_loop()), procfs.host_namespaces())
    try:
        _dlopen(prog, first, mgr, expect=False)
        mgr.load_text(POLICY, "library-loads.yaml")
        assert mgr.loader_sensor is not None
        _dlopen(prog, first, mgr, expect=True)
        mgr.set_enabled("library-loads", False)
        assert mgr.loader_sensor is None
        _dlopen(prog, first, mgr, expect=False)
        mgr.set_enabled("library-loads", True)
        (lp,) = mgr.load_text(MIXED, "mixed.yaml")
        assert [h.function_name for h in lp.compiled.hooks] == ["sched_process_exec"]
        mgr.delete("library-loads")
        assert mgr.loader_sensor is not None        # loads-and-execs still asks for it
        _dlopen(prog, first, mgr, expect=True)
        mgr.delete("loads-and-execs")
        assert mgr.loader_sensor is None
        _dlopen(prog, first, mgr, expect=False)
        mgr.loader_builtin = True
        (lp,) = mgr.load_text(POLICY, "library-loads.yaml")
        assert mgr.loader_sensor is None and any("--enable-loader-events" in n for n in lp.info()["notices"])
    finally:
        mgr.stop()
    assert mgr.loader_sensor is None
