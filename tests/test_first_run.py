"""The README's first command as a new user runs it, on a machine where tetrapipe never ran.

The README's run command itself (`./scripts/run.sh`, setup included), as root, in a pristine
environment: a fresh mount namespace with empty tmpfs over /var/log, /var/run, /var/lib and
/var/cache (so no log, state, socket, cache or generated header directory exists), no config file,
no TETRAPIPE_* variable. It also gets a fresh network namespace (loopback only) so that the
default ports (broker 9092, metrics 2112-2117, gRPC 54321) are free whatever else runs on this shared machine;
the kernel programs see every process of the host all the same.

Asserts: the first lines say where everything is and which hook mechanisms the kernel offers; a
command typed after start shows in the compact view within seconds; the JSON export file appears
at its default path; the Prometheus exporter serves event metrics; the README's policy-library
command lines run as written against this collector; Ctrl-C (SIGINT to the process group, as a
terminal sends it) stops everything: exit 0, no process of the run left, no BPF program or link
of its collector left."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from harness import REPO, wait_until

from collector import kernel_features

PRISTINE = """set -e
ip link set lo up
for d in /var/log /var/run /var/lib /var/cache; do mount -t tmpfs -o mode=0755 tmpfs "$d"; done
exec {command}
"""


def readme_run_command() -> str:
    """The first command of the README's first code block: what a new user types."""
    text = (REPO / "README.md").read_text()
    block = text.split("```", 2)[1]
    first = next(line for line in block.splitlines()[1:] if line.strip())
    return first.split("#")[0].strip()


def readme_line(pattern: str) -> str:
    for line in (REPO / "README.md").read_text().splitlines():
        s = line.strip()
        if re.match(pattern, s):
            return s.split("#")[0].strip()
    raise AssertionError(f"no README line matches {pattern!r}")


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = [int(k) for k in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            continue
        out += kids
        todo += kids
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _marked(mark: str) -> list[int]:
    """Processes whose environment carries this run's mark (every descendant inherits it)."""
    found = []
    needle = f"FIRST_RUN_MARK={mark}".encode()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if needle in (d / "environ").read_bytes():
                    found.append(int(d.name))
            except OSError:
                pass
    return found


def _bpf_held(pids: list[int]) -> tuple[set[int], set[int]]:
    """Ids of the BPF programs and links these processes hold open (from /proc/PID/fdinfo)."""
    progs: set[int] = set()
    links: set[int] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
            except OSError:
                continue
            if "bpf-prog" in target or "bpf_link" in target:
                for key, into in (("prog_id", progs), ("link_id", links)):
                    m = re.search(rf"^{key}:\s*(\d+)", info, re.M)
                    if m and (key == "prog_id") == ("bpf-prog" in target):
                        into.add(int(m.group(1)))
    return progs, links


def _bpf_ids(kind: str) -> set[int]:
    out = subprocess.run(["bpftool", kind, "show", "--json"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return {o["id"] for o in json.loads(out.stdout or "[]")}


def _ns_path(root: Path, path: str) -> Path:
    """``path`` inside the namespace whose root is ``root`` (absolute symlinks such as
    /var/run -> /run resolved there, not in ours)."""
    parts = Path(path.lstrip("/")).parts
    at = root
    for i, part in enumerate(parts):
        at = at / part
        if at.is_symlink():
            target = os.readlink(at)
            rest = "/".join(parts[i + 1:])
            base = target if target.startswith("/") else str(at.parent.relative_to(root) / target)
            return _ns_path(root, f"{base}/{rest}")
    return at


def _in_ns(pid: int, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run argv in the run's mount and network namespaces, from the repository."""
    return subprocess.run(["nsenter", "-t", str(pid), "-m", "-n", "--wd=" + str(REPO), *argv],
                          capture_output=True, text=True, timeout=timeout,
                          env={"PATH": os.environ["PATH"], "HOME": "/root", "LANG": "C.UTF-8"})


@pytest.mark.kernel
def test_readme_run_command_on_a_pristine_machine(bpf_ok: None) -> None:
    command = readme_run_command()
    assert command == "./scripts/run.sh"
    mark = uuid.uuid4().hex
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
           "LANG": "C.UTF-8", "TERM": "dumb", "FIRST_RUN_MARK": mark}
    run = subprocess.Popen(["unshare", "--mount", "--net", "--propagation", "private", "bash", "-c",
                            PRISTINE.format(command=command)],
                           cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           start_new_session=True)
    lines: list[tuple[float, str]] = []

    def reader() -> None:
        assert run.stdout is not None
        for raw in run.stdout:
            lines.append((time.monotonic(), raw.decode(errors="replace").rstrip("\n")))

    threading.Thread(target=reader, daemon=True).start()
    text = lambda: "\n".join(t for _, t in lines)  # noqa: E731
    prog_ids: set[int] = set()
    link_ids: set[int] = set()
    try:
        wait_until(lambda: "tetrapipe run: ready" in text() or run.poll() is not None, 240,
                   what="`tetrapipe run: ready` line")
        assert run.poll() is None, text()[-3000:]
        out = text()
        # the first lines: where everything is, and the kernel's hook mechanisms
        for name, port in (("collector", 2112), ("enricher", 2113), ("export-json", 2114),
                           ("export-prometheus", 2115), ("export-grpc", 2117)):
            assert re.search(rf"^  {name} +http://127\.0\.0\.1:{port}/metrics  "
                             rf"http://127\.0\.0\.1:{port}/healthz", out, re.M), (name, out[:3000])
        assert re.search(r"^  broker +127\.0\.0\.1:9092  \(embedded", out, re.M)
        assert re.search(r"^  logs +/var/log/tetrapipe/\{broker,collector,enricher,export-json,"
                         r"export-prometheus,export-grpc\}\.log$", out, re.M)
        assert re.search(r"^  gRPC API +localhost:54321  \(Tetragon's API", out, re.M)
        assert re.search(r"^  export file +/var/log/tetrapipe/events\.log$", out, re.M)
        assert re.search(r"^  control socket +/var/run/tetrapipe/tetrapipe\.sock", out, re.M)
        kernel = next(t for _, t in lines if t.startswith("  kernel "))
        for mech in ("kprobes", "fentry", "fmod_ret", "bpf_lsm", "override_return", "tracepoints", "uprobes"):
            assert mech in kernel, kernel
        feats = kernel_features.probe()  # the same probe, from here: the line reports it
        assert f"hooks: {', '.join(feats.available()) or 'none'}; missing: " in kernel, kernel
        assert "tracepoints" in feats.available()
        assert "Traceback" not in out

        # a command typed after start shows in the compact view within seconds
        marker = f"first-run-{uuid.uuid4().hex[:10]}"
        typed = time.monotonic()
        subprocess.run(["/bin/echo", marker], check=True, stdout=subprocess.DEVNULL)
        wait_until(lambda: any(marker in t and t.startswith("🚀 process") for _, t in lines), 20,
                   what=f"compact line for {marker}")
        shown = next(ts for ts, t in lines if marker in t and t.startswith("🚀 process"))
        print(f"\ncompact line {shown - typed:.2f}s after the command")
        assert shown - typed < 15

        # the default directories were made, with their modes; the export is at its default path
        root = Path(f"/proc/{run.pid}/root")
        export = root / "var/log/tetrapipe/events.log"
        wait_until(lambda: export.exists() and marker in export.read_text(errors="replace"), 20,
                   what="the event in /var/log/tetrapipe/events.log")
        assert export.stat().st_mode & 0o777 == 0o600
        for d, mode in (("var/log/tetrapipe", 0o755), ("var/run/tetrapipe", 0o700), ("var/lib/tetrapipe", 0o755),
                        ("var/cache/tetrapipe", 0o755)):
            assert _ns_path(root, d).stat().st_mode & 0o777 == mode, d
        assert _ns_path(root, "var/run/tetrapipe/tetrapipe.sock").is_socket()
        assert any((root / "var/cache/tetrapipe/kernel-headers").iterdir())

        # the Prometheus exporter runs by default: Tetragon-style event metrics
        got = _in_ns(run.pid, "python3", "-c", "import urllib.request as u;"
                     "print(u.urlopen('http://127.0.0.1:2115/metrics').read().decode())")
        assert got.returncode == 0, got.stderr
        assert re.search(r'^tetrapipe_events_total\{.*type="PROCESS_EXEC"', got.stdout, re.M), got.stdout[-2000:]

        # the README's policy-library lines, as written, against this collector
        tetrapipe = str(REPO / ".venv/bin/tetrapipe")
        for pattern in (r"tetrapipe tracingpolicy add --mode monitor ", r"tetrapipe tracingpolicy list$"):
            line = readme_line(pattern)
            argv = shlex.split(line)
            got = _in_ns(run.pid, tetrapipe, *argv[1:])
            assert got.returncode == 0, (line, got.stdout, got.stderr)
            if "add" in argv:
                assert "loaded namespace-escape (monitor mode)" in got.stdout, got.stdout
            else:
                assert re.search(r"^namespace-escape +\S+ +monitor", got.stdout, re.M), got.stdout

        # what is ours in the kernel, to check it goes away
        kids = _descendants(run.pid)
        collector = [p for p in kids if "collector" in _cmdline(p)]
        assert collector, [(p, _cmdline(p)) for p in kids]
        prog_ids, link_ids = _bpf_held(collector)
        assert prog_ids, "the collector holds no BPF program?"
        assert prog_ids <= _bpf_ids("prog")  # bpftool sees them: its answer after the stop means something
    finally:
        os.killpg(run.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground group
        try:
            run.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            for pid in _marked(mark):
                os.kill(pid, signal.SIGKILL)
            run.wait()
    time.sleep(0.5)  # the reader thread takes the last lines
    out = text()
    assert run.returncode == 0, out[-3000:]
    assert "tetrapipe run: stopped" in out
    assert "Traceback" not in out, out[-3000:]
    assert _marked(mark) == [], [(p, _cmdline(p)) for p in _marked(mark)]
    wait_until(lambda: not prog_ids & _bpf_ids("prog"), 10, what="the collector's BPF programs gone")
    assert not link_ids & _bpf_ids("link")
