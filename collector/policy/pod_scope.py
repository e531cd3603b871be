"""Which cgroups a pod-scoped policy acts in (Tetragon's "policyfilter"): per policy the cgroup v2
ids of the containers it selects, written into the policy's ``pod_cgroups`` BPF hash, which the
generated program checks with ``bpf_get_current_cgroup_id()`` before anything else.

A policy is scoped when it is a ``TracingPolicyNamespaced`` (pods of its metadata.namespace) or has
a ``podSelector`` (pod labels, any namespace for a cluster-wide policy) or a ``containerSelector``
(the container's ``name`` and image ``repo``). Host processes (no pod) are outside every scoped
policy.

Pods come from the pod index the Kubernetes watch keeps (tetrapipe/k8s/). Container → cgroup id:
the cgroup v2 tree is walked for directories whose names carry a container id (the formats of
tetrapipe/cgroup_names.py); a directory's inode number is its cgroup id; cgroups a container made
below its own count as the container's. A container is found in the pod index by its id, else
(just started, not in the pod's status yet) by the pod UID in its cgroup path: then only the
namespace and ``podSelector`` can select it (this includes the pod's sandbox, which runs only the
pause binary); a ``containerSelector`` needs the container's status for its name and image.

The sets are recomputed when the pod index changes, every ``RESCAN_S``, and at once when a cgroup
v2 directory is made (the ``cgroup:cgroup_mkdir`` tracepoint wakes a thread here; the runtime makes
a container's cgroup before it starts the container's process). Window: a container is outside its
policies from the mkdir until that recompute ends (milliseconds, bench/pod_scope_bench.py), and,
for a ``containerSelector``, until the pod's status lists the container; Tetragon closes it with
an OCI hook that runs before the container starts; tetrapipe has none. Without the tracepoint
program the periodic rescan alone bounds it (about a second). Before the first pod list arrives,
scoped policies act nowhere.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge

from collector import connect_deny, loader
from collector.policy.compiler import POD_CGROUPS_MAP
from collector.policy.model import Policy
from collector.policy.uprobe_paths import ContainerUprobes
from tetrapipe import cgroup_names
from tetrapipe.cgroup_names import ContainerRef
from tetrapipe.k8s.pods import PodIndex

log = logging.getLogger("tetrapipe.policy.pods")

POLICYFILTER_CGROUPS = Gauge("tetrapipe_policyfilter_cgroups",
                             "cgroups a pod-scoped policy acts in (its selected containers)", ["policy"])
POLICYFILTER_ERRORS = Counter("tetrapipe_policyfilter_update_errors",
                              "cgroup ids that could not be written to a scoped policy's map "
                              "(the policy does not act in those containers)", ["policy"])
RESCAN_S = 1.0
MAX_DEPTH = 12

# cgroup v2 (hierarchy 0) directories made: a wake-up for the recompute, nothing else
MKDIR_PROGRAM = r"""
BPF_RINGBUF_OUTPUT(mkdirs, 8);
TRACEPOINT_PROBE(cgroup, cgroup_mkdir)
{
    if (args->root != 0)
        return 0;
    u64 id = args->id;
    mkdirs.ringbuf_output(&id, sizeof(id), 0);
    return 0;
}
"""


@dataclass(frozen=True, slots=True)
class ContainerCgroup:
    cgroup_id: int
    path: str
    ref: ContainerRef


def image_repo(image: str) -> str:
    """``docker.io/library/nginx:1.27`` → ``docker.io/library/nginx`` (tag and digest dropped)."""
    image = image.split("@", 1)[0]
    slash = image.rfind("/")
    colon = image.rfind(":")
    return image[:colon] if colon > slash else image


def container_cgroups(root: Path) -> Iterator[ContainerCgroup]:
    """Every cgroup below ``root`` whose name (or an ancestor's) names a container."""
    stack: list[tuple[str, tuple[str, ...], int]] = [(str(root), (), 0)]
    while stack:
        path, ancestors, depth = stack.pop()
        try:
            entries = list(os.scandir(path))
        except OSError:  # removed while we walked
            continue
        for e in entries:
            try:
                if not e.is_dir(follow_symlinks=False):
                    continue
                ino = e.inode()
            except OSError:
                continue
            ref = cgroup_names.parse(e.name, ancestors)
            if ref is not None and ref.container_id:  # a pod's own slice holds no process
                yield ContainerCgroup(ino, e.path, ref)
            if depth < MAX_DEPTH:
                stack.append((e.path, (e.name, *ancestors), depth + 1))


@dataclass
class Scoped:
    policy: Policy
    table: Any                                   # the policy's pod_cgroups BPF hash
    cgroups: set[int] = field(default_factory=set)
    uprobes: ContainerUprobes | None = None      # resolvePathInContainer uprobes (policy/uprobe_paths.py)


class PodScope:
    """The cgroup sets of the loaded pod-scoped policies, kept in their BPF maps."""

    def __init__(self, index: PodIndex, cgroup_root: Path | None = None, rescan_s: float = RESCAN_S,
                 watch_mkdir: bool = True) -> None:
        self.index = index
        self._lock = threading.RLock()          # refreshes come from the tick and the mkdir thread
        self.watch_mkdir = watch_mkdir
        self._mkdir: MkdirWake | None = None
        self.root = cgroup_root or connect_deny.cgroup2_root()
        self.rescan_s = rescan_s
        self.policies: dict[str, Scoped] = {}
        self._seen_version = -1
        self._last_scan = 0.0
        self._cgroups: list[ContainerCgroup] = []
        if self.root is None:
            log.error("no cgroup v2 hierarchy mounted: pod-scoped policies will act nowhere")

    def add(self, policy: Policy, bpf: Any, uprobes: ContainerUprobes | None = None) -> None:
        """A scoped policy was loaded: fill its map now (before it is enabled)."""
        with self._lock:
            self.policies[policy.name] = Scoped(policy, bpf[POD_CGROUPS_MAP], uprobes=uprobes)
            self.refresh(force=True)
            if self._mkdir is None and self.watch_mkdir and self.root is not None:
                self._mkdir = MkdirWake.start(lambda: self.refresh(force=True))

    def remove(self, name: str) -> None:
        with self._lock:
            if self.policies.pop(name, None) is not None:
                try:
                    POLICYFILTER_CGROUPS.remove(name)
                except KeyError:
                    pass

    def close(self) -> None:
        if self._mkdir is not None:
            self._mkdir.stop()
            self._mkdir = None

    def refresh(self, force: bool = False) -> None:
        """Recompute the sets when pods changed or the rescan interval passed; write the changes."""
        with self._lock:
            self._refresh(force)

    def _refresh(self, force: bool) -> None:
        if not self.policies:
            return
        now = time.monotonic()
        if not force and self.index.version == self._seen_version and now - self._last_scan < self.rescan_s:
            return
        self._seen_version = self.index.version
        self._last_scan = now
        self._cgroups = list(container_cgroups(self.root)) if self.root is not None else []
        for sp in self.policies.values():
            want = {c.cgroup_id for c in self._cgroups if self.selects(sp.policy, c.ref)}
            self._write(sp, want)
            if sp.uprobes is not None:   # attach in containers that appeared, detach from gone ones
                selected: dict[str, list[str]] = {}
                for c in self._cgroups:
                    if c.cgroup_id in sp.cgroups:
                        selected.setdefault(c.ref.container_id, []).append(c.path)
                sp.uprobes.sync(selected)

    def selects(self, policy: Policy, ref: ContainerRef) -> bool:
        """Whether ``policy`` acts in the container ``ref`` (by the pod index as it is now)."""
        entry, status = self.index.find(ref)
        if entry is None:
            return False
        meta = entry.pod.get("metadata") or {}
        if policy.kind == "TracingPolicyNamespaced" and meta.get("namespace", "") != policy.namespace:
            return False
        if policy.pod_selector is not None and not policy.pod_selector.matches(dict(meta.get("labels") or {})):
            return False
        if policy.container_selector is not None:
            if status is None:  # the pod does not list this container (yet), or the pause sandbox
                return False
            name = status.get("name", "")
            image = status.get("image") or (entry.specs.get(name) or {}).get("image", "")
            if not policy.container_selector.matches({"name": name, "repo": image_repo(image)}):
                return False
        return True

    def _write(self, sp: Scoped, want: set[int]) -> None:
        one = ctypes.c_uint8(1)
        failed: set[int] = set()
        for cg in want - sp.cgroups:
            try:
                sp.table[ctypes.c_uint64(cg)] = one
            except Exception as exc:  # noqa: BLE001 - e.g. the map is full: counted, retried next rescan
                failed.add(cg)
                POLICYFILTER_ERRORS.labels(policy=sp.policy.name).inc()
                log.error("policy %s: cgroup %d not added to its map: %s", sp.policy.name, cg, exc)
        for cg in sp.cgroups - want:
            try:
                del sp.table[ctypes.c_uint64(cg)]
            except KeyError:
                pass
        want = want - failed
        if want != sp.cgroups:
            log.info("policy %s acts in %d container cgroups", sp.policy.name, len(want))
        sp.cgroups = want
        POLICYFILTER_CGROUPS.labels(policy=sp.policy.name).set(len(want))


class MkdirWake:
    """A thread woken by ``cgroup:cgroup_mkdir`` (cgroup v2) that calls ``on_mkdir`` once per poll."""

    def __init__(self, bpf: Any, on_mkdir: Any) -> None:
        self.bpf = bpf
        self.on_mkdir = on_mkdir
        self.pending = False
        self._stop = threading.Event()
        bpf["mkdirs"].open_ring_buffer(self._on_event)
        self._thread = threading.Thread(target=self._run, name="cgroup-mkdir", daemon=True)

    @classmethod
    def start(cls, on_mkdir: Any) -> MkdirWake | None:
        try:
            w = cls(loader.load_program("cgroup mkdir wake-up", text=MKDIR_PROGRAM), on_mkdir)
        except Exception as exc:  # noqa: BLE001 - the periodic rescan still runs
            log.warning("cgroup:cgroup_mkdir not watched (%s): new containers join their policies at "
                        "the next rescan (%.0f s)", exc, RESCAN_S)
            return None
        w._thread.start()
        log.info("cgroup v2 mkdirs watched: new containers join their policies at once")
        return w

    def _on_event(self, _ctx: Any, _data: Any, _size: int) -> int:
        self.pending = True
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.bpf.ring_buffer_poll(200)
            if self.pending:
                self.pending = False
                try:
                    self.on_mkdir()
                except Exception:  # noqa: BLE001 - keep watching
                    log.exception("pod scope recompute after a cgroup mkdir failed")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.bpf.cleanup()
