"""Issue 2 acceptance: real BPF → collector → broker → enricher → JSON export, checked against
/proc truth recorded while the processes ran."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from harness import Pipeline, body, wait_until

from collector.procfs import NS_PER_TICK

# Tetragon's Process message fields (api/v1/tetragon/tetragon.proto)
PROCESS_FIELDS = {
    "exec_id", "pid", "uid", "cwd", "binary", "arguments", "flags", "start_time", "auid", "pod",
    "docker", "parent_exec_id", "refcnt", "cap", "ns", "tid", "process_credentials",
    "binary_properties", "user", "in_init_tree", "environment_variables",
}
TOP_FIELDS = {"process_exec", "process_exit", "process_kprobe", "process_tracepoint", "process_lsm",
              "process_uprobe", "process_loader", "rate_limit_info", "node_name", "time",
              "cluster_name", "node_labels", "aggregation_info"}
RFC3339_NS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?Z$")


def _stat_fields(text: str) -> list[str]:
    return text[text.rfind(")") + 2:].split()


def _check_protojson(ev: dict) -> None:
    assert set(ev) <= TOP_FIELDS, set(ev) - TOP_FIELDS
    assert RFC3339_NS.match(ev["time"])
    b = body(ev)
    for key in ("process", "parent"):
        if key in b:
            p = b[key]
            assert set(p) <= PROCESS_FIELDS, set(p) - PROCESS_FIELDS
            assert isinstance(p["pid"], int) and isinstance(p["exec_id"], str)
            assert RFC3339_NS.match(p["start_time"])
            for wrapper in ("uid", "auid", "tid"):
                if wrapper in p:
                    assert isinstance(p[wrapper], int)


@pytest.mark.kernel
def test_exec_exit_match_proc(bpf_ok: None, pipeline: Pipeline) -> None:
    pipeline.settings["enable_process_cred"] = "true"  # process_credentials (off by default, as in Tetragon)
    pipeline.start_all()
    shared = Path(tempfile.mkdtemp(prefix="tetrapipe-test-"))  # reachable by the test's uid
    os.chmod(shared, 0o755)
    work = shared / "work dir"
    truth = shared / "truth"
    for d in (work, truth):
        d.mkdir()
        os.chmod(d, 0o777)
    script = (
        f'cd "{work}"; /bin/sleep 1 & c=$!; '
        f'/bin/cat /proc/$c/stat > {truth}/child.stat; /bin/cat /proc/$c/loginuid > {truth}/child.auid; '
        f'/bin/cat /proc/$$/stat > {truth}/sh.stat; wait $c; exit 7'
    )
    proc = subprocess.Popen(["setpriv", "--reuid", "4242", "--regid", "4242", "--clear-groups",
                             "/bin/sh", "-c", script])
    try:
        assert proc.wait(20) == 7
        _check_events(pipeline, proc.pid, truth, work)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def _check_events(pipeline: Pipeline, sh_pid: int, truth: Path, work: Path) -> None:
    child_stat = _stat_fields((truth / "child.stat").read_text())
    child_pid = int((truth / "child.stat").read_text().split()[0])
    boot_wall_ns = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)

    def events_for(pid: int, kind: str) -> list[dict]:
        return [e for e in pipeline.exported() if kind in e and e[kind]["process"]["pid"] == pid]

    wait_until(lambda: events_for(child_pid, "process_exit") and events_for(sh_pid, "process_exit"),
               timeout=20, what="exit events of the test processes")
    evs = pipeline.exported()
    for ev in evs:
        _check_protojson(ev)

    sh_execs = events_for(sh_pid, "process_exec")
    sh_exec = [e for e in sh_execs if e["process_exec"]["process"]["binary"] == "/bin/sh"][-1]
    child_exec = events_for(child_pid, "process_exec")[-1]["process_exec"]
    cp = child_exec["process"]
    assert cp["binary"] == "/bin/sleep"
    assert cp["arguments"] == "1"
    assert cp["cwd"] == str(work)
    assert cp["uid"] == 4242
    assert cp["process_credentials"]["uid"] == 4242 and cp["process_credentials"]["gid"] == 4242
    assert cp["auid"] == int((truth / "child.auid").read_text())
    assert int(child_stat[1]) == sh_pid  # ppid from /proc
    assert child_exec["parent"]["pid"] == sh_pid
    assert cp["parent_exec_id"] == sh_exec["process_exec"]["process"]["exec_id"]
    assert "execve" in cp["flags"].split() and "clone" in cp["flags"].split()
    # exec_id is base64("<node>:<ktime>:<pid>")
    node, ktime, pid = base64.b64decode(cp["exec_id"]).decode().rsplit(":", 2)
    assert node == pipeline.node_name and int(pid) == child_pid and int(ktime) > 0
    # start time: /proc has clock ticks since boot (fork time); the event the exec time
    from exporters.protojson import parse_rfc3339

    proc_start = boot_wall_ns + int(child_stat[19]) * NS_PER_TICK
    assert abs(parse_rfc3339(cp["start_time"]) - proc_start) < 100_000_000

    sh_exit = events_for(sh_pid, "process_exit")[-1]["process_exit"]
    assert sh_exit.get("status") == 7 and "signal" not in sh_exit
    child_exit = events_for(child_pid, "process_exit")[-1]["process_exit"]
    assert child_exit.get("status", 0) == 0
    assert child_exit["process"]["exec_id"] == cp["exec_id"]
    assert pipeline.services["collector"].metric("tetrapipe_observer_ringbuf_events_lost_total") == 0


@pytest.mark.kernel
def test_signal_exit_and_procfs_bootstrap(bpf_ok: None, pipeline: Pipeline) -> None:
    before = subprocess.Popen(["/bin/sleep", "30"])  # running before the collector starts
    try:
        pipeline.start_all()
        wait_until(lambda: any("process_exec" in e and e["process_exec"]["process"]["pid"] == before.pid
                               for e in pipeline.exported()), what="procfs exec of the sleeper")
        ev = next(e for e in pipeline.exported()
                  if "process_exec" in e and e["process_exec"]["process"]["pid"] == before.pid)
        p = ev["process_exec"]["process"]
        assert "procFS" in p["flags"].split()
        assert p["binary"].endswith("/sleep") and p["arguments"] == "30"
        assert ev["process_exec"]["parent"]["pid"] == os.getpid()
        before.kill()
        before.wait()
        wait_until(lambda: any("process_exit" in e and e["process_exit"]["process"]["pid"] == before.pid
                               for e in pipeline.exported()), what="exit of the killed sleeper")
        ex = next(e for e in pipeline.exported()
                  if "process_exit" in e and e["process_exit"]["process"]["pid"] == before.pid)
        assert ex["process_exit"]["signal"] == "SIGKILL"
        assert ex["process_exit"]["process"]["exec_id"] == p["exec_id"]
    finally:
        before.kill()
