"""BTF-derived kernel include tree: bcc compiles against it and reads correct values."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import skip_or_fail

from collector.kernel_headers import (
    KernelHeadersError,
    autoconf_h,
    ensure_tracefs,
    fix_enum_sizes,
    kernel_include_tree,
    prepare_bcc_environment,
    rename_clashes,
    split_bitfield_runs,
    version_h,
)

CHILD_UID = 1234

PROGRAM = r"""
struct info_t {
    u32 ppid;
    u32 uid;
    u64 start_time;
    u64 start_boottime;
    u32 uts_inum;
    u32 pad;
    u64 cgroup_id;
    u64 arg_start;
    u64 exe_ino;
    u64 exe_blocks;
    char pwd[32];
    char arg0[32];
};
struct event_t { u32 pid; u32 uid; };
BPF_HASH(execs, u32, struct info_t, 10240);
BPF_PERCPU_ARRAY(counts, u64, 1);
BPF_RINGBUF_OUTPUT(events, 8);

TRACEPOINT_PROBE(sched, sched_process_exec) {
    struct info_t info = {};
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    info.ppid = task->real_parent->tgid;
    info.uid = task->cred->uid.val;
    info.start_time = task->start_time;
    info.start_boottime = task->start_boottime;
    info.uts_inum = task->nsproxy->uts_ns->ns.inum;
    info.cgroup_id = bpf_get_current_cgroup_id();
    info.arg_start = task->mm->arg_start;
    info.exe_ino = task->mm->exe_file->f_inode->i_ino;
    info.exe_blocks = task->mm->exe_file->f_inode->i_blocks;  /* after a 1-byte enum */
    bpf_probe_read_kernel_str(info.pwd, sizeof(info.pwd), task->fs->pwd.dentry->d_name.name);
    bpf_probe_read_user_str(info.arg0, sizeof(info.arg0), (void *)info.arg_start);
    execs.update(&pid, &info);

    int zero = 0;
    u64 *count = counts.lookup(&zero);
    if (count)
        *count += 1;
    struct event_t *ev = events.ringbuf_reserve(sizeof(struct event_t));
    if (ev) {
        ev->pid = pid;
        ev->uid = info.uid;
        events.ringbuf_submit(ev, 0);
    }
    return 0;
}
"""


def _load(cache: Path):  # noqa: ANN202 - bcc.BPF
    try:
        from bcc import BPF
    except ImportError as exc:
        _cannot_load(f"bcc python module not importable: {exc}")
    try:
        ensure_tracefs()
        prepare_bcc_environment(cache)
    except KernelHeadersError as exc:
        _cannot_load(str(exc))
    try:
        return BPF(text=PROGRAM.encode())
    except Exception as exc:  # bcc raises bare Exception on compile/load failure
        if os.geteuid() != 0:
            _cannot_load(f"BPF load needs root (euid={os.geteuid()}): {exc}")
        raise  # as root a compile/load failure is a real bug in the tree


def _cannot_load(why: str) -> None:
    skip_or_fail(f"BPF cannot load here: {why}")


def _cgroup2_id(pid: int) -> int | None:
    """Inode of the process's cgroup v2 directory == bpf_get_current_cgroup_id()."""
    mounts = [ln.split() for ln in Path("/proc/self/mounts").read_text().splitlines()]
    roots = [m[1] for m in mounts if m[2] == "cgroup2"]
    rel = next((ln[3:] for ln in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if ln.startswith("0::")), None)
    if not roots or rel is None:
        return None
    return os.stat(roots[0] + rel.rstrip("/") or roots[0]).st_ino


def test_bcc_reads_task_fields_through_btf_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)  # restored after the test
    t0 = time.perf_counter()
    bpf = _load(tmp_path / "cache")
    load_s = time.perf_counter() - t0
    try:
        _check_exec_event(bpf, tmp_path)
    finally:
        bpf.cleanup()
    print(f"bcc compile+load {load_s:.2f}s")


def _check_exec_event(bpf, tmp_path: Path) -> None:  # noqa: ANN001 - bcc.BPF
    events: list[tuple[int, int]] = []

    def on_event(_ctx: object, data: int, _size: int) -> None:
        ev = bpf[b"events"].event(data)
        events.append((ev.pid, ev.uid))

    bpf[b"events"].open_ring_buffer(on_event)
    workdir = tmp_path / "child-cwd"
    workdir.mkdir()
    child = subprocess.Popen(
        ["setpriv", f"--reuid={CHILD_UID}", f"--regid={CHILD_UID}", "--clear-groups", "/bin/sleep", "0.5"],
        cwd=workdir,
    )
    try:
        info = None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            value = bpf[b"execs"].get(bpf[b"execs"].Key(child.pid))
            if value is not None and value.uid == CHILD_UID:  # setpriv exec'd sleep
                info = value
                break
            time.sleep(0.01)
        assert info is not None, "no sched_process_exec event for the child"
        stat = Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()
        status = Path(f"/proc/{child.pid}/status").read_text()
        uts_ino = os.stat(f"/proc/{child.pid}/ns/uts").st_ino
        cgroup_id = _cgroup2_id(child.pid)
        boottime_offset_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    finally:
        child.wait()
    bpf.ring_buffer_poll(100)

    ns_per_tick = 1e9 / os.sysconf("SC_CLK_TCK")
    assert info.ppid == int(stat[1]) == os.getpid()  # stat[1] is field 4 (ppid)
    assert info.uid == CHILD_UID
    assert str(info.uid) == next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1]
    starttime_ticks = int(stat[19])  # field 22
    assert abs(info.start_boottime / ns_per_tick - starttime_ticks) <= 1
    # start_time is CLOCK_MONOTONIC; /proc shows boot time (they differ by time suspended)
    assert abs((info.start_time + boottime_offset_ns) / ns_per_tick - starttime_ticks) <= 1
    assert info.uts_inum == uts_ino
    assert info.pwd == workdir.name.encode()
    assert info.arg0 == b"/bin/sleep"  # mm->arg_start: after bpftool's `long: 64` padding runs
    exe = os.stat("/bin/sleep")
    assert (info.exe_ino, info.exe_blocks) == (exe.st_ino, exe.st_blocks)
    if cgroup_id is not None:
        assert info.cgroup_id == cgroup_id
    assert (child.pid, CHILD_UID) in events
    assert sum(bpf[b"counts"][0]) >= 2  # setpriv and sleep execs at least


def test_tree_is_cached(tmp_path: Path) -> None:
    try:
        first = kernel_include_tree(tmp_path)
    except KernelHeadersError as exc:
        _cannot_load(str(exc))
    second = kernel_include_tree(tmp_path)
    assert first.generated is True
    assert second.generated is False
    assert second.path == first.path
    assert first.path.name.startswith(f"{first.release}-{first.btf_sha}-")  # + the stamp's hash
    assert len(first.btf_sha) == 16
    for rel in (
        "include/vmlinux.h",
        "include/linux/kconfig.h",
        "include/generated/autoconf.h",
        "include/linux/version.h",
        "include/asm/page.h",
    ):
        assert (first.path / rel).is_file(), rel
    autoconf = (first.path / "include/generated/autoconf.h").read_text()
    assert "#define CONFIG_BPF_SYSCALL 1\n" in autoconf
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # no temp dirs left


def test_generators_on_small_inputs() -> None:
    config = 'CONFIG_A=y\nCONFIG_B=m\nCONFIG_C="x y"\nCONFIG_D=0x10\n# CONFIG_E is not set\n'
    assert autoconf_h(config).splitlines()[3:7] == [
        "#define CONFIG_A 1",
        "#define CONFIG_B_MODULE 1",
        '#define CONFIG_C "x y"',
        "#define CONFIG_D 0x10",
    ]
    assert "#define LINUX_VERSION_CODE 397868\n" in version_h("6.18.44-fc-v595")  # 6<<16 | 18<<8 | 44
    assert "#define LINUX_VERSION_CODE 330495\n" in version_h("5.10.300")  # sublevel clamps to 255

    vmlinux = "struct bpf_insn {\n\tint x;\n\tlong: 64;\n};\n\nenum rw_hint {\n\tW_A = 0,\n\tBPF_ANY = -1,\n};\n"
    renamed = rename_clashes(vmlinux, {"bpf_insn"}, {"BPF_ANY"})
    assert "struct bpf_insn___vmlinux {" in renamed and "\tBPF_ANY___vmlinux = -1," in renamed
    assert "\tlong: 64;\n\tlong: 0;\n" in split_bitfield_runs(vmlinux)
    raw = "[7] ENUM 'rw_hint' encoding=UNSIGNED size=1 vlen=2\n"
    assert "} __attribute__((mode(QI)));" in fix_enum_sizes(vmlinux, raw)
