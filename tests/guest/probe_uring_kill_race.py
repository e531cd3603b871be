"""Probe of the io_uring kill race (issue #12, uring3; README "Enforcement"): not a test CI runs.

Repeats the io_uring WRITE roads of tests/bypass/attacker.c against the seed policy and records,
per try, which task took the file (io_uring_file_get), whether the request was punted to io-wq,
when and from where SIGKILL was generated (a raw signal_generate probe, flagged when inside
irq_work), and which task reached the write's permission check and generic_perform_write with
its pending SIGKILL and its group's SIGNAL_GROUP_EXIT. Not collected by default (its name does
not start with test_); run it by name, in a guest:

    TETRAPIPE_VM_TESTS=tests/guest/probe_uring_kill_race.py .venv/bin/pytest -s tests/test_stock_kernels.py -k 6.12

or on this host (no kprobes: the permission/write columns stay empty):

    TETRAPIPE_VM_GUEST=1 DIAG_LOG=/tmp/probe.log DIAG_N=100 DIAG_ALL=1 \
        .venv/bin/pytest -s tests/guest/probe_uring_kill_race.py

DIAG_N tries of the plain road (others N/4 unless DIAG_ALL), DIAG_ROADS a comma list of attacker
modes; in the guest (whose environment the runner does not pass) the files .diag_roads (modes) and
.diag_nodoom (a release prefix: the file_permission refusal left out, to see the race itself) next
to this file do the same. The log goes to the results share (diag.log) or DIAG_LOG.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

from collector import kernel_features, loader, procfs
from collector.drain import RecordQueue
from collector.policy.manager import PolicyManager
from guest.kfunc_common import Hooks

SEED = Path(__file__).resolve().parent.parent / "data" / "seed" / "deny-tmp-forbidden-write.yaml"
ATTACKER_C = Path(__file__).resolve().parent.parent / "bypass" / "attacker.c"
T = Path("/tmp/forbidden/donotchange.me")
N = int(os.environ.get("DIAG_N", "40"))

DIAG = r"""
#include <linux/sched.h>
struct ev { u64 ts; u32 kind; u32 tid; u32 tgid; s32 a; s32 b; s32 c; char comm[16]; };
BPF_RINGBUF_OUTPUT(dev, 64);
BPF_PERCPU_ARRAY(inirq, u32, 1);
static __always_inline int ours(void) {
    char c[16] = {};
    bpf_get_current_comm(&c, sizeof(c));
    return (c[0] == 'a' && c[1] == 't' && c[2] == 't') || (c[0] == 'i' && c[1] == 'o' && c[2] == 'u');
}
static __always_inline void put(u32 kind, s32 a, s32 b, s32 c) {
    struct ev e = {};
    u64 id = bpf_get_current_pid_tgid();
    e.ts = bpf_ktime_get_ns(); e.kind = kind; e.tid = (u32)id; e.tgid = id >> 32; e.a = a; e.b = b; e.c = c;
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    dev.ringbuf_output(&e, sizeof(e), 0);
}
TRACEPOINT_PROBE(io_uring, io_uring_file_get) { if (ours()) put(1, args->fd, 0, 0); return 0; }
TRACEPOINT_PROBE(io_uring, io_uring_queue_async_work) { if (ours()) put(2, args->opcode, 0, 0); return 0; }
RAW_TRACEPOINT_PROBE(irq_work_entry) { int z = 0; u32 *v = inirq.lookup(&z); if (v) *v = 1; return 0; }
RAW_TRACEPOINT_PROBE(irq_work_exit) { int z = 0; u32 *v = inirq.lookup(&z); if (v) *v = 0; return 0; }
RAW_TRACEPOINT_PROBE(signal_generate) {
    int sig = (int)ctx->args[0];
    if (sig != 9) return 0;
    struct task_struct *t = (struct task_struct *)ctx->args[2];
    char c[16] = {};
    bpf_probe_read_kernel(&c, sizeof(c), t->comm);
    if (!((c[0] == 'a' && c[1] == 't' && c[2] == 't') || (c[0] == 'i' && c[1] == 'o' && c[2] == 'u'))) return 0;
    int z = 0; u32 *v = inirq.lookup(&z);
    put(3, t->pid, v ? *v : -1, (int)ctx->args[4]);
    return 0;
}
int kp_write(struct pt_regs *ctx) {
    if (!ours()) return 0;
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    unsigned long p = t->pending.signal.sig[0];
    unsigned int f = t->signal->flags;
    put(4, (p >> 8) & 1, f & 4, 0);
    return 0;
}
int kp_perm(struct pt_regs *ctx) {
    if (!ours()) return 0;
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    unsigned long p = t->pending.signal.sig[0];
    put(5, (p >> 8) & 1, (int)PT_REGS_PARM2(ctx), 0);
    return 0;
}
"""
KINDS = {1: "file_get", 2: "async_work", 3: "SIGKILL", 4: "gen_perform_write", 5: "file_permission"}


LOG = Path(os.environ.get("DIAG_LOG", "/tetrapipe-vm/diag.log"))


def out(s: str) -> None:
    print(s)
    with LOG.open("a") as f:
        f.write(s + "\n")


def test_diag(tmp_path: Path) -> None:
    import fcntl
    lock = open("/tmp/tetrapipe-seed-policy-tests.lock", "a+")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)
    loader.prepare(tmp_path / "kh")
    Path("/tmp/forbidden").mkdir(exist_ok=True)
    T.write_text("old\n")
    att = tmp_path / "attacker"
    subprocess.run(["gcc", "-O0", "-no-pie", "-pthread", "-o", str(att), str(ATTACKER_C)], check=True)
    flag = Path(__file__).parent / ".diag_nodoom"
    if flag.exists() and os.uname().release.startswith(flag.read_text().strip()):
        os.environ["DIAG_NODOOM"] = "1"
    if os.environ.get("DIAG_NODOOM"):
        from collector.policy import doom
        doom.guard = lambda g: None
    feats = kernel_features.probe()
    mgr = PolicyManager(RecordQueue(1_000_000, asyncio.new_event_loop()), procfs.host_namespaces(), feats)
    mgr.uncaught.enabled = False
    (lp,) = mgr.load_text(SEED.read_text(), str(SEED))
    hooks = Hooks(mgr)
    d = loader.load_program("diag", text=DIAG)
    try:
        d.attach_kprobe(event="generic_perform_write", fn_name="kp_write")
        d.attach_kprobe(event="security_file_permission", fn_name="kp_perm")
    except Exception as exc:  # noqa: BLE001
        out(f"no kprobes: {exc}")
    evs: list = []

    def cb(ctx, data, size):
        e = d["dev"].event(data)
        evs.append((e.ts, e.kind, e.tid, e.tgid, e.a, e.b, e.c, e.comm.decode(errors="replace")))

    d["dev"].open_ring_buffer(cb)
    out(f"\nkernel {os.uname().release} nodoom={os.environ.get('DIAG_NODOOM')}")
    rf = Path(__file__).parent / ".diag_roads"
    if rf.exists():
        os.environ["DIAG_ROADS"], os.environ["DIAG_ALL"] = rf.read_text().strip(), "1"
    roads = os.environ.get("DIAG_ROADS", "uring_write,uring_link_write,uring_sqpoll_write,uring_async_write").split(",")
    summary: Counter = Counter()
    for road in roads:
        for i in range(N if road == "uring_write" or os.environ.get("DIAG_ALL") else max(N // 4, 5)):
            fresh = Path("/tmp") / f".r-{uuid.uuid4().hex[:6]}"
            fresh.write_text("old\n")
            fresh.rename(T)
            evs.clear()
            p = subprocess.Popen([str(att), road, str(T)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            _, err = p.communicate(timeout=60)
            changed = T.read_text() != "old\n"
            time.sleep(0.3)
            d.ring_buffer_poll(100)
            hk = hooks.of(lp, 3, p.pid)
            sigfail = [h.flags & 8 for h in hk]
            result = "caught" if p.returncode == -9 and not changed else ("seen" if changed else "other")
            summary[(road, result, tuple(sigfail))] += 1
            t0 = evs[0][0] if evs else 0
            line = " ".join(f"{(e[0] - t0) // 1000}us:{KINDS[e[1]]}[{e[7]}/{e[2]}]({e[4]},{e[5]},{e[6]})"
                            for e in sorted(evs))
            out(f"{road} #{i} rc={p.returncode} changed={changed} hookev={len(hk)} sigfail={sigfail} | {line}")
    out(f"SUMMARY {os.uname().release}")
    for k, v in sorted(summary.items()):
        out(f"   {k} {v}")
    mgr.stop()
