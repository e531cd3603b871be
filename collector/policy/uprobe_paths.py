"""Where a uprobe's ``path`` is looked up, beyond a plain host path:

- Tetragon's ``/procRoot/...`` convention: Tetragon's pod mounts the host's /proc at /procRoot, so
  its example policies name host files as ``/procRoot/1/root/usr/bin/bash`` (the file as init
  sees it). tetrapipe runs on the host (or with the host's /proc at /proc): when ``/procRoot`` does
  not exist, ``/procRoot/`` is read as ``/proc/`` and the load answer says so.
- ``resolvePathInContainer: true`` (with a podSelector/containerSelector): the path is looked up
  in the root of each selected container (``/proc/<pid>/root/<path>`` of one of the container's
  processes), attached when such a container appears and detached when it goes
  (:class:`ContainerUprobes`, driven by collector/policy/pod_scope.py's rescans). With no selected
  container the policy loads and waits, as Tetragon does. The uprobe is set on the file's inode,
  so it stays after the process it was found through exits, and fires in every process that maps
  that file (the policy's cgroup filter keeps events to the selected containers).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from collector import uprobes
from collector.policy.model import Hook, Policy

if TYPE_CHECKING:
    from collector.policy.yamldoc import Ctx

log = logging.getLogger("tetrapipe.policy.uprobes")

PROC_ROOT = "/procRoot"


def host_path(binary: str, where: str, notices: list[str], proc_root: str = PROC_ROOT) -> str:
    """``/procRoot/<rest>`` → ``/proc/<rest>`` when ``/procRoot`` does not exist (notice added)."""
    if binary != proc_root and not binary.startswith(proc_root + "/"):
        return binary
    if os.path.exists(proc_root):
        return binary
    mapped = "/proc" + binary[len(proc_root):]
    notices.append(f"{where}.path: {binary} read as {mapped} (Tetragon's {proc_root} is the host's /proc "
                   f"mounted in its pod; tetrapipe reads the host's /proc, and {proc_root} does not exist here)")
    return mapped


def check_scoped(c: Ctx, policy: Policy) -> None:
    """resolvePathInContainer needs the containers whose roots resolve the path."""
    for h in policy.hooks:
        if h.in_container and not policy.scoped:
            raise c.fail(f"{h.path}.resolvePathInContainer",
                         "resolvePathInContainer needs a podSelector or containerSelector (or a "
                         "TracingPolicyNamespaced): the path is resolved in the selected pods' containers")


def container_target(hook: Hook) -> uprobes.Target:
    """An attach point resolved later, in each selected container's root."""
    return uprobes.Target(hook.binary, hook.call, hook.offset, in_container=True, ref_ctr_offset=hook.ref_ctr)


def _pid_in(cgroup_paths: Iterable[str]) -> int:
    """A process of the container (any of its cgroups), 0 when none runs yet."""
    for path in cgroup_paths:
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                for line in f:
                    if line.strip():
                        return int(line)
        except (OSError, ValueError):
            continue
    return 0


@dataclass
class _Attached:
    ev_names: list[bytes] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


class ContainerUprobes:
    """The container-resolved uprobes of one loaded policy: attached per selected container."""

    def __init__(self, policy_name: str, bpf: Any, targets: list[tuple[uprobes.Target, str]]) -> None:
        self.policy_name = policy_name
        self.bpf = bpf
        self.targets = targets
        self.attached: dict[str, _Attached] = {}     # container id → its uprobe events
        self.missing: dict[str, str] = {}            # container id → why nothing was attached

    def sync(self, selected: dict[str, list[str]]) -> None:
        """``selected``: container id → its cgroup directories, for the containers selected now."""
        for cid in list(self.attached):
            if cid not in selected:
                self._detach(cid)
        for cid, paths in selected.items():
            if cid not in self.attached:
                self._attach(cid, paths)
        for cid in list(self.missing):
            if cid not in selected:
                del self.missing[cid]

    def _attach(self, cid: str, paths: list[str]) -> None:
        pid = _pid_in(paths)
        if not pid:   # the runtime made the cgroup, its process is not in yet: next rescan
            self.missing[cid] = "no process in the container yet"
            return
        done = _Attached()
        try:
            for target, fn in self.targets:
                full = f"/proc/{pid}/root{target.path}"
                if not os.path.isfile(full):
                    raise FileNotFoundError(f"{target.path} does not exist in container {cid[:12]}")
                from bcc import BPF

                here = uprobes.Target(full, target.symbol, target.offset, ref_ctr_offset=target.ref_ctr_offset)
                uprobes.attach(self.bpf, here, fn)
                # the event name bcc gave it (from the resolved file and offset), to detach it
                # later even when the process it was found through is gone
                path, addr = BPF._check_path_symbol(full.encode(), target.symbol.encode(),
                                                    None if target.symbol else target.offset, -1)
                done.ev_names.append(self.bpf._get_uprobe_evname(b"p", path, addr, -1))
                done.files.append(full)
        except Exception as exc:  # noqa: BLE001 - bcc raises bare Exceptions; one container must not stop others
            for ev in done.ev_names:
                self._detach_event(ev)
            self.missing[cid] = str(exc)
            log.warning("policy %s: uprobe not attached in container %s: %s", self.policy_name, cid[:12], exc)
            return
        self.missing.pop(cid, None)
        self.attached[cid] = done
        log.info("policy %s: uprobes attached in container %s (%s)", self.policy_name, cid[:12],
                 ", ".join(done.files))

    def _detach(self, cid: str) -> None:
        for ev in self.attached.pop(cid).ev_names:
            self._detach_event(ev)
        log.info("policy %s: uprobes detached from container %s (gone or no longer selected)",
                 self.policy_name, cid[:12])

    def _detach_event(self, ev: bytes) -> None:
        try:
            self.bpf.detach_uprobe_event(ev)
        except Exception as exc:  # noqa: BLE001
            log.warning("policy %s: detaching %s: %s", self.policy_name, ev.decode(errors="replace"), exc)
