"""Process → container and pod fields: ``docker`` (the container id's first 31 characters, as
Tetragon exports them; see the seed example) and ``pod`` (when the pod index knows the pod)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from tetrapipe.cgroup_names import ContainerRef, parse, split_ancestors
from tetrapipe.k8s.pods import PodIndex

DOCKER_ID_LENGTH = 31


class ProcessMetadata:
    """The EventBuilder's ``pod_resolver``. ``index`` is None when the Kubernetes API is off:
    then only ``docker`` is filled and nothing is ever pending."""

    def __init__(self, index: PodIndex | None = None) -> None:
        self.index = index

    @staticmethod
    @lru_cache(maxsize=4096)  # asked at every exec, twice (fields, pending), for few distinct cgroups
    def container_of(cgroup_name: str, cgroup_ancestors: str) -> ContainerRef | None:
        return parse(cgroup_name, split_ancestors(cgroup_ancestors))

    def fields(self, entry: Any) -> tuple[dict[str, Any], bool]:
        """(Process fields, pending): pending = in a pod (says the cgroup) that the index lacks,
        or whose container it does not list yet."""
        ref = self.container_of(entry.cgroup_name, entry.cgroup_ancestors)
        if ref is None:
            return {}, False
        out: dict[str, Any] = {}
        if ref.container_id:
            out["docker"] = ref.container_id[:DOCKER_ID_LENGTH]
        if self.index is None:
            return out, False
        p = entry.process
        pod, complete = self.index.pod_record(ref, p.get("binary", ""), p.get("arguments", ""),
                                              entry.nspid)
        if pod is not None:
            out["pod"] = pod
        return out, bool(ref.pod_uid) and not complete

    def __call__(self, entry: Any) -> dict[str, Any]:
        return self.fields(entry)[0]

    def pending(self, entry: Any) -> bool:
        return self.fields(entry)[1]
