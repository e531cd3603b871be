"""Against a real Kubernetes API server (tests/kube_apiserver.py: apiextensions-apiserver on etcd,
built by scripts/setup-kube-apiserver.sh): the generated CRDs are accepted and established; the
policy library is stored under strict field validation and broken policies are refused by the
server's own validation; ``kubectl get`` columns come out of the server's table conversion; the
collector's Kubernetes source loads, replaces, reports (status subresource) and unloads policies
in the kernel as resources are created, changed and deleted, and catches up after the API server
restarted. This server serves no core/v1 (pods, Events): the Event writes fail and are counted,
the pod watch is tested against the stand-in (test_policy_pod_scope.py).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import bpf_unavailable_reason, skip_or_fail
from harness import LoopThread, wait_until
from kube_apiserver import TOKEN, KubeAPIServer, available

from collector import loader, procfs
from collector.drain import RecordQueue
from collector.policy import crd
from collector.policy.manager import PolicyManager
from collector.policy.sources import policyset

ROOT = Path(__file__).resolve().parent.parent
G = "/apis/cilium.io/v1alpha1"
NODE = f"real-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAPIServer]:
    why = available()
    if why:
        skip_or_fail(why)
    srv = KubeAPIServer(tmp_path_factory.mktemp("kapi"))
    try:
        srv.start()
        for c in crd.crds():
            code, body = srv.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", c)
            assert code == 201, body
        for c in crd.crds():
            wait_until(lambda c=c: any(
                cond["type"] == "Established" and cond["status"] == "True"
                for cond in (srv.request("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                                         + c["metadata"]["name"])[1].get("status") or {}).get("conditions", [])),
                timeout=30, what=f"{c['metadata']['name']} established")
        wait_until(lambda: srv.request("GET", f"{G}/tracingpolicies")[0] == 200, timeout=30, what="CRs served")
        yield srv
    finally:
        srv.stop()


def create(kube: KubeAPIServer, doc: dict[str, Any]) -> tuple[int, Any]:
    ns = doc["metadata"].get("namespace")
    plural = "tracingpoliciesnamespaced" if doc["kind"] == "TracingPolicyNamespaced" else "tracingpolicies"
    where = f"/namespaces/{ns}" if ns else ""
    return kube.request("POST", f"{G}{where}/{plural}?fieldValidation=Strict", doc)


def test_library_stored_and_broken_policies_refused_by_the_server(kube: KubeAPIServer) -> None:
    for path in sorted((ROOT / "examples/policies").glob("*.yaml")):
        for d in yaml.safe_load_all(path.read_text()):
            code, body = create(kube, d)
            assert code == 201, (path.name, body)
    seed = yaml.safe_load((ROOT / "tests/data/seed/deny-tmp-forbidden-write.yaml").read_text())
    code, _ = create(kube, seed)
    assert code == 201
    bad = yaml.safe_load((ROOT / "tests/data/seed/deny-tmp-forbidden-write.yaml").read_text())
    bad["metadata"]["name"] = "bad-operator"
    bad["spec"]["kprobes"][0]["selectors"][0]["matchArgs"][0]["operator"] = "Prefx"
    code, body = create(kube, bad)
    assert code == 422 and "Prefx" in body["message"] and "supported values" in body["message"]
    bad["spec"]["kprobes"][0]["selectors"][0]["matchArgs"][0]["operator"] = "Prefix"
    bad["spec"]["kprobes"][0]["cal"] = "x"
    code, body = create(kube, bad)
    assert code in (400, 422) and 'unknown field "spec.kprobes[0].cal"' in body["message"]
    del bad["spec"]["kprobes"][0]["cal"]
    bad["spec"]["kprobes"][0]["selectors"] *= 6
    code, body = create(kube, bad)
    assert code == 422 and "must have at most 5 items" in body["message"]
    # kubectl get's columns: the server's table conversion of the CRD's printer columns
    code, table = _table(kube, f"{G}/tracingpolicies")
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "State", "Loaded", "Refused", "Error", "Age"]
    assert any(r["cells"][0] == "deny-tmp-forbidden-write" for r in table["rows"])


def _table(kube: KubeAPIServer, path: str) -> tuple[int, Any]:
    req = urllib.request.Request(kube.url + path, headers={
        "Authorization": f"Bearer {TOKEN}",
        "Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
    with urllib.request.urlopen(req, timeout=10, context=kube.ctx) as r:
        return r.status, json.loads(r.read())


def SourceThread(mgr: PolicyManager, kubeconfig: Path) -> LoopThread:  # noqa: N802 - reads as the class it was
    from collector.policy.sources.k8s import K8sPolicySource

    return LoopThread(K8sPolicySource(mgr, NODE, str(kubeconfig), backoff_max_s=1.0, watch_timeout_s=5))


def kill_policy(name: str, target: Path, operator: str = "Equal") -> dict[str, Any]:
    return {"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": name},
            "spec": {"kprobes": [{"call": "sys_write", "syscall": True, "args": [{"index": 0, "type": "fd"}],
                                  "selectors": [{"matchArgs": [{"index": 0, "operator": operator,
                                                                "values": [str(target)]}],
                                                 "matchActions": [{"action": "Sigkill"}]}]}]}}


def write(path: Path) -> int:
    return subprocess.run(["/usr/bin/dash", "-c", f"echo x >> {path}"], capture_output=True, timeout=30).returncode


def test_the_collector_source_against_the_real_server(kube: KubeAPIServer, tmp_path: Path) -> None:
    reason = bpf_unavailable_reason()
    if reason:
        skip_or_fail(reason)
    # only this test's policies: the library of the test above is deleted first
    for plural in ("tracingpolicies",):
        kube.request("DELETE", f"{G}/{plural}")
    a, b = Path(f"/tmp/tp-real-{uuid.uuid4().hex[:6]}-a"), Path(f"/tmp/tp-real-{uuid.uuid4().hex[:6]}-b")
    loader.prepare()
    mgr = PolicyManager(RecordQueue(1_000_000, asyncio.new_event_loop()), procfs.host_namespaces())
    src = SourceThread(mgr, kube.kubeconfig(tmp_path / "kubeconfig")).start()

    def mine(name: str) -> dict[str, Any]:
        code, obj = kube.request("GET", f"{G}/tracingpolicies/{name}")
        return ((obj.get("status") or {}).get("nodes") or {}).get(NODE) or {} if code == 200 else {}

    try:
        assert create(kube, kill_policy("real-kill", a))[0] == 201
        wait_until(lambda: mine("real-kill").get("state") == "loaded", timeout=60, what="status written")
        assert write(a) == -9 and write(b) == 0
        code, obj = kube.request("GET", f"{G}/tracingpolicies/real-kill")
        assert obj["status"]["state"] == "Loaded" and obj["status"]["loadedNodes"] == 1
        obj["spec"] = kill_policy("real-kill", b)["spec"]                 # kubectl apply of a change
        assert kube.request("PUT", f"{G}/tracingpolicies/real-kill", obj)[0] == 200
        wait_until(lambda: mine("real-kill").get("observedGeneration") == 2, timeout=60, what="generation 2")
        assert write(a) == 0 and write(b) == -9
        assert create(kube, kill_policy("real-broken", a, "Prefix") | {
            "spec": {"kprobes": [{"call": "sys_write", "syscall": True, "args": [{"index": 0, "type": "fd"}],
                                  "selectors": [{"matchArgs": [{"index": 1, "operator": "Equal",
                                                                "values": ["x"]}]}]}]}})[0] == 201
        wait_until(lambda: mine("real-broken").get("state") == "error", timeout=60, what="refusal in status")
        assert "no argument with index 1" in mine("real-broken")["reason"]
        assert policyset.SOURCE_ERRORS.labels(source="kubernetes", reason="event")._value.get() >= 1

        kube.stop_apiserver()                                              # the API server goes away
        assert write(b) == -9
        kube.start()
        assert kube.request("DELETE", f"{G}/tracingpolicies/real-kill")[0] == 200
        wait_until(lambda: "real-kill" not in mgr.loaded, timeout=60, what="unloaded after the restart")
        assert write(b) == 0
    finally:
        src.stop()
        mgr.stop()
        for p in (a, b):
            p.unlink(missing_ok=True)
