"""spec.uprobes through the real pipeline: a TracingPolicy hooks functions of a program the test
compiles with gcc, by symbol; selectors filter on the captured arguments (Post for one user,
silent for another) and Sigkill stops the process inside the forbidden function. Events are
``process_uprobe`` with path, symbol, offset, typed arguments, action and the policy's name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import bpf_unavailable_reason, skip_or_fail
from harness import Pipeline, wait_until

from tetrapipe.broker import EmbeddedBroker

TARGET_C = r"""
#include <stdio.h>
#include <string.h>
__attribute__((noinline)) int tp_check_password(const char *user, int attempt)
{
    asm volatile("" ::: "memory");
    return (int)strlen(user) + attempt;
}
__attribute__((noinline)) int tp_forbidden(int x)
{
    asm volatile("" ::: "memory");
    return x + 1;
}
int main(int argc, char **argv)
{
    int s = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--forbidden"))
            s += tp_forbidden(i);
        else
            s += tp_check_password(argv[i], i);
    }
    printf("survived %d\n", s);
    return 0;
}
"""


@pytest.fixture(scope="module")
def traced(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pipeline, Path]]:
    reason = bpf_unavailable_reason()
    if reason:
        skip_or_fail(reason)
    tmp = tmp_path_factory.mktemp("policy-uprobes")
    os.chmod(tmp, 0o755)
    (tmp / "target.c").write_text(TARGET_C)
    target = tmp / "target"
    subprocess.run(["gcc", "-O1", "-o", str(target), str(tmp / "target.c")], check=True)
    usdt = tmp / "usdt_probe"     # a USDT note (tests/data/usdt_probe.c): spec.usdts in the same policy
    subprocess.run(["gcc", "-O1", "-o", str(usdt), str(Path(__file__).parent / "data" / "usdt_probe.c")],
                   check=True)
    policy = tmp / "watch-login.yaml"
    policy.write_text(textwrap.dedent(f"""\
        apiVersion: cilium.io/v1alpha1
        kind: TracingPolicy
        metadata:
          name: watch-login
        spec:
          uprobes:
          - path: {target}
            symbols: [tp_check_password]
            message: "password check"
            tags: ["app"]
            args:
            - {{index: 0, type: string, label: user}}
            - {{index: 1, type: int, label: attempt}}
            selectors:
            - matchArgs:
              - {{index: 0, operator: Equal, values: ["alice"]}}
          - path: {target}
            symbols: [tp_forbidden]
            args:
            - {{index: 0, type: int}}
            selectors:
            - matchActions:
              - action: Sigkill
          usdts:
          - path: {usdt}
            provider: test
            name: usdt3
            message: "usdt fired"
            args:
            - {{index: 0, type: uint64, label: n}}
            - {{index: 1, type: int32, label: w}}
        """))
    os.chmod(policy, 0o644)
    p = Pipeline(broker.bootstrap, tmp)
    p.settings["tracing_policy"] = str(policy)
    p.settings["export_file_max_size_mb"] = "2000"
    try:
        p.start("enricher", "enricher")
        p.start("export-json", "export", "json")
        p.start("collector", "collector", wait=False).wait_ready(180)
        yield p, target
    finally:
        p.stop()


def _uprobes(p: Pipeline, **match: Any) -> list[dict[str, Any]]:
    """process_uprobe events whose process has the given fields (the last line may be partial)."""
    out = []
    for line in p.export_file.read_text(errors="replace").splitlines():
        if '"process_uprobe"' not in line:
            continue
        try:
            ev = json.loads(line)["process_uprobe"]
        except json.JSONDecodeError:
            continue
        if all(ev.get("process", {}).get(k) == v for k, v in match.items()):
            out.append(ev)
    return out


def test_uprobe_selectors_and_sigkill(traced: tuple[Pipeline, Path]) -> None:
    p, target = traced
    assert "watch-login loaded" in (p.tmp / "collector.log").read_text()
    run = subprocess.run([str(target), "bob", "alice", "carol"], capture_output=True, text=True, timeout=30)
    assert run.stdout.startswith("survived")
    wait_until(lambda: _uprobes(p, binary=str(target)), 30, what="process_uprobe of the target")
    evs = _uprobes(p, binary=str(target))
    assert len(evs) == 1, evs                        # bob and carol: no selector matched
    ev = evs[0]
    assert ev["policy_name"] == "watch-login" and ev["symbol"] == "tp_check_password"
    assert ev["path"] == str(target) and int(ev["offset"]) > 0
    assert ev["args"] == [{"label": "user", "string_arg": "alice"}, {"label": "attempt", "int_arg": 2}]
    assert ev["action"] == "KPROBE_ACTION_POST" and ev["message"] == "password check"
    assert ev["process"]["binary"] == str(target)

    killed = subprocess.Popen([str(target), "--forbidden"], stdout=subprocess.PIPE, text=True)
    out, _ = killed.communicate(timeout=30)
    assert killed.returncode == -signal.SIGKILL and "survived" not in out
    wait_until(lambda: _uprobes(p, pid=killed.pid), 30, what="the Sigkill process_uprobe")
    (kev,) = _uprobes(p, pid=killed.pid)
    assert kev["symbol"] == "tp_forbidden" and kev["action"] == "KPROBE_ACTION_SIGKILL"


def test_usdt_event(traced: tuple[Pipeline, Path]) -> None:
    """spec.usdts (collector/policy/usdt.py): a process_uprobe with symbol provider:name and the
    probe's typed arguments (a u64 from a register, an int32 from memory)."""
    p, target = traced
    usdt = target.parent / "usdt_probe"
    run = subprocess.run([str(usdt), "5", "-7"], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0
    wait_until(lambda: _uprobes(p, binary=str(usdt)), 30, what="process_uprobe of the USDT probe")
    (ev,) = _uprobes(p, binary=str(usdt))
    assert (ev["symbol"], ev["path"], ev["message"]) == ("test:usdt3", str(usdt), "usdt fired")
    assert ev["args"] == [{"label": "n", "uint_arg": 5}, {"label": "w", "int_arg": -7}]
