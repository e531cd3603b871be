"""The pods of this node, indexed by pod UID and container id, and the Tetragon ``Pod`` record
(schemas/event.avsc) built for one process: namespace, name, uid, labels, annotations (opt-in),
workload and workload_kind from the controller owner, and the container (id, name, image,
start time, pid inside the container, maybe_exec_probe, privileged).

Pods arrive as the API server's JSON (camelCase), from the list and the watch of kubernetes.py.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tetrapipe.cgroup_names import ContainerRef

_CRONJOB_JOB = re.compile(r"^(.+)-(\d{8,})$")  # CronJob jobs are "<cronjob>-<scheduled minute>"
PROBES = ("livenessProbe", "readinessProbe", "startupProbe")


def rfc3339_ns(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()) * 1_000_000_000
    except ValueError:
        return None


def workload_of(pod: dict[str, Any]) -> tuple[str, str]:
    """(workload, workload_kind) from the controller owner, as Tetragon (via Cilium) derives it:
    a ReplicaSet named "<deployment>-<pod-template-hash>" is its Deployment, a Job named
    "<cronjob>-<digits>" its CronJob; a pod without a controller is its own workload."""
    meta = pod.get("metadata") or {}
    owners = meta.get("ownerReferences") or []
    ref = next((o for o in owners if o.get("controller")), owners[0] if owners else None)
    if not ref:
        return meta.get("name", ""), "Pod"
    kind, name = ref.get("kind", ""), ref.get("name", "")
    if kind == "ReplicaSet":
        h = (meta.get("labels") or {}).get("pod-template-hash", "")
        if h and name.endswith("-" + h):
            return name[: -len(h) - 1], "Deployment"
    if kind == "Job":
        m = _CRONJOB_JOB.match(name)
        if m:
            return m.group(1), "CronJob"
    return name, kind


def quote_args(args: list[str]) -> str:
    """Arguments joined as the Process.arguments string is (quoted where they hold a space)."""
    return " ".join(f'"{a}"' if (" " in a or a == "") else a for a in args)


def maybe_exec_probe(spec: dict[str, Any] | None, binary: str, arguments: str) -> bool:
    """True when binary + arguments are an exec liveness/readiness/startup probe of the container:
    the probe's command[0] is the binary (a bare name matches the binary's basename, as the
    kubelet's runtime resolves it on $PATH) and command[1:] are the arguments."""
    if not spec:
        return False
    for key in PROBES:
        cmd = ((spec.get(key) or {}).get("exec") or {}).get("command") or []
        if not cmd:
            continue
        first = cmd[0]
        same_binary = binary == first if first.startswith("/") else os.path.basename(binary) == first
        if same_binary and arguments == quote_args(cmd[1:]):
            return True
    return False


@dataclass
class PodEntry:
    pod: dict[str, Any]
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)      # container name → spec
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)   # bare container id → status


class PodIndex:
    """Pods of this node by UID, and their containers by bare id (init and ephemeral too)."""

    def __init__(self, annotations: bool = False) -> None:
        self.annotations = annotations
        self.by_uid: dict[str, PodEntry] = {}
        self.by_container: dict[str, str] = {}   # bare container id → pod uid
        self.synced = False                      # a full list has been applied
        self.version = 0                         # bumped on every change

    def __len__(self) -> int:
        return len(self.by_uid)

    def replace_all(self, pods: list[dict[str, Any]]) -> None:
        """A fresh list: pods missing from it are gone."""
        self.by_uid.clear()
        self.by_container.clear()
        for pod in pods:
            self.upsert(pod)
        self.synced = True

    def upsert(self, pod: dict[str, Any]) -> None:
        uid = (pod.get("metadata") or {}).get("uid", "")
        if not uid:
            return
        self.delete(uid)
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        e = PodEntry(pod)
        for key in ("containers", "initContainers", "ephemeralContainers"):
            for c in spec.get(key) or []:
                e.specs[c.get("name", "")] = c
        for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
            for cs in status.get(key) or []:
                cid = (cs.get("containerID") or "").split("://")[-1]
                if cid:
                    e.statuses[cid] = cs
                    self.by_container[cid] = uid
        self.by_uid[uid] = e
        self.version += 1

    def delete(self, uid: str) -> None:
        old = self.by_uid.pop(uid, None)
        if old is not None:
            for cid in old.statuses:
                if self.by_container.get(cid) == uid:
                    del self.by_container[cid]
            self.version += 1

    def find(self, ref: ContainerRef) -> tuple[PodEntry | None, dict[str, Any] | None]:
        """(pod, container status) of a container; the status is None when the pod is known but
        does not list the container (yet)."""
        uid = self.by_container.get(ref.container_id) if ref.container_id else None
        if uid is None:
            uid = ref.pod_uid
        e = self.by_uid.get(uid) if uid else None
        if e is None:
            return None, None
        return e, e.statuses.get(ref.container_id)

    def pod_record(self, ref: ContainerRef, binary: str, arguments: str, nspid: int) -> tuple[
            dict[str, Any] | None, bool]:
        """(Tetragon Pod record or None, complete): complete = pod and container both found."""
        e, status = self.find(ref)
        if e is None:
            return None, False
        meta = e.pod.get("metadata") or {}
        workload, kind = workload_of(e.pod)
        container: dict[str, Any] = {"id": ref.prefixed_id, "name": "", "maybe_exec_probe": False}
        if status is not None:
            name = status.get("name", "")
            spec = e.specs.get(name)
            container["id"] = status.get("containerID") or ref.prefixed_id
            container["name"] = name
            container["image"] = {"id": status.get("imageID", ""), "name": status.get("image", "")}
            started = rfc3339_ns(((status.get("state") or {}).get("running") or {}).get("startedAt"))
            if started is not None:
                container["start_time"] = started
            container["maybe_exec_probe"] = maybe_exec_probe(spec, binary, arguments)
            privileged = ((spec or {}).get("securityContext") or {}).get("privileged")
            if privileged:
                container["security_context"] = {"privileged": True}
        if nspid:
            container["pid"] = nspid
        pod: dict[str, Any] = {
            "namespace": meta.get("namespace", ""),
            "name": meta.get("name", ""),
            "uid": meta.get("uid", ""),
            "container": container,
            "pod_labels": dict(meta.get("labels") or {}),
            "workload": workload,
            "workload_kind": kind,
        }
        if self.annotations:
            pod["pod_annotations"] = dict(meta.get("annotations") or {})
        return pod, status is not None
