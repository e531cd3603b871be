"""Sigkill made sure where the kernel lets us refuse (issue #12, README "Enforcement").

A Sigkill (``bpf_send_signal(SIGKILL)``) marks the whole thread group dying, but it does not stop a
request another thread of that group already holds: measured on Debian 6.12, an io_uring WRITE
judged at ``io_uring_file_get`` in the submitter and punted to an io-wq worker lands in 27 of 40
tries, because the worker takes its SIGKILL off its pending set (``get_signal`` returns to
io_wq_worker, which exits its loop) and then, the ring being torn down by the dying submitter,
still runs the queued work: the buffered write's ``fatal_signal_pending`` check passes (the
group's SIGNAL_GROUP_EXIT is set, the thread's SIGKILL no longer pending).

Where the kernel has BPF LSM (``file_permission``) or fmod_ret (``security_file_permission``), a
policy with Sigkill also records the killed thread group in ``doomed`` (thread group id → its
leader's start time, so a reused pid is not refused) and refuses (-EPERM) every read/write
permission check of that group from then on: ``rw_verify_area`` runs in whichever task issues
the request (the submitter, an io-wq worker, the SQPOLL thread) after the judgment, so nothing
the killed process still has in flight reaches the file. Without those hooks (the build
machines' kernel) the signal alone acts; the README says what that guarantees.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any

from collector.policy.metrics import SIGNAL_FALLBACKS

if TYPE_CHECKING:
    from collector.policy.compiler import ProgramGen

log = logging.getLogger("tetrapipe.collector")
DOOMED_MAX = 4096   # thread groups killed and not yet gone (LRU: the oldest age out)

MARK_C = ("{\n    u32 tg = bpf_get_current_pid_tgid() >> 32;\n    struct task_struct *ld = 0;\n    u64 st = 0;\n"
          "    TP_RD(ld, task->group_leader);\n    if (ld)\n        TP_RD(st, ld->start_time);\n"
          "    doomed.update(&tg, &st);\n}")
GUARD_C = ("{\n    u32 tg = bpf_get_current_pid_tgid() >> 32;\n    u64 *dst = doomed.lookup(&tg);\n    if (dst) {\n"
           "        struct task_struct *t = (struct task_struct *)bpf_get_current_task(), *ld = 0;\n"
           "        u64 st = 0;\n        TP_RD(ld, t->group_leader);\n        if (ld)\n"
           "            TP_RD(st, ld->start_time);\n        if (st == *dst)\n            ovr = -1;   /* -EPERM */\n"
           "    }\n}")


def guard(g: ProgramGen) -> tuple[str, str] | None:
    """(mechanism, kernel function) of the refusal this kernel allows, None without one."""
    if g.features.bpf_lsm:
        return ("lsm", "file_permission")
    if g.features.fmod_ret:
        return ("fmod_ret", "security_file_permission")
    return None


def mark(g: ProgramGen) -> str:
    """C that records the current thread group as killed (once per program the map and the
    refusing program are added); empty where the kernel offers no refusal."""
    where = guard(g)
    if where is None:
        return ""
    if not g.doom:
        g.doom = True
        g.pending_maps.append(f'BPF_TABLE("lru_hash", u32, u64, doomed, {DOOMED_MAX});  '
                              "/* killed thread groups: tgid → leader start time (collector/policy/doom.py) */")
        g.kfuncs.setdefault(where, []).append(GUARD_C)
        g.notices.append(f"Sigkill: the killed process's later reads and writes are refused (-EPERM) at "
                         f"{where[0]} {where[1]} (requests it has in flight, io_uring's included)")
    return MARK_C


def send_failed_signals(policy: str, table: Any) -> None:
    """The policy's ``sig_failed`` map (hookfn.py): signals bpf_send_signal could not send in the
    kernel (its per-CPU slot busy, -EBUSY), sent from here, late (the policy manager calls this
    every second), counted and logged: never dropped silently."""
    for k, v in list(table.items()):
        tgid, sig = int(k.value), int(v.value)
        with contextlib.suppress(KeyError):
            del table[k]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(tgid, sig)
        SIGNAL_FALLBACKS.labels(policy=policy, signal=str(sig)).inc()
        log.warning("policy %s: the kernel could not send signal %d to process %d: sent by the collector "
                    "(late: the operation may have taken effect)", policy, sig, tgid)
