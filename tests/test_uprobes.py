"""spec.uprobes: a program the test compiles with gcc is traced by symbol (and by offset); each
call becomes a REC_HOOK record with the captured arguments and then a ``process_uprobe`` event
that passes the event schema. Bad entries are refused with the YAML path and reason."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path

import pytest

from bpf import records as r
from collector import uprobes
from collector.uprobes import UprobeError, UprobeProgram
from enricher.event_builder import EventBuilder
from enricher.policy_events import PolicyEvents
from enricher.process_cache import ProcessCache
from exporters import protojson
from schemas import codec
from tests.conftest import skip_or_fail

TARGET_C = r"""
#include <stdlib.h>
#include <string.h>
__attribute__((noinline)) int tp_check_password(const char *user, int attempt,
                                                 const char *secret, unsigned long len)
{
    asm volatile("" ::: "memory");
    return (int)strlen(user) + attempt + (int)len + secret[0];
}
__attribute__((noinline)) long tp_other(long x)
{
    asm volatile("" ::: "memory");
    return x * 2;
}
int main(int argc, char **argv)
{
    int n = atoi(argv[1]);
    static const char secret[] = "hunter2-and-more";
    long s = ((volatile const char *)secret)[0];  /* fault the page in: uprobes cannot */
    for (int i = 0; i < n; i++)
        s += tp_check_password(argv[2], i, secret, 7);
    s += tp_other(21);
    return s == 0;
}
"""


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("uprobe")
    (d / "target.c").write_text(TARGET_C)
    subprocess.run(["gcc", "-O1", "-o", str(d / "target"), str(d / "target.c")], check=True)
    return d / "target"


def entry(path: Path, **extra: object) -> dict:
    e: dict = {"path": str(path), "symbols": ["tp_check_password"], "args": [
        {"index": 0, "type": "string", "label": "user"},
        {"index": 1, "type": "int", "label": "attempt"},
        {"index": 2, "type": "char_buf", "sizeArgIndex": 4, "label": "secret"},
        {"index": 3, "type": "uint64"},
    ]}
    e.update(extra)
    return e


@pytest.mark.kernel
def test_traced_by_symbol_and_offset(bpf_ok: None, target: Path) -> None:
    spec = uprobes.parse(entry(target), "spec.uprobes[0]")
    other_off = uprobes.resolve(uprobes.parse({"path": str(target), "symbols": ["tp_other"]}))[0].offset
    by_offset = uprobes.parse({"path": str(target), "offsets": [other_off],
                               "args": [{"index": 0, "type": "long"}]}, "spec.uprobes[1]")
    got: list[bytes] = []
    try:
        prog = UprobeProgram(4242, [spec, by_offset], got.append)
    except Exception as exc:  # noqa: BLE001 - the reason is reported
        skip_or_fail(f"uprobe program did not load: {exc}")
    try:
        p = subprocess.Popen([str(target), "3", "alice"])
        assert p.wait(30) == 0
        mine: list[r.HookRecord] = []
        deadline = time.monotonic() + 10
        while len(mine) < 4 and time.monotonic() < deadline:
            prog.poll(100)
            recs = [r.decode(b) for b in got]
            mine = [x for x in recs if isinstance(x, r.HookRecord) and x.header.pid == p.pid]
        catalog = {h["id"]: h for h in prog.catalog()}
        assert prog.drops() == 0
    finally:
        prog.close()
    assert len(mine) == 4, f"expected 3 calls by symbol and 1 by offset, got {len(mine)}"
    assert len(got) == 4  # uprobes on the test's own file fire in no other process
    hits = [r.decode_hook(x) for x in mine]
    assert [h.policy_id for h in hits] == [4242] * 4
    calls = [h for h in hits if h.hook_id == 0]
    assert [catalog[0]["symbol"], catalog[1]["symbol"], catalog[1]["offset"]] == [
        "tp_check_password", "", other_off]
    b = EventBuilder(ProcessCache(16))
    pe = PolicyEvents()   # the enricher's own path: the catalog record, then each hook record
    doc = {"policy_id": 4242, "name": "watch-login", "hooks": list(catalog.values())}
    rec = r.decode(r.encode_policy(0, json.dumps(doc).encode()))
    assert isinstance(rec, r.PolicyRecord)
    pe.on_catalog(rec, "node-a")
    events = [pe.on_hook(x, "node-a", 0, b) for x in mine]
    docs = [protojson.to_protojson(codec.decode("event", codec.encode("event", ev))) for ev in events]
    login = [d["process_uprobe"] for d in docs if d["process_uprobe"].get("symbol") == "tp_check_password"]
    assert [u["args"][1]["int_arg"] for u in login] == [0, 1, 2]
    u = login[0]
    assert u["path"] == str(target) and u["policy_name"] == "watch-login"
    assert u["args"][0] == {"label": "user", "string_arg": "alice"}
    assert u["args"][2]["label"] == "secret"
    assert [base64.b64decode(x["args"][2].get("bytes_arg", "")) for x in login] == [b"hunter2"] * 3, login
    assert u["args"][3]["uint_arg"] == "7" or u["args"][3]["uint_arg"] == 7
    assert u["action"] == "KPROBE_ACTION_POST"
    other = [d["process_uprobe"] for d in docs if not d["process_uprobe"].get("symbol")]
    assert len(other) == 1 and other[0]["args"][0]["long_arg"] in (21, "21")
    assert len(calls) == 3


def test_bad_entries_refused_with_path(target: Path, tmp_path: Path) -> None:
    cases = [
        ({"symbols": ["x"]}, "spec.uprobes[2].path"),
        ({"path": str(tmp_path / "nope"), "symbols": ["x"]}, "spec.uprobes[2].path"),
        ({"path": str(target)}, "symbols or offsets"),
        (entry(target, args=[{"index": 7, "type": "int"}]), "spec.uprobes[2].args[0].index"),
        (entry(target, args=[{"index": 0, "type": "sock"}]), "spec.uprobes[2].args[0].type"),
        (entry(target, args=[{"index": 0, "type": "char_buf"}]), "sizeArgIndex"),
        (entry(target, offsets=[10**9]), "outside"),
        (entry(target, bogus=1), "spec.uprobes[2].bogus: unknown field"),
    ]
    for e, want in cases:
        with pytest.raises(UprobeError, match=want.replace("[", r"\[").replace("]", r"\]")):
            uprobes.parse(e, "spec.uprobes[2]")
    spec = uprobes.parse(entry(target, symbols=["tp_check_password", "no_such_symbol"]),
                         "spec.uprobes[2]")
    with pytest.raises(UprobeError, match=r"symbols\[1\]: symbol 'no_such_symbol' not found"):
        uprobes.resolve(spec)


def test_engine_entry_probe_convention() -> None:
    c = uprobes.entry_probe_c(3, "tp_up_3")
    assert "tp_hook_3(ctx, a, 0, 0);" in c and "PT_REGS_PARM6(ctx)" in c
