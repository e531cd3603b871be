"""Shared by the kernel-function guest tests: hook records of loaded policies, and the kernel
config the BTF include tree needs (Debian keeps it in /boot/config-<release> only)."""

from __future__ import annotations

import time
from pathlib import Path

from bpf import records
from collector.policy.manager import Loaded, PolicyManager


class Hooks:
    """The loaded policies and every hook record seen so far."""

    def __init__(self, mgr: PolicyManager) -> None:
        self.mgr = mgr
        self.seen: list[tuple[int, records.HookBody]] = []   # (pid, body)

    def drain(self) -> None:
        for raw in self.mgr.queue.take(1_000_000):
            rec = records.decode(raw)
            if isinstance(rec, records.HookRecord):
                self.seen.append((rec.header.pid, records.decode_hook(rec)))

    def of(self, lp: Loaded, hook_id: int, pid: int | None = None) -> list[records.HookBody]:
        self.drain()
        return [b for p, b in self.seen if b.policy_id == lp.policy_id and b.hook_id == hook_id
                and (pid is None or p == pid)]

    def wait(self, lp: Loaded, hook_id: int, pid: int, timeout: float = 10.0) -> list[records.HookBody]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = self.of(lp, hook_id, pid)
            if got:
                return got
            time.sleep(0.1)
        return []


def config_for_btf_tree(tmp: Path) -> None:
    """Nothing to do any more: the collector reads /boot/config-<release> itself
    (collector/kernel_headers.py). It used to point ``CONFIG_GZ`` at a gzipped copy, which, for
    the rest of the boot's session, made other guest modules' trees name that copy."""
    del tmp


def load_or_known_limit(mgr: PolicyManager, load: object, *args: object) -> list[Loaded]:
    """``mgr.<load>(*args)``. (Named for the Debian 6.1 verifier limit it used to turn into
    expected failures: string sets are map lookups now and load there; any refusal is raised.)"""
    return getattr(mgr, str(load))(*args)
