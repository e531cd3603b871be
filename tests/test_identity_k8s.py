"""Pod metadata from a Kubernetes API served on loopback (tests/fake_kube_api.py): pod, labels,
workload, image and probe fields; a pod that appears 2 s after its first exec is still attached;
a pod that never appears is sent without pod after the hold time; a misbehaving or unreachable
API server is logged clearly and never stops events. Raw records go through the real broker and
the real enricher and JSON exporter (subprocesses)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_kube_api import FakeKubeAPI, make_pod
from harness import Pipeline, wait_until
from identity_helpers import RawProducer, exec_record, ids, one

from tetrapipe.broker import free_port


@pytest.fixture
def kube(pipeline: Pipeline, tmp_path: Path) -> Iterator[FakeKubeAPI]:
    api = FakeKubeAPI(pipeline.node_name).start()
    pipeline.settings.update(enable_k8s_api="true",
                             k8s_kubeconfig=str(api.write_kubeconfig(tmp_path / "kubeconfig")),
                             event_cache_hold_ms="4000")
    try:
        yield api
    finally:
        api.stop()


def _systemd_cg(cid: str, uid: str) -> tuple[str, tuple[str, ...]]:
    return f"cri-containerd-{cid}.scope", (f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice",
                                           "kubepods-besteffort.slice", "kubepods.slice")


def test_pod_fields_late_pod_and_missing_pod(pipeline: Pipeline, kube: FakeKubeAPI) -> None:
    cid_a, uid_a = ids()
    cid_b, uid_b = ids()
    cid_c, _ = ids()
    kube.put_pod(make_pod("web-7d4b9c8f5d-x2x9z", uid_a, pipeline.node_name, cid_a, namespace="shop",
                          labels={"app": "web", "pod-template-hash": "7d4b9c8f5d"},
                          owner=("ReplicaSet", "web-7d4b9c8f5d"), probe=["/bin/check", "--quick", "a b"],
                          image="docker.io/library/nginx:1.27"))
    other_cid, other_uid = ids()  # on another node: the field selector keeps it out
    kube.put_pod(make_pod("elsewhere", other_uid, "other-node", other_cid))
    pipeline.start("enricher", "enricher")
    pipeline.start("export-json", "export", "json")
    wait_until(lambda: "tetrapipe_k8s_synced 1.0" in pipeline.services["enricher"].metrics(),
               what="pod index synced")
    raw = RawProducer(pipeline)
    leaf, anc = _systemd_cg(cid_a, uid_a)
    raw.send(exec_record(3001, 1, "/bin/sleep", ["3600"], leaf, anc, nspid=1),
             exec_record(3002, 3001, "/bin/check", ["--quick", "a b"], leaf, anc, nspid=7),
             # pod B (cgroupfs driver) appears 2 s after its first exec; C (CRI-O) never does
             exec_record(3003, 1, "/usr/bin/backup", ["--all"], cid_b,
                         (f"pod{uid_b}", "besteffort", "kubepods"), nspid=1),
             exec_record(3004, 1, "/bin/true", [], f"crio-{cid_c}.scope",
                         (f"kubepods-pod{uid_b[::-1].replace('-', '_')}.slice", "kubepods.slice")),
             exec_record(3005, 1, "/usr/bin/hostly", []))
    t_exec = time.monotonic()
    wait_until(lambda: one(pipeline, "process_exec", 3005), what="host exec event")
    assert one(pipeline, "process_exec", 3003) is None  # held: its pod is not known yet
    time.sleep(max(0.0, 2.0 - (time.monotonic() - t_exec)))
    kube.put_pod(make_pod("backup-28912345-abcde", uid_b, pipeline.node_name, cid_b, namespace="ops",
                          owner=("Job", "backup-28912345"), labels={"job-name": "backup-28912345"}))

    ev_a = wait_until(lambda: one(pipeline, "process_exec", 3001), what="pod A exec")
    p = ev_a["process"]
    pod = p["pod"]
    assert (pod["namespace"], pod["name"], pod["uid"]) == ("shop", "web-7d4b9c8f5d-x2x9z", uid_a)
    assert pod["pod_labels"] == {"app": "web", "pod-template-hash": "7d4b9c8f5d"}
    assert (pod["workload"], pod["workload_kind"]) == ("web", "Deployment")
    c = pod["container"]
    assert c["id"] == f"containerd://{cid_a}" and c["name"] == "app"
    assert c["image"]["name"] == "docker.io/library/nginx:1.27"
    assert c["image"]["id"].startswith("docker.io/library/nginx@sha256:")
    assert c["start_time"] == "2026-11-28T09:00:03Z" and c["pid"] == 1
    assert not c.get("maybe_exec_probe")
    assert p["docker"] == cid_a[:31] and p["in_init_tree"] is True
    assert "pod_annotations" not in pod  # opt-in
    probe = one(pipeline, "process_exec", 3002)
    assert probe["process"]["pod"]["container"]["maybe_exec_probe"] is True
    assert probe["process"]["pod"]["container"]["pid"] == 7
    assert probe["parent"]["pod"]["name"] == "web-7d4b9c8f5d-x2x9z"

    late = wait_until(lambda: one(pipeline, "process_exec", 3003), timeout=10, what="late pod exec")
    assert late["process"]["pod"]["name"] == "backup-28912345-abcde"
    assert (late["process"]["pod"]["workload"], late["process"]["pod"]["workload_kind"]) == ("backup", "CronJob")
    assert late["process"]["pod"]["container"]["id"] == f"containerd://{cid_b}"

    never = wait_until(lambda: one(pipeline, "process_exec", 3004), timeout=10, what="unknown pod exec")
    assert "pod" not in never["process"] and never["process"]["docker"] == cid_c[:31]
    host = one(pipeline, "process_exec", 3005)
    assert "pod" not in host["process"] and "docker" not in host["process"]
    ev = next(e for e in pipeline.exported() if "process_exec" in e)
    assert ev["node_labels"]["topology.kubernetes.io/zone"] == "z1"
    enricher = pipeline.services["enricher"]
    assert enricher.metric("tetrapipe_event_cache_resolved_total", entry_type="pod_info") >= 1
    assert enricher.metric("tetrapipe_event_cache_fetch_failures_total", entry_type="pod_info") >= 1
    assert enricher.metric("tetrapipe_event_cache_inserts_total") >= 2
    assert all(f"spec.nodeName%3D{pipeline.node_name}" in r or "spec.nodeName=" + pipeline.node_name in r
               for r in kube.requests if r.startswith("/api/v1/pods"))
    names = {e["process_exec"]["process"].get("pod", {}).get("name") for e in pipeline.exported()
             if "process_exec" in e}
    assert "elsewhere" not in names


def test_misbehaving_api_never_stops_events(pipeline: Pipeline, kube: FakeKubeAPI) -> None:
    cid, uid = ids()
    kube.put_pod(make_pod("db-0", uid, pipeline.node_name, cid, owner=("StatefulSet", "db")))
    kube.mode = "unauthorized"
    pipeline.settings["k8s_retry_max_ms"] = "2000"
    enricher = pipeline.start("enricher", "enricher")
    pipeline.start("export-json", "export", "json")
    raw = RawProducer(pipeline)
    raw.send(exec_record(4001, 1, "/bin/during-401", []))
    wait_until(lambda: one(pipeline, "process_exec", 4001), what="event while the API says 401")
    wait_until(lambda: "401 Unauthorized" in enricher.log(), what="401 logged")
    kube.mode = "garbage"
    wait_until(lambda: "malformed answer from the Kubernetes API" in enricher.log(), what="garbage logged")
    raw.send(exec_record(4002, 1, "/bin/during-garbage", []))
    wait_until(lambda: one(pipeline, "process_exec", 4002), what="event while the API sends garbage")
    kube.mode = "close"
    wait_until(lambda: "closed the pod watch at once" in enricher.log(), timeout=30, what="closed watch logged")
    kube.mode = "ok"
    wait_until(lambda: "tetrapipe_k8s_synced 1.0" in enricher.metrics(), timeout=40, what="recovered")
    leaf = f"cri-containerd-{cid}.scope"
    raw.send(exec_record(4003, 1, "/bin/sh", [], leaf, (f"kubepods-pod{uid.replace('-', '_')}.slice",)))
    ev = wait_until(lambda: one(pipeline, "process_exec", 4003), what="pod event after recovery")
    assert ev["process"]["pod"]["workload"] == "db" and ev["process"]["pod"]["workload_kind"] == "StatefulSet"
    assert enricher.metric("tetrapipe_k8s_api_errors_total", reason="unauthorized") >= 1
    assert enricher.metric("tetrapipe_k8s_api_errors_total", reason="malformed") >= 1
    assert enricher.metric("tetrapipe_k8s_api_errors_total", reason="watch_closed") >= 1
    assert enricher.proc is not None and enricher.proc.poll() is None


def test_unreachable_api_is_logged_and_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from tetrapipe.k8s.pods import PodIndex
    from tetrapipe.k8s.watch import PodWatcher

    port = free_port()  # nothing listens there
    kc = FakeKubeAPI("n1")
    kc.port = port
    path = kc.write_kubeconfig(tmp_path / "kubeconfig")
    kc.server.server_close()
    watcher = PodWatcher(PodIndex(), "n1", str(path))

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(watcher.run(stop))
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.wait_for(task, 5)

    with caplog.at_level(logging.ERROR, logger="tetrapipe.enricher.k8s"):
        asyncio.run(run())
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) >= 2, msgs  # retried, with backoff (0.5 s, then 1 s)
    assert all(f"cannot reach the Kubernetes API http://127.0.0.1:{port}" in m for m in msgs), msgs
    assert "retrying in 0.5s" in msgs[0] and "retrying in 1.0s" in msgs[1]
