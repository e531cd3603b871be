"""spec.usdts on this kernel (uprobes work here): a real binary with a USDT note
(tests/data/usdt_probe.c, built with gcc), hooked through bcc's USDT support by the policy manager
in this process. The probe's arguments are read where the note says (a register, memory at a
stack offset), typed (an int32 sign-extended), matched by selectors in the kernel, and acted on
(Sigkill inside the probe). Tetragon's usdt.yaml/usdt-set.yaml name a tester binary under
/home/jolsa: refused for the missing path, as Tetragon refuses it at load; Set is refused with its
reason on a binary that has the probe."""

from __future__ import annotations

import asyncio
import subprocess
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

SRC = Path(__file__).parent / "data" / "usdt_probe.c"


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
def loaded(binary: Path) -> Iterator[tuple[Hooks, Loaded]]:
    reason = bpf_unavailable_reason()
    if reason:
        skip_or_fail(reason)
    loader.prepare()
    mgr = PolicyManager(RecordQueue(1_000_000, asyncio.new_event_loop()), procfs.host_namespaces(),
                        kernel_features.probe())
    mgr.uncaught.enabled = False
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
        mgr.stop()


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
