"""Container id and pod UID from cgroup v2 names, as the kernel captured them at exec: the leaf
cgroup name and the names of its ancestors (nearest first). Names only: the enricher may run on
another machine than the processes and never looks at /sys/fs/cgroup; the collector's pod scope
(collector/policy/pod_scope.py) walks /sys/fs/cgroup and parses the directory names with this.

Formats understood (kubelet with the systemd or the cgroupfs driver, and the runtimes):
- containerd/CRI, systemd driver: ``kubepods-<qos>-pod<uid_with_underscores>.slice`` /
  ``cri-containerd-<id>.scope``
- kubelet cgroupfs driver: ``/kubepods/<qos>/pod<uid>/<id>`` (also ``/kubepods/pod<uid>/<id>``)
- CRI-O: ``crio-<id>.scope`` (``crio-conmon-<id>.scope`` is the monitor, not the container)
- Docker: ``docker-<id>.scope`` (systemd) and ``/docker/<id>`` (cgroupfs); Podman ``libpod-<id>``
- a systemd cgroupsPath as the name: ``kubepods-<qos>-pod<uid>.slice:cri-containerd:<id>``
The container may have made cgroups of its own below its cgroup: the ancestors are searched too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_SCOPE = re.compile(r"^(cri-containerd|crio|docker|cri-dockerd|libpod)-([0-9a-f]{32,64})(?:\.scope)?$")
# "<slice>:<runtime>:<id>" (a systemd cgroupsPath used as the name) and ":<id>"
_COLON = re.compile(r"^(?:(?:[^:]*):)?(cri-containerd|crio|docker)?:([0-9a-f]{64})$")
_BARE_ID = re.compile(r"^[0-9a-f]{64}$")
_POD_SYSTEMD = re.compile(r"^kubepods(?:-[a-z]+)?-pod([0-9a-f_]{8,40})\.slice$")
_POD_CGROUPFS = re.compile(r"^pod([0-9a-f-]{8,40})$")
_RUNTIME = {"cri-containerd": "containerd", "crio": "cri-o", "docker": "docker",
            "cri-dockerd": "docker", "libpod": "podman"}


@dataclass(frozen=True, slots=True)
class ContainerRef:
    container_id: str          # bare id, 64 hex digits as the runtime named it
    runtime: str               # containerd, cri-o, docker, podman, or "" when the name says nothing
    pod_uid: str = ""          # the pod's metadata.uid (with dashes), "" outside Kubernetes

    @property
    def prefixed_id(self) -> str:
        """The id as Kubernetes writes it in containerStatuses[].containerID."""
        return f"{self.runtime}://{self.container_id}" if self.runtime else self.container_id


def parse(leaf: str, ancestors: tuple[str, ...] | list[str] = ()) -> ContainerRef | None:
    """The container (and pod) a task belongs to, from its cgroup names; None on the host."""
    return _parse(leaf, tuple(ancestors))


def split_ancestors(raw: str) -> tuple[str, ...]:
    """The NUL-separated ancestor names of an exec record, nearest first."""
    return tuple(n for n in raw.split("\0") if n and n != "/")


@lru_cache(maxsize=4096)
def _parse(leaf: str, ancestors: tuple[str, ...]) -> ContainerRef | None:
    names = (leaf, *ancestors)
    cid = runtime = ""
    pod_uid = ""
    for i, name in enumerate(names):
        if not cid:
            m = _SCOPE.match(name)
            if m:
                cid, runtime = m.group(2), _RUNTIME[m.group(1)]
                continue
            m = _COLON.match(name)
            if m:
                cid, runtime = m.group(2), _RUNTIME.get(m.group(1) or "", "")
                pm = _POD_SYSTEMD.match(name.split(":", 1)[0])
                if pm:
                    pod_uid = pm.group(1).replace("_", "-")
                continue
            if _BARE_ID.match(name):
                parent = names[i + 1] if i + 1 < len(names) else ""
                cid = name
                runtime = "docker" if parent == "docker" else ""
                continue
        m = _POD_SYSTEMD.match(name)
        if m:
            pod_uid = m.group(1).replace("_", "-")
            break
        m = _POD_CGROUPFS.match(name)
        if m:
            pod_uid = m.group(1)
            break
    if not cid and not pod_uid:
        return None
    return ContainerRef(cid, runtime, pod_uid)
