"""Loader sensor: a program the test compiles dlopen()s libraries the test builds (one with a
chosen GNU build id, one without any); the real pipeline must report each as a
``process_loader`` event of that process with the path and the build id (base64 in JSON)."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from harness import Pipeline, wait_until

from bpf import records as r
from enricher.event_builder import EventBuilder
from enricher.process_cache import ProcessCache
from exporters import compact, protojson
from schemas import codec

BUILD_ID = "0123456789abcdef0123456789abcdef01234567"
LIB_C = "int tp_answer(void) { return 42; }\n"
MAIN_C = r"""
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        void *h = dlopen(argv[i], RTLD_NOW);
        if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
        int (*f)(void) = (int (*)(void))dlsym(h, "tp_answer");
        if (!f || f() != 42) return 2;
    }
    return 0;
}
"""


def _build(tmp: Path) -> tuple[Path, Path, Path]:
    (tmp / "lib.c").write_text(LIB_C)
    (tmp / "main.c").write_text(MAIN_C)
    with_id, without_id, prog = tmp / "libtpwith.so", tmp / "libtpwithout.so", tmp / "dlopener"
    subprocess.run(["gcc", "-shared", "-fPIC", f"-Wl,--build-id=0x{BUILD_ID}", "-o", with_id,
                    tmp / "lib.c"], check=True)
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,--build-id=none", "-o", without_id,
                    tmp / "lib.c"], check=True)
    subprocess.run(["gcc", "-o", prog, tmp / "main.c", "-ldl"], check=True)
    return with_id, without_id, prog


def _loaders(pipeline: Pipeline, pid: int) -> list[dict[str, Any]]:
    return [e["process_loader"] for e in pipeline.exported()
            if "process_loader" in e and e["process_loader"].get("process", {}).get("pid") == pid]


@pytest.mark.kernel
def test_dlopen_reports_path_and_build_id(bpf_ok: None, pipeline: Pipeline, tmp_path: Path) -> None:
    with_id, without_id, prog = _build(tmp_path)
    pipeline.settings["enable_loader_events"] = "true"
    pipeline.start_all()
    proc = subprocess.run([str(prog), str(with_id), str(without_id)], check=True)
    del proc
    pid_holder: list[int] = []

    def find() -> bool:
        for e in pipeline.exported():
            ld = e.get("process_loader") or {}
            if ld.get("path") == str(without_id) and ld.get("process", {}).get("binary") == str(prog):
                pid_holder.append(ld["process"]["pid"])
                return True
        return False

    wait_until(find, 30, what="process_loader of the test library")
    events = {ld["path"]: ld for ld in _loaders(pipeline, pid_holder[0])}
    assert base64.b64decode(events[str(with_id)]["buildid"]).hex() == BUILD_ID
    assert "buildid" not in events[str(without_id)]  # no note: empty bytes, omitted in JSON
    libc = next(p for p in events if os.path.basename(p).startswith("libc.so"))
    assert len(base64.b64decode(events[libc]["buildid"])) == 20
    ld = events[str(with_id)]
    assert ld["process"]["binary"] == str(prog) and ld["parent"]["pid"] == os.getpid()
    line = compact.render({"node_name": pipeline.node_name, "process_loader": ld})
    assert line.split()[:5] == ["🧬", "loader", pipeline.node_name, str(prog), BUILD_ID]
    assert line.split()[5] == str(with_id)  # then, as root, the 🛑 CAP_SYS_ADMIN trailer
    # a file mapped without PROT_EXEC (the program reads nothing else) is not reported
    assert all(not p.endswith("main.c") for p in events)


def test_loader_record_to_event() -> None:
    b = EventBuilder(ProcessCache(16))
    raw = r.encode_loader(9, 9, 1, b"/usr/lib/libssl.so.3", ino=7, buildid=bytes(range(20)))
    ev = b.on_record(r.decode(raw), "n", 0, [])
    doc = protojson.to_protojson(codec.decode("event", codec.encode("event", ev)))
    assert doc["process_loader"]["path"] == "/usr/lib/libssl.so.3"
    assert base64.b64decode(doc["process_loader"]["buildid"]) == bytes(range(20))
    with pytest.raises(r.RecordError):
        r.decode(raw + b"x")
