"""Issue 4 acceptance, through the real pipeline (collector with policies → broker → enricher →
JSON export): the two seed policies loaded verbatim from files, monitor mode, and the control
socket (add/delete/list against the running collector, broken policies refused while the loaded
ones keep acting). One collector for the whole module: each compile+load costs seconds.
"""

from __future__ import annotations

import base64
import fcntl
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import bpf_unavailable_reason, skip_or_fail
from harness import Pipeline, wait_until

from exporters import compact
from tetrapipe.broker import EmbeddedBroker

SEED = Path(__file__).parent / "data" / "seed"
FORBIDDEN_DIR = Path("/tmp/forbidden")
FORBIDDEN = FORBIDDEN_DIR / "donotchange.me"
ORIGINAL = b"original content, keep me\n"
REPO = Path(__file__).resolve().parent.parent
LOCK_PATH = "/tmp/tetrapipe-seed-policy-tests.lock"

BAD_OPERATOR = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: broken
spec:
  kprobes:
  - call: "sys_write"
    syscall: true
    args:
    - index: 0
      type: "fd"
    selectors:
    - matchArgs:
      - index: 0
        operator: "Prefx"
        values:
        - "/tmp/"
"""


def restore_forbidden() -> None:
    """Write the forbidden file from a child process: if a policy still guards it, the child
    dies, not the test runner."""
    if FORBIDDEN.exists() and FORBIDDEN.read_bytes() == ORIGINAL:
        return
    r = subprocess.run([sys.executable, "-c", f"open({str(FORBIDDEN)!r}, 'wb').write({ORIGINAL!r})"],
                       capture_output=True, timeout=30)
    assert r.returncode == 0, f"cannot write {FORBIDDEN} (another collector guarding it?): {r}"


def _root_copy(src: Path, dst_dir: Path) -> Path:
    """The policy file byte for byte, root-owned and 0644 as the collector demands."""
    dst = dst_dir / src.name
    shutil.copyfile(src, dst)
    os.chown(dst, 0, 0)
    os.chmod(dst, 0o644)
    assert dst.read_bytes() == src.read_bytes()
    return dst


@pytest.fixture(scope="module")
def seeded(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    reason = bpf_unavailable_reason()
    if reason:
        skip_or_fail(reason)
    # The seed policy names a fixed path and kills every writer on the machine: copies of this
    # module (other worktrees, CI) must not run at the same time. Held until teardown.
    lock = open(LOCK_PATH, "a+")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)
    tmp = tmp_path_factory.mktemp("policy-seed")
    os.chmod(tmp, 0o755)
    FORBIDDEN_DIR.mkdir(exist_ok=True)
    restore_forbidden()  # before the policy loads: afterwards writing it is fatal
    files = [_root_copy(SEED / "deny-tmp-forbidden-write.yaml", tmp),
             _root_copy(SEED / "exec-policy-example.yaml", tmp)]
    broken = tmp / "broken-at-start.yaml"
    broken.write_text(BAD_OPERATOR)   # refused at start; the others load and act
    os.chmod(broken, 0o644)
    files.append(broken)
    p = Pipeline(broker.bootstrap, tmp)
    p.settings["tracing_policy"] = ",".join(str(f) for f in files)
    watched = tmp / "policies.d"
    watched.mkdir(mode=0o755)
    p.settings["tracing_policy_dir"] = str(watched)
    try:
        p.start_all()
        yield p
    finally:
        p.stop()
        lock.close()


def kprobes(p: Pipeline, pid: int) -> list[dict]:
    return [e for e in p.exported() if "process_kprobe" in e and e["process_kprobe"]["process"]["pid"] == pid]


def exit_of(p: Pipeline, pid: int) -> dict | None:
    return next((e["process_exit"] for e in p.exported()
                 if "process_exit" in e and e["process_exit"]["process"]["pid"] == pid), None)


def ctl(p: Pipeline, *argv: str) -> subprocess.CompletedProcess[str]:
    env = p.env()
    return subprocess.run([sys.executable, "-m", "tetrapipe", "tracingpolicy", *argv], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def write_forbidden(other: Path) -> subprocess.CompletedProcess[bytes]:
    """Writes another file, then opens the forbidden one read-write (no truncation) and writes."""
    script = f'echo ok > {other}; exec 3<>{FORBIDDEN}; read line <&3; echo changed >&3; echo survived > {other}.2'
    return subprocess.run(["/bin/sh", "-c", script], capture_output=True, timeout=30)


@pytest.mark.kernel
def test_deny_tmp_forbidden_write_kills_and_keeps_the_file(seeded: Pipeline, tmp_path: Path) -> None:
    other = tmp_path / f"other-{uuid.uuid4().hex[:6]}"
    proc = write_forbidden(other)
    assert proc.returncode == -9, proc            # SIGKILL
    assert FORBIDDEN.read_bytes() == ORIGINAL     # the write did not land
    assert other.read_text() == "ok\n"            # writes to other files by the same program succeeded
    assert not Path(f"{other}.2").exists()        # nothing ran after the forbidden write
    pid = _pid_of_shell(seeded, str(other))

    wait_until(lambda: exit_of(seeded, pid) and any(
        k["process_kprobe"]["function_name"] == "__x64_sys_write" for k in kprobes(seeded, pid)),
        timeout=30, what="write and exit events of the killed shell")
    assert exit_of(seeded, pid)["signal"] == "SIGKILL"
    evs = kprobes(seeded, pid)
    by_fn: dict[str, list[dict]] = {}
    for e in evs:
        by_fn.setdefault(e["process_kprobe"]["function_name"], []).append(e["process_kprobe"])
    (opened,) = by_fn["fd_install"]                # only the followed file, not `other`
    assert opened["args"][1]["file_arg"]["path"] == str(FORBIDDEN)
    assert opened["args"][0]["int_arg"] == 3
    assert opened["policy_name"] == "deny-tmp-forbidden-write"
    assert opened["action"] == "KPROBE_ACTION_FOLLOWFD"
    (write,) = by_fn["__x64_sys_write"]
    assert write["action"] == "KPROBE_ACTION_SIGKILL"
    assert write["args"][0]["file_arg"]["path"] == str(FORBIDDEN)
    assert base64.b64decode(write["args"][1]["bytes_arg"]) == b"changed\n"
    assert write["args"][2]["size_arg"] == "8"
    assert write["process"]["binary"] == "/bin/sh" or write["process"]["binary"].endswith("sh")
    reads = by_fn["__x64_sys_read"]                # the read of the followed file, with its bytes
    got = b"".join(base64.b64decode(r["args"][1].get("bytes_arg", "")) for r in reads)
    assert got == ORIGINAL  # dash's `read` takes one byte per read(2), up to the newline
    assert all(r["return"]["int_arg"] == 1 for r in reads)
    assert all(r["args"][0]["file_arg"]["path"] == str(FORBIDDEN) for r in reads)

    lines = [compact.render(e) for e in seeded.exported()
             if body_pid(e) == pid]
    # (lines may end with Tetragon's capability trailer, e.g. "🛑 CAP_SYS_ADMIN")
    assert any(ln.startswith("📬 open") and f"/bin/sh {FORBIDDEN}" in ln for ln in lines), lines
    assert any(ln.startswith("📝 write") and f"/bin/sh {FORBIDDEN} 8 bytes" in ln for ln in lines), lines
    assert any(ln.startswith("💥 exit") and " SIGKILL" in ln for ln in lines), lines


@pytest.mark.kernel
def test_vim_editing_the_forbidden_file_is_killed(seeded: Pipeline, tmp_path: Path) -> None:
    """The seed's story: `vi /tmp/forbidden/donotchange.me`, edit, `:wq` → Killed, content kept
    (vim dies writing its swap file next to the file, before it touches the file itself)."""
    vim = shutil.which("vim") or shutil.which("vi")
    if vim is None:
        skip_or_fail("vim is not installed")
    try:
        proc = subprocess.run([vim, "-es", "-N", "-c", "normal Ahello", "-c", "wq", str(FORBIDDEN)],
                              cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        assert proc.returncode == -9, proc
        assert FORBIDDEN.read_bytes() == ORIGINAL
        ex = wait_until(lambda: next((e["process_exit"] for e in seeded.exported() if "process_exit" in e
                                      and e["process_exit"]["process"]["pid"] == proc_pid(seeded, vim)), None),
                        timeout=60, what="exit of vim")
        assert ex["signal"] == "SIGKILL"
        pid = ex["process"]["pid"]
        writes = [k["process_kprobe"] for k in kprobes(seeded, pid)
                  if k["process_kprobe"]["function_name"] == "__x64_sys_write"]
        assert writes and writes[-1]["action"] == "KPROBE_ACTION_SIGKILL"
        assert writes[-1]["args"][0]["file_arg"]["path"].startswith(str(FORBIDDEN_DIR) + "/")
    finally:
        for swap in FORBIDDEN_DIR.glob(".donotchange.me.sw*"):
            swap.unlink()


def proc_pid(p: Pipeline, binary: str) -> int:
    names = {binary, os.path.realpath(binary)}
    for e in p.exported():
        if "process_exec" in e:
            proc = e["process_exec"]["process"]
            if proc.get("binary") in names and "Ahello" in proc.get("arguments", ""):
                return proc["pid"]
    return -1


def body_pid(e: dict) -> int:
    for k, v in e.items():
        if k.startswith("process_") and isinstance(v, dict):
            return v.get("process", {}).get("pid", -1)
    return -1


def _pid_of_shell(p: Pipeline, marker: str) -> int:
    def find() -> int:
        for e in p.exported():
            if "process_exec" in e:
                proc = e["process_exec"]["process"]
                if proc.get("binary", "").endswith("sh") and marker in proc.get("arguments", ""):
                    return proc["pid"]
        return 0
    return wait_until(find, timeout=30, what="exec event of the test shell")


@pytest.mark.kernel
def test_exec_policy_kills_cap_sys_admin_in_a_new_pid_namespace(seeded: Pipeline, tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o777)
    inside = tmp_path / "inside"
    host = tmp_path / "host"
    r = subprocess.run(["unshare", "--pid", "--fork", "--user", "--map-root-user",
                        "/usr/bin/touch", str(inside)], capture_output=True, timeout=30)
    assert not inside.exists(), r             # killed at exec: touch never ran
    r = subprocess.run(["/usr/bin/touch", str(host)], capture_output=True, timeout=30)
    assert r.returncode == 0 and host.exists()   # the same binary on the host runs

    def killed_touch() -> dict | None:
        for e in seeded.exported():
            t = e.get("process_tracepoint")
            if t and t["policy_name"] == "exec-policy-example" and str(inside) in t["process"].get("arguments", ""):
                return t
        return None
    ev = wait_until(killed_touch, timeout=30, what="process_tracepoint of the killed touch")
    assert ev["action"] == "KPROBE_ACTION_SIGKILL"
    assert (ev["subsys"], ev["event"]) == ("sched", "sched_process_exec")
    wait_until(lambda: (x := exit_of(seeded, ev["process"]["pid"])) and x.get("signal") == "SIGKILL",
               timeout=30, what="SIGKILL exit of the touch")
    assert not any(str(host) in (e.get("process_tracepoint") or {}).get("process", {}).get("arguments", "")
                   for e in seeded.exported())




@pytest.mark.kernel
def test_control_socket_refusals_keep_running_policies(seeded: Pipeline, tmp_path: Path) -> None:
    ls = ctl(seeded, "list")
    assert ls.returncode == 0, ls.stderr
    assert "deny-tmp-forbidden-write" in ls.stdout and "exec-policy-example" in ls.stdout
    assert oct(os.stat(seeded.base["control_socket"]).st_mode & 0o777) == "0o600"
    col = seeded.services["collector"]
    assert col.metric("tetrapipe_tracingpolicy_loaded", state="enabled") == 2
    assert col.metric("tetrapipe_tracingpolicy_loaded", state="load_error") == 1
    assert 'broken-at-start.yaml:15: spec.kprobes[0].selectors[0].matchArgs[0].operator: unknown operator "Prefx"' \
        in ls.stdout
    kills_before = col.metric("tetrapipe_tracingpolicy_selector_actions_total", action="sigkill",
                              policy="deny-tmp-forbidden-write")

    bad = tmp_path / "broken.yaml"
    bad.write_text(BAD_OPERATOR)
    r = ctl(seeded, "add", str(bad))
    assert r.returncode == 1
    assert f'{bad}:15: spec.kprobes[0].selectors[0].matchArgs[0].operator: unknown operator "Prefx"' in r.stderr
    six = tmp_path / "six.yaml"
    six.write_text(BAD_OPERATOR.replace("    - matchArgs:\n      - index: 0\n        operator: \"Prefx\"\n"
                                        "        values:\n        - \"/tmp/\"\n",
                                        "    - matchActions:\n      - action: Post\n" * 6))
    r = ctl(seeded, "add", str(six))
    assert r.returncode == 1 and "spec.kprobes[0].selectors: 6 selectors: at most 5 per hook" in r.stderr
    hook = tmp_path / "hook.yaml"
    hook.write_text(BAD_OPERATOR.replace('"sys_write"\n    syscall: true', '"vfs_write"').replace("Prefx", "Prefix"))
    r = ctl(seeded, "add", str(hook))
    assert r.returncode == 1 and "kernel function 'vfs_write' cannot be served" in r.stderr
    # the loaded policies still act
    proc = write_forbidden(tmp_path / "other")
    assert proc.returncode == -9 and FORBIDDEN.read_bytes() == ORIGINAL
    # disable / enable without unloading (the write goes to a scratch copy: the policy is off)
    r = ctl(seeded, "disable", "deny-tmp-forbidden-write")
    assert r.returncode == 0, r.stderr
    assert "disabled" in ctl(seeded, "list").stdout
    assert col.metric("tetrapipe_tracingpolicy_loaded", state="disabled") == 1
    same = ORIGINAL.decode().strip()
    off = subprocess.run(["/bin/sh", "-c", f"exec 3<>{FORBIDDEN}; echo '{same}' >&3"], capture_output=True, timeout=30)
    assert off.returncode == 0 and FORBIDDEN.read_bytes() == ORIGINAL  # the write (of the same bytes) ran
    r = ctl(seeded, "enable", "deny-tmp-forbidden-write")
    assert r.returncode == 0, r.stderr
    proc = write_forbidden(tmp_path / "other2")
    assert proc.returncode == -9 and FORBIDDEN.read_bytes() == ORIGINAL
    # the kill is counted (the collector publishes the kernel's counts every second)
    wait_until(lambda: col.metric("tetrapipe_tracingpolicy_selector_actions_total", action="sigkill",
                                  policy="deny-tmp-forbidden-write") >= kills_before + 1,
               timeout=15, what="the kill counted in tetrapipe_tracingpolicy_selector_actions_total")
    enr = seeded.services["enricher"]
    wait_until(lambda: enr.metric("tetrapipe_policy_events_total", policy="deny-tmp-forbidden-write") >= 3,
               timeout=15, what="policy events counted by the enricher")


@pytest.mark.kernel
def test_watched_dir_and_file_ownership(seeded: Pipeline, tmp_path: Path) -> None:
    watched = Path(seeded.settings["tracing_policy_dir"])
    tag = uuid.uuid4().hex[:8]
    target = Path(f"/tmp/tp-watch-{tag}")
    target.mkdir()
    text = f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: watch-{tag}
spec:
  kprobes:
  - call: "sys_openat"
    syscall: true
    args:
    - index: 1
      type: "string"
    selectors:
    - matchArgs:
      - index: 1
        operator: "Prefix"
        values:
        - "{target}/"
"""
    # not root-owned: refused, with the reason in `list`
    stranger = watched / "stranger.yaml"
    stranger.write_text(text.replace(f"watch-{tag}", f"stranger-{tag}"))
    os.chown(stranger, 65534, 65534)
    os.chmod(stranger, 0o644)
    wait_until(lambda: "owned by uid 65534, not root" in ctl(seeded, "list").stdout, timeout=30,
               what="refusal of the stranger's policy file")
    good = watched / "good.yaml"
    good.write_text(text)
    os.chmod(good, 0o644)
    wait_until(lambda: f"watch-{tag}" in ctl(seeded, "list").stdout, timeout=60, what="watched policy loaded")
    (target / "a").write_text("x")
    ev = wait_until(lambda: next((e["process_kprobe"] for e in seeded.exported()
                                  if (e.get("process_kprobe") or {}).get("policy_name") == f"watch-{tag}"), None),
                    timeout=30, what="event of the watched policy")
    assert ev["args"][0]["string_arg"] == f"{target}/a" and ev["function_name"] == "sys_openat"
    good.unlink()
    wait_until(lambda: f"watch-{tag}" not in ctl(seeded, "list").stdout, timeout=30, what="policy unloaded")
    stranger.unlink()
    shutil.rmtree(target)


@pytest.mark.kernel
def test_monitor_mode_reports_and_does_not_kill(seeded: Pipeline, tmp_path: Path) -> None:
    r = ctl(seeded, "delete", "deny-tmp-forbidden-write")
    assert r.returncode == 0, r.stderr
    src = _root_copy(SEED / "deny-tmp-forbidden-write.yaml", tmp_path)
    r = ctl(seeded, "add", str(src), "--mode", "monitor")
    assert r.returncode == 0, r.stderr
    assert "monitor mode" in r.stdout and "FollowFD is served" in r.stdout
    other = tmp_path / "other"
    try:
        proc = write_forbidden(other)
        assert proc.returncode == 0, proc                    # not killed
        assert Path(f"{other}.2").read_text() == "survived\n"
        pid = _pid_of_shell(seeded, str(other))
        ev = wait_until(lambda: next((k["process_kprobe"] for k in kprobes(seeded, pid)
                                      if k["process_kprobe"]["function_name"] == "__x64_sys_write"), None),
                        timeout=30, what="monitor-mode write event")
        assert ev["action"] == "KPROBE_ACTION_SIGKILL"         # what it would have done
        assert "policy-mode:monitor" in ev["tags"]
        col = seeded.services["collector"]
        wait_until(lambda: col.metric("tetrapipe_tracingpolicy_selector_actions_total", action="monitor_sigkill",
                                      policy="deny-tmp-forbidden-write") >= 1, timeout=10, what="monitor metric")
        assert (x := exit_of(seeded, pid)) is None or "signal" not in x
    finally:
        restore_forbidden()   # allowed: the policy only monitors now
        ctl(seeded, "delete", "deny-tmp-forbidden-write")
