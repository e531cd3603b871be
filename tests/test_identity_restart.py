"""Restart without amnesia: an enricher killed with SIGKILL mid-stream and started again replays
its process cache from the state topic, so events of processes started before the restart still
carry their parent and pod (raw records through the real broker, real enricher subprocesses)."""

from __future__ import annotations

import signal
from pathlib import Path

from fake_kube_api import FakeKubeAPI, make_pod
from harness import Pipeline, wait_until
from identity_helpers import RawProducer, events_of, exec_record, exit_record, fork_record, ids, one


def test_enricher_kill9_restart_keeps_parent_and_pod(pipeline: Pipeline, tmp_path: Path) -> None:
    kube = FakeKubeAPI(pipeline.node_name).start()
    try:
        cid, uid = ids()
        kube.put_pod(make_pod("api-0", uid, pipeline.node_name, cid, namespace="prod",
                              owner=("StatefulSet", "api"), labels={"app": "api"}))
        pipeline.settings.update(enable_k8s_api="true",
                                 k8s_kubeconfig=str(kube.write_kubeconfig(tmp_path / "kubeconfig")))
        first = pipeline.start("enricher", "enricher")
        pipeline.start("export-json", "export", "json")
        raw = RawProducer(pipeline)
        cg = (f"cri-containerd-{cid}.scope", (f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice",))
        raw.send(exec_record(5001, 1, "/bin/sh", ["-c", "serve"], *cg, nspid=1))
        raw.send(exec_record(5002, 5001, "/usr/bin/server", ["--port", "80"], *cg, nspid=2))
        parent = wait_until(lambda: one(pipeline, "process_exec", 5002), what="exec before the kill")
        assert parent["process"]["pod"]["name"] == "api-0"
        wait_until(lambda: first.metric("tetrapipe_state_writes_total", kind="entry") >= 2,
                   what="state written")

        first.signal(signal.SIGKILL)
        assert first.proc is not None and first.proc.wait(10) == -signal.SIGKILL
        second = pipeline.start("enricher-2", "enricher")
        # after the restart: a child of the server execs, a clone of it exits, the server exits
        raw.send(exec_record(5003, 5002, "/bin/ls", ["/data"], *cg, nspid=3),
                 fork_record(5004, 5002), exit_record(5004, 5002, 0),
                 exit_record(5002, 5001, 3))
        child = wait_until(lambda: one(pipeline, "process_exec", 5003), timeout=40, what="exec after restart")
        assert child["parent"]["exec_id"] == parent["process"]["exec_id"]
        assert child["process"]["parent_exec_id"] == parent["process"]["exec_id"]
        assert child["parent"]["pod"]["name"] == "api-0" and child["process"]["pod"]["workload"] == "api"
        clone_exit = wait_until(lambda: one(pipeline, "process_exit", 5004), what="clone exit after restart")
        assert clone_exit["process"]["pod"]["name"] == "api-0"  # a clone: its pod came from the state
        assert clone_exit["parent"]["exec_id"] == parent["process"]["exec_id"]
        srv_exit = wait_until(lambda: one(pipeline, "process_exit", 5002), what="server exit after restart")
        assert srv_exit["process"]["exec_id"] == parent["process"]["exec_id"]
        assert srv_exit["status"] == 3 and srv_exit["process"]["pod"]["namespace"] == "prod"
        assert srv_exit["parent"]["pid"] == 5001 and srv_exit["parent"]["binary"] == "/bin/sh"
        assert second.metric("tetrapipe_state_restored_entries_total") >= 2
        assert len(events_of(pipeline, "process_exec", 5003)) == 1
    finally:
        kube.stop()


def test_partition_moved_to_another_enricher_keeps_parent_and_pod(pipeline: Pipeline, tmp_path: Path) -> None:
    """Two raw partitions, one enricher, then a second joins the group: whichever gets a
    partition replays its state first, so children of earlier processes keep parent and pod."""
    kube = FakeKubeAPI(pipeline.node_name).start()
    try:
        cid, uid = ids()
        kube.put_pod(make_pod("worker-1", uid, pipeline.node_name, cid, owner=("DaemonSet", "worker")))
        pipeline.settings.update(enable_k8s_api="true", topic_partitions="2",
                                 k8s_kubeconfig=str(kube.write_kubeconfig(tmp_path / "kubeconfig")))
        a = pipeline.start("enricher-a", "enricher")
        pipeline.start("export-json", "export", "json")
        cg = (f"cri-containerd-{cid}.scope", (f"kubepods-pod{uid.replace('-', '_')}.slice",))
        # one batch sequence per partition, as two collectors (nodes) would send
        raws = {p: RawProducer(pipeline) for p in (0, 1)}
        for p in (0, 1):
            raws[p].send(exec_record(6000 + 10 * p, 1, "/bin/sh", [], *cg, nspid=1), partition=p)
        for p in (0, 1):
            wait_until(lambda p=p: one(pipeline, "process_exec", 6000 + 10 * p), what=f"exec on partition {p}")
        b = pipeline.start("enricher-b", "enricher")
        wait_until(lambda: b.metric("tetrapipe_state_restored_entries_total") >= 1, timeout=40,
                   what="second enricher replayed the state of its partition")
        for p in (0, 1):
            raws[p].send(exec_record(6001 + 10 * p, 6000 + 10 * p, "/bin/ls", [], *cg, nspid=2), partition=p)
        for p in (0, 1):
            child = wait_until(lambda p=p: one(pipeline, "process_exec", 6001 + 10 * p), timeout=30,
                               what=f"child exec on partition {p}")
            parent = one(pipeline, "process_exec", 6000 + 10 * p)
            assert child["parent"]["exec_id"] == parent["process"]["exec_id"]
            assert child["parent"]["pod"]["name"] == "worker-1" and child["process"]["pod"]["workload"] == "worker"
        assert a.proc is not None and a.proc.poll() is None
    finally:
        kube.stop()
