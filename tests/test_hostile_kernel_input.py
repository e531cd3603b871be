"""Hostile content in real kernel events: file names with newlines and terminal escapes, invalid
UTF-8, paths at and past 4096 bytes, a 1 MB argument list, binaries deleted while they run (one
seen live, one found by the /proc bootstrap). Real BPF → collector → broker → enricher → JSON
export. Nothing crashes, no record is dead-lettered, the export stays one JSON object per line,
each odd string is counted (``tetrapipe_enricher_strings_*``) and flagged as Tetragon does, and
the compact view escapes control characters."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness import Pipeline, wait_until

from tetrapipe.broker import EmbeddedBroker


def text(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


@dataclass
class Ran:
    pids: dict[str, int] = field(default_factory=dict)
    paths: dict[str, bytes] = field(default_factory=dict)
    tmp: Path = Path()


def _run(argv: list[bytes], cwd: bytes | None = None) -> int:
    p = subprocess.Popen(argv, cwd=cwd)
    assert p.wait(20) == 0, argv
    return p.pid


def _deep_dir(root: Path, total: int) -> bytes:
    """A directory whose absolute path is at least ``total`` bytes (255-byte components)."""
    path = os.fsencode(root)
    comp = b"d" * 250
    while len(path) < total:
        path += b"/" + comp
    # past PATH_MAX only relative steps work: create each component under the previous one's fd
    root.mkdir(exist_ok=True)
    fd = os.open(root, os.O_RDONLY)
    try:
        for c in path[len(os.fsencode(root)) + 1:].split(b"/"):
            try:
                os.mkdir(c, dir_fd=fd)
            except FileExistsError:
                pass
            nfd = os.open(c, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        shutil.copy("/bin/true", f"/proc/self/fd/{fd}/t")
    finally:
        os.close(fd)
    return path


def _copy_true_rel(start: bytes, rel: bytes) -> None:
    """Copy /bin/true to start/rel (maybe longer than PATH_MAX together) through a dir fd."""
    dfd = os.open(start, os.O_RDONLY)
    try:
        fd = os.open(rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o755, dir_fd=dfd)
        with os.fdopen(fd, "wb") as out:
            out.write(Path("/bin/true").read_bytes())
    finally:
        os.close(dfd)


# exec ./t from inside a directory deeper than PATH_MAX: the kernel only ever resolves relative
# components, so the process runs; its cwd cannot be reported whole
DEEP_EXEC = (
    "import os, sys\n"
    "os.chdir('/')\n"
    "for c in sys.argv[1].split('/'):\n"
    "    if c:\n"
    "        os.chdir(c)\n"
    "os.execv('./t', ['./t', 'deep'])\n"
)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pipeline, Ran]]:
    reason = __import__("conftest").bpf_unavailable_reason()
    if reason:
        __import__("conftest").skip_or_fail(reason)
    tmp = tmp_path_factory.mktemp("hostile")
    ran = Ran(tmp=tmp)
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    # a binary deleted while it runs, started before the collector (found by the /proc walk)
    early = bin_dir / "gone-early"
    shutil.copy("/bin/sleep", early)
    sleeper = subprocess.Popen([str(early), "60"])
    early.unlink()
    with EmbeddedBroker(log_path=tmp / "broker.log") as broker:
        pipe = Pipeline(broker.bootstrap, tmp)
        try:
            pipe.start_all()
            ran.pids["deleted-early"] = sleeper.pid
            ran.paths["deleted-early"] = os.fsencode(early)
            # 1. newline, terminal escape, shell metacharacters in the file name and arguments
            nl = bin_dir / "evil\nname\x1b[2J;$(id)"
            shutil.copy("/bin/true", nl)
            ran.paths["newline"] = os.fsencode(nl)
            ran.pids["newline"] = _run([os.fsencode(nl), b"line1\nline2", b"a b", b"\x1b]0;pwned\x07"])
            # 2. invalid UTF-8 in the file name and an argument
            bad = os.fsencode(bin_dir) + b"/bad\xff\xfe\xc3("
            shutil.copy("/bin/true", bad)
            ran.paths["utf8"] = bad
            ran.pids["utf8"] = _run([bad, b"\xff\x80ok", b"caf\xc3\xa9"])
            # 3a. a file name of 4095 bytes, the longest execve takes (relative to a deep cwd)
            deep = _deep_dir(tmp / "deep", 4400)
            start_dir = os.fsencode(tmp / "deep")
            comps = deep[len(start_dir) + 1:].split(b"/")
            rel = b"/".join(comps[:15])
            _copy_true_rel(start_dir, rel + b"/t")
            rel += b"/t"
            pad = 4095 - len(rel)
            if pad % 2:
                rel = rel.replace(b"/", b"//", 1)
            rel = b"./" * (pad // 2) + rel
            ran.paths["long-name"] = rel
            ran.paths["long-name-dir"] = start_dir
            p = subprocess.Popen([b"t", b"longname"], executable=rel, cwd=start_dir)
            assert p.wait(20) == 0
            ran.pids["long-name"] = p.pid
            # 3b. cwd deeper than PATH_MAX
            ran.paths["deep-cwd"] = deep
            p = subprocess.Popen([sys.executable, "-c", DEEP_EXEC, os.fsdecode(deep)])
            assert p.wait(20) == 0
            ran.pids["deep-cwd"] = p.pid
            # 4. a 1 MB argument list (8192 arguments of 127 bytes)
            args = [b"%05d" % i + b"a" * 122 for i in range(8192)]
            ran.pids["huge-args"] = _run([b"/bin/true", *args])
            # 5. a binary deleted while it runs, seen live
            live = bin_dir / "gone-live"
            shutil.copy("/bin/sleep", live)
            ran.paths["deleted-live"] = os.fsencode(live)
            p = subprocess.Popen([str(live), "1"])
            live.unlink()
            assert p.wait(20) == 0
            ran.pids["deleted-live"] = p.pid
            sleeper.kill()
            sleeper.wait()

            def exits_seen() -> bool:
                pids = {_proc(e)["pid"] for e in _exported(pipe) if "process_exit" in e}
                return set(ran.pids.values()) <= pids
            wait_until(exits_seen, timeout=40, what="exit events of every hostile process")
            yield pipe, ran
        finally:
            sleeper.kill()
            pipe.stop()


def _exported(pipe: Pipeline) -> list[dict]:
    return pipe.exported()


def _proc(ev: dict) -> dict:
    body = ev.get("process_exec") or ev.get("process_exit") or {}
    return body.get("process", {})


def _exec_of(pipe: Pipeline, pid: int) -> dict:
    evs = [e for e in _exported(pipe) if "process_exec" in e and _proc(e)["pid"] == pid]
    assert evs, f"no exec event for pid {pid}"
    return evs[-1]["process_exec"]["process"]


@pytest.mark.kernel
def test_export_stays_one_json_object_per_line(hostile: tuple[Pipeline, Ran]) -> None:
    pipe, _ = hostile
    lines = [ln for ln in pipe.export_text().encode().split(b"\n") if ln]
    for ln in lines:
        json.loads(ln)  # raises on a torn or split line
    for name, svc in pipe.services.items():
        assert svc.proc is not None and svc.proc.poll() is None, f"{name} died:\n{svc.log()}"
    enricher = pipe.services["enricher"]
    assert enricher.metric("tetrapipe_deadletter_messages_total") == 0
    assert enricher.metric("tetrapipe_handler_errors_total") == 0


@pytest.mark.kernel
def test_newlines_escapes_and_invalid_utf8_kept_and_counted(hostile: tuple[Pipeline, Ran]) -> None:
    pipe, ran = hostile
    p = _exec_of(pipe, ran.pids["newline"])
    assert p["binary"] == os.fsdecode(ran.paths["newline"])
    assert p["arguments"] == 'line1\nline2 "a b" \x1b]0;pwned\x07'
    u = _exec_of(pipe, ran.pids["utf8"])
    assert u["binary"] == text(ran.paths["utf8"])
    assert u["binary"].endswith("/bad\\xff\\xfe\\xc3(")
    assert u["arguments"] == "\\xff\\x80ok café"
    m = pipe.services["enricher"].metric
    assert m("tetrapipe_enricher_strings_control_chars_total", field="filename") >= 1
    assert m("tetrapipe_enricher_strings_control_chars_total", field="args") >= 1
    assert m("tetrapipe_enricher_strings_invalid_utf8_total", field="filename") >= 1
    assert m("tetrapipe_enricher_strings_invalid_utf8_total", field="args") >= 1
    # the compact view shows each event on one line, control characters escaped
    out = subprocess.run([sys.executable, "-m", "tetrapipe", "getevents", "-o", "compact", "--file",
                          str(pipe.export_file)], capture_output=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    lines = out.stdout.decode().splitlines()
    evil = [ln for ln in lines if "evil" in ln]
    assert evil and all("\x1b" not in ln and "\x07" not in ln for ln in evil), evil
    # as tetra: a field with a character that is not printable is quoted and escaped (strconv.Quote)
    assert any('evil\\nname\\x1b[2J;$(id)" "line1\\nline2 \\"a b\\" \\x1b]0;pwned\\a"' in ln for ln in evil), evil


@pytest.mark.kernel
def test_paths_at_and_past_4096_bytes(hostile: tuple[Pipeline, Ran]) -> None:
    pipe, ran = hostile
    name = _exec_of(pipe, ran.pids["long-name"])
    assert len(ran.paths["long-name"]) == 4095
    assert name["arguments"] == "longname"
    # whole (4095 is the longest file name execve takes: not truncated), resolved against the cwd
    assert "truncFilename" not in name["flags"].split()
    assert name["binary"] == os.path.normpath(os.fsdecode(ran.paths["long-name-dir"] + b"/" + ran.paths["long-name"]))
    deep = _exec_of(pipe, ran.pids["deep-cwd"])
    assert deep["arguments"] == "deep"
    assert "truncCWD" in deep["flags"].split()
    assert len(deep["cwd"].encode()) <= 4096
    assert os.fsdecode(ran.paths["deep-cwd"]).endswith(deep["cwd"][-1000:])  # the deepest part kept
    assert pipe.services["enricher"].metric("tetrapipe_enricher_strings_truncated_total", field="cwd") >= 1


@pytest.mark.kernel
def test_one_megabyte_argument_list(hostile: tuple[Pipeline, Ran]) -> None:
    pipe, ran = hostile
    p = _exec_of(pipe, ran.pids["huge-args"])
    assert p["binary"] == "/bin/true"
    assert "truncArgs" in p["flags"].split()
    args = p["arguments"].split(" ")
    assert args[0] == "00000" + "a" * 122 and len(args) >= 30
    assert len(p["arguments"].encode()) < 4096
    assert pipe.services["enricher"].metric("tetrapipe_enricher_strings_truncated_total", field="args") >= 1


@pytest.mark.kernel
def test_binaries_deleted_while_running(hostile: tuple[Pipeline, Ran]) -> None:
    pipe, ran = hostile
    live = _exec_of(pipe, ran.pids["deleted-live"])
    assert live["binary"] == os.fsdecode(ran.paths["deleted-live"]) and live["arguments"] == "1"
    early = _exec_of(pipe, ran.pids["deleted-early"])
    assert "procFS" in early["flags"].split()
    assert early["binary"].startswith(os.fsdecode(ran.paths["deleted-early"]))
    assert early["arguments"] == "60"
    for key in ("deleted-live", "deleted-early"):
        exits = [e for e in _exported(pipe) if "process_exit" in e and _proc(e)["pid"] == ran.pids[key]]
        assert exits and _proc(exits[-1])["exec_id"] == _exec_of(pipe, ran.pids[key])["exec_id"]
