"""TracingPolicy custom resources from the Kubernetes API reach the kernel: what ``kubectl apply``
/ ``kubectl delete`` do to a resource makes a Sigkill appear, change and disappear; a broken
resource is refused with its status (per node: state, error with path, line and reason) and a
Warning Event while the others act; the API server going away and coming back (and a watch whose
resourceVersion expired: 410 Gone) changes nothing that is loaded and catches up afterwards.

Real parts: the collector's PolicyManager loading real bcc programs in this process, the
Kubernetes source (collector/policy/sources/k8s.py) with the kubernetes_asyncio client, real
processes killed by the kernel. The API server is the loopback stand-in tests/fake_kube_api.py
(+ fake_kube_crds.py): see README "Kubernetes" for why (and test_kube_apiserver_real.py for the
real one where scripts/setup-kube-apiserver.sh could build it).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import bpf_unavailable_reason, skip_or_fail
from fake_kube_api import FakeKubeAPI
from harness import LoopThread, wait_until

from collector import loader, procfs
from collector.drain import RecordQueue
from collector.policy.manager import PolicyManager
from collector.policy.sources import policyset
from collector.policy.sources.k8s import K8sPolicySource

DASH = "/usr/bin/dash"
NODE = f"node-{uuid.uuid4().hex[:8]}"


def write(path: Path) -> int:
    """Return code of a shell appending to ``path``: -9 when a policy killed it."""
    return subprocess.run([DASH, "-c", f"echo hello >> {path}"], capture_output=True, timeout=30).returncode


def kill_policy(name: str, target: Path, kind: str = "TracingPolicy", namespace: str = "",
                operator: str = "Equal") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": "cilium.io/v1alpha1", "kind": kind, "metadata": meta, "spec": {"kprobes": [{
        "call": "sys_write", "syscall": True, "args": [{"index": 0, "type": "fd"}],
        "selectors": [{"matchArgs": [{"index": 0, "operator": operator, "values": [str(target)]}],
                       "matchActions": [{"action": "Sigkill"}]}]}]}}


def SourceThread(mgr: PolicyManager, kubeconfig: Path) -> LoopThread:  # noqa: N802 - reads as the class it was
    """The Kubernetes policy source on its own event loop thread, as in the collector."""
    return LoopThread(K8sPolicySource(mgr, NODE, str(kubeconfig), backoff_max_s=1.0, watch_timeout_s=2))


@pytest.fixture(scope="module")
def k8s(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    reason = bpf_unavailable_reason()
    if reason:
        skip_or_fail(reason)
    tmp = tmp_path_factory.mktemp("k8ssrc")
    files = Path(f"/tmp/tp-k8s-{uuid.uuid4().hex[:8]}")
    files.mkdir()
    api = FakeKubeAPI(NODE).start()
    loader.prepare()
    mgr = PolicyManager(RecordQueue(1_000_000, asyncio.new_event_loop()), procfs.host_namespaces())
    src = SourceThread(mgr, api.write_kubeconfig(tmp / "kubeconfig")).start()
    try:
        yield {"api": api, "crds": api.crds, "mgr": mgr, "files": files, "src": src}
    finally:
        src.stop()
        mgr.stop()
        api.stop()
        shutil.rmtree(files, ignore_errors=True)


def node_status(crds: Any, kind: str, name: str, namespace: str = "") -> dict[str, Any]:
    obj = crds.get(kind, name, namespace) or {}
    return ((obj.get("status") or {}).get("nodes") or {}).get(NODE) or {}


def wait_status(crds: Any, kind: str, name: str, pred: Any, what: str, namespace: str = "") -> dict[str, Any]:
    wait_until(lambda: pred(node_status(crds, kind, name, namespace)), timeout=60, what=what)
    return crds.get(kind, name, namespace)["status"]


def test_create_update_delete_reach_the_kernel(k8s: dict[str, Any]) -> None:
    crds, mgr, files = k8s["crds"], k8s["mgr"], k8s["files"]
    a, b = files / "a.txt", files / "b.txt"
    assert write(a) == 0
    crds.apply(kill_policy("kill-write-a", a))                         # kubectl apply (create)
    st = wait_status(crds, "TracingPolicy", "kill-write-a", lambda s: s.get("state") == "loaded", "loaded")
    mine = st["nodes"][NODE]
    assert mine["mode"] == "enforce" and "sys_write via" in mine["mechanism"]
    assert mine["observedGeneration"] == 1
    assert (st["state"], st["loadedNodes"], st["refusedNodes"]) == ("Loaded", 1, 0)
    assert write(a) == -9 and write(b) == 0
    puts = sum(1 for r in k8s["api"].requests if r.startswith("PUT "))
    time.sleep(3)   # our own status write comes back as MODIFIED: it must not write again
    assert sum(1 for r in k8s["api"].requests if r.startswith("PUT ")) == puts

    crds.apply(kill_policy("kill-write-a", b))                         # kubectl apply (change)
    wait_status(crds, "TracingPolicy", "kill-write-a", lambda s: s.get("observedGeneration") == 2, "gen 2")
    assert write(a) == 0 and write(b) == -9
    assert list(mgr.loaded) == ["kill-write-a"]

    crds.delete("TracingPolicy", "kill-write-a")                       # kubectl delete
    wait_until(lambda: "kill-write-a" not in mgr.loaded, timeout=30, what="unloaded after delete")
    assert write(a) == 0 and write(b) == 0
    loaded_events = [e for e in crds.events if e["involvedObject"]["name"] == "kill-write-a"]
    assert [e["reason"] for e in loaded_events] == ["PolicyLoaded", "PolicyLoaded"]
    assert loaded_events[0]["metadata"]["namespace"] == "default"       # cluster-scoped object
    assert loaded_events[0]["involvedObject"]["kind"] == "TracingPolicy"
    assert loaded_events[0]["source"] == {"component": "tetrapipe-collector", "host": NODE}


def test_broken_resource_status_and_event_while_others_act(k8s: dict[str, Any]) -> None:
    crds, mgr, files = k8s["crds"], k8s["mgr"], k8s["files"]
    good, other = files / "good.txt", files / "other.txt"
    crds.apply(kill_policy("good", good))
    crds.apply(kill_policy("broken", other, "TracingPolicyNamespaced", "shop", operator="Prefx"))
    st = wait_status(crds, "TracingPolicyNamespaced", "broken", lambda s: s.get("state") == "error",
                     "refusal in status", namespace="shop")
    mine = st["nodes"][NODE]
    assert mine["path"] == "spec.kprobes[0].selectors[0].matchArgs[0].operator"
    assert mine["reason"] == 'unknown operator "Prefx"'
    assert mine["line"] > 1 and f":{mine['line']}: spec.kprobes[0]" in mine["error"]
    assert (st["state"], st["refusedNodes"]) == ("Refused", 1)
    assert st["error"].startswith(f"{NODE}: tracingpolicynamespaced/shop/broken:")
    wait_status(crds, "TracingPolicy", "good", lambda s: s.get("state") == "loaded", "good loaded")
    assert write(good) == -9                                          # the others act
    wait_until(lambda: any(e["reason"] == "PolicyRefused" for e in crds.events), what="Warning event")
    ev = next(e for e in crds.events if e["reason"] == "PolicyRefused")
    assert ev["type"] == "Warning" and ev["metadata"]["namespace"] == "shop"
    assert 'matchArgs[0].operator: unknown operator "Prefx"' in ev["message"] and NODE in ev["message"]

    # a change that breaks the loaded policy: refused, its previous version keeps acting
    crds.apply(kill_policy("good", good, operator="Prefx"))
    wait_status(crds, "TracingPolicy", "good", lambda s: s.get("state") == "error_previous_acting",
                "previous version acting")
    assert write(good) == -9
    crds.apply(kill_policy("good", good))                              # fixed again
    wait_status(crds, "TracingPolicy", "good", lambda s: s.get("state") == "loaded", "fixed")
    crds.delete("TracingPolicy", "good")
    crds.delete("TracingPolicyNamespaced", "broken", "shop")
    wait_until(lambda: not mgr.loaded and not k8s["src"].source.set.entries, what="all gone")


def test_api_server_away_and_back_and_expired_watch(k8s: dict[str, Any]) -> None:
    api, crds, mgr, files = k8s["api"], k8s["crds"], k8s["mgr"], k8s["files"]
    stays, goes, new = files / "stays.txt", files / "goes.txt", files / "new.txt"
    crds.apply(kill_policy("stays", stays))
    crds.apply(kill_policy("goes", goes))
    wait_until(lambda: {"stays", "goes"} <= set(mgr.loaded), timeout=60, what="both loaded")
    up = policyset.SOURCE_UP.labels(source="kubernetes")
    wait_until(lambda: up._value.get() == 1, what="source up")

    # a watch resumed from an expired resourceVersion: 410 Gone → listed again, nothing lost
    lists_before = sum(1 for r in api.requests if r.startswith("/apis/") and "watch=" not in r)
    expired = policyset.SOURCE_ERRORS.labels(source="kubernetes", reason="expired")
    n_expired = expired._value.get()
    with api.cond:
        api.rv += 5          # other objects changed meanwhile...
    crds.compact()           # ...and etcd compacted them away
    wait_until(lambda: expired._value.get() > n_expired, timeout=30, what="410 Gone seen")
    wait_until(lambda: sum(1 for r in api.requests if r.startswith("/apis/") and "watch=" not in r)
               > lists_before, what="listed again after 410")
    assert {"stays", "goes"} <= set(mgr.loaded)

    api.go_away()
    wait_until(lambda: up._value.get() == 0, timeout=30, what="source down")
    assert write(stays) == -9 and write(goes) == -9                   # still enforcing
    crds.delete("TracingPolicy", "goes")                               # changed while we were away
    crds.apply(kill_policy("new", new))
    api.come_back()
    wait_until(lambda: "new" in mgr.loaded and "goes" not in mgr.loaded, timeout=60, what="caught up")
    wait_until(lambda: up._value.get() == 1, what="source up again")
    assert write(stays) == -9 and write(new) == -9 and write(goes) == 0
    for name in ("stays", "new"):
        crds.delete("TracingPolicy", name)
    wait_until(lambda: not mgr.loaded, timeout=30, what="all unloaded")
    assert os.path.exists(stays)
