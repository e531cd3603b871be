"""Identity building blocks without services: cgroup name parsing for every runtime and kubelet
driver, workload and probe rules on real Pod JSON, the pending queue's hold/order/bound rules,
and the process cache's restore from state (reference counts recomputed, replays idempotent)."""

from __future__ import annotations

from fake_kube_api import make_pod
from identity_helpers import exec_record, exit_record, fork_record, ids

from bpf import records
from enricher import state
from enricher.raw_decoder import Batch
from enricher.service import Enricher
from tetrapipe.cgroup_names import parse, split_ancestors
from tetrapipe.config import Config
from tetrapipe.k8s.pods import PodIndex, maybe_exec_probe, workload_of

CID = "4cb1e9a1ab98044e789c2d426909a6ee1731005cab0a1c5dea9941a5e7889c51"
UID = "5a1d6c0e-7b3f-4c1a-9d2e-0f8e7c6b5a49"
UID_ = UID.replace("-", "_")


def test_cgroup_formats() -> None:
    cases = {
        # containerd/CRI, kubelet systemd driver
        (f"cri-containerd-{CID}.scope", f"kubepods-besteffort-pod{UID_}.slice", "kubepods-besteffort.slice"):
            (CID, "containerd", UID),
        (f"cri-containerd-{CID}.scope", f"kubepods-pod{UID_}.slice", "kubepods.slice"): (CID, "containerd", UID),
        # kubelet cgroupfs driver
        (CID, f"pod{UID}", "burstable", "kubepods"): (CID, "", UID),
        (CID, f"pod{UID}", "kubepods"): (CID, "", UID),
        # CRI-O
        (f"crio-{CID}.scope", f"kubepods-burstable-pod{UID_}.slice"): (CID, "cri-o", UID),
        # Docker, systemd and cgroupfs
        (f"docker-{CID}.scope", "system.slice"): (CID, "docker", ""),
        (CID, "docker"): (CID, "docker", ""),
        (f"libpod-{CID}",): (CID, "podman", ""),
        (f"kubepods-burstable-pod{UID_}.slice:cri-containerd:{CID}",): (CID, "containerd", UID),
        (f":{CID}",): (CID, "", ""),
        # a container that made cgroups of its own below its cgroup
        ("init.scope", f"cri-containerd-{CID}.scope", f"kubepods-pod{UID_}.slice"): (CID, "containerd", UID),
    }
    for names, want in cases.items():
        ref = parse(names[0], names[1:])
        assert ref is not None and (ref.container_id, ref.runtime, ref.pod_uid) == want, names
    assert parse(f"crio-conmon-{CID}.scope", (f"kubepods-pod{UID_}.slice",)).container_id == ""
    for host in [("user@0.service", "user-0.slice", "user.slice"), ("init.scope",), ("",), ("abc", "docker")]:
        assert parse(host[0], host[1:]) is None, host
    assert parse(f"cri-containerd-{CID}.scope", ()).prefixed_id == f"containerd://{CID}"
    assert split_ancestors("a\0b\0/\0") == ("a", "b")


def test_workloads_and_probes() -> None:
    cid, uid = ids()
    rs = make_pod("web-5d9c8b7f6-q8w9e", uid, "n", cid, labels={"pod-template-hash": "5d9c8b7f6"},
                  owner=("ReplicaSet", "web-5d9c8b7f6"))
    assert workload_of(rs) == ("web", "Deployment")
    bare_rs = make_pod("rs-abc12", uid, "n", cid, owner=("ReplicaSet", "rs"))
    assert workload_of(bare_rs) == ("rs", "ReplicaSet")
    assert workload_of(make_pod("nightly-29000000-x", uid, "n", cid, owner=("Job", "nightly-29000000"))) == (
        "nightly", "CronJob")
    assert workload_of(make_pod("once-x", uid, "n", cid, owner=("Job", "once"))) == ("once", "Job")
    assert workload_of(make_pod("db-0", uid, "n", cid, owner=("StatefulSet", "db"))) == ("db", "StatefulSet")
    assert workload_of(make_pod("ds-x", uid, "n", cid, owner=("DaemonSet", "ds"))) == ("ds", "DaemonSet")
    assert workload_of(make_pod("lonely", uid, "n", cid)) == ("lonely", "Pod")
    spec = {"livenessProbe": {"exec": {"command": ["pg_isready", "-h", "local host"]}},
            "readinessProbe": {"exec": {"command": ["/bin/check"]}}}
    assert maybe_exec_probe(spec, "/usr/bin/pg_isready", '-h "local host"')
    assert not maybe_exec_probe(spec, "/usr/bin/pg_isready", "-h local host")
    assert maybe_exec_probe(spec, "/bin/check", "")
    assert not maybe_exec_probe(spec, "/usr/bin/check", "")  # an absolute probe path must match
    assert not maybe_exec_probe({}, "/bin/check", "")


def test_pod_index_container_states() -> None:
    cid, uid = ids()
    idx = PodIndex(annotations=True)
    pod = make_pod("p", uid, "n", cid, privileged=True, annotations={"a": "b"})
    ref = parse(f"cri-containerd-{cid}.scope", (f"kubepods-pod{uid.replace('-', '_')}.slice",))
    assert idx.pod_record(ref, "/bin/x", "", 3) == (None, False)
    starting = make_pod("p", uid, "n", cid)
    del starting["status"]["containerStatuses"]
    idx.upsert(starting)  # the pod is known, its container not yet: pod without container name
    rec, complete = idx.pod_record(ref, "/bin/x", "", 3)
    assert not complete and rec["name"] == "p" and rec["container"]["id"] == f"containerd://{cid}"
    idx.upsert(pod)
    rec, complete = idx.pod_record(ref, "/bin/x", "", 3)
    assert complete and rec["container"]["name"] == "app" and rec["container"]["pid"] == 3
    assert rec["container"]["security_context"] == {"privileged": True}
    assert rec["pod_annotations"] == {"a": "b"}
    idx.delete(uid)
    assert idx.pod_record(ref, "/bin/x", "", 3) == (None, False) and not idx.by_container


def _batch(*recs: bytes) -> Batch:
    return Batch("node-u", 0, "", "i", 0, 0, 0, [], list(recs))


def test_pending_holds_orders_and_bounds() -> None:
    cid, uid = ids()
    cg = (f"cri-containerd-{cid}.scope", (f"kubepods-pod{uid.replace('-', '_')}.slice",))
    e = Enricher(Config(enable_k8s_api=True, event_cache_hold_ms=1000, event_cache_size=3, state_topic=""))
    out, _ = e.handle_batch(_batch(exec_record(10, 1, "/bin/a", [], *cg), exec_record(11, 1, "/bin/host", []),
                                   exit_record(10, 1)), ("raw", 0, 7))
    assert [ev["process_exec"]["process"]["pid"] for ev in out] == [11]  # 10's exec and exit held
    assert e.pending.floor() == {("raw", 0): 7}
    assert e.poll_pending() == []
    e.pods.upsert(make_pod("p", uid, "node-u", cid))
    released = e.poll_pending()
    assert [next(iter(k for k in ev if k.startswith("process_"))) for ev in released] == [
        "process_exec", "process_exit"]
    assert all(ev[k]["process"]["pod"]["name"] == "p" for ev in released for k in ev if k.startswith("process_"))
    assert e.pending.floor() == {}
    # never found: released after the hold time, without pod; the bound pushes the oldest out
    cid2, uid2 = ids()
    cg2 = (f"cri-containerd-{cid2}.scope", (f"kubepods-pod{uid2.replace('-', '_')}.slice",))
    out, _ = e.handle_batch(_batch(*[exec_record(20 + i, 1, "/bin/b", [], *cg2) for i in range(4)]))
    assert len(out) == 1 and "pod" not in out[0]["process_exec"]["process"]  # evicted: over 3
    import time
    assert len(e.poll_pending(time.monotonic() + 2)) == 3


def test_restore_recomputes_references_and_replays_idempotently() -> None:
    cfg = Config(state_topic="s")
    first = Enricher(cfg)
    recs = [exec_record(30, 1, "/bin/sh", []), exec_record(31, 30, "/bin/x", []), fork_record(32, 30),
            exec_record(33, 31, "/bin/y", []), exit_record(33, 31)]
    first.handle_batch(_batch(*recs))
    saved = {eid: (state.entry_from_json(state.entry_to_json(en)) if en else None)
             for eid, (_, en) in first.journal.dirty.items()}
    second = Enricher(cfg)
    second.builder.cache.restore([en for en in saved.values() if en is not None])
    a, b = first.builder.cache, second.builder.cache
    assert set(a.by_exec_id) == set(b.by_exec_id)
    assert {k: v.refcnt for k, v in a.by_exec_id.items()} == {k: v.refcnt for k, v in b.by_exec_id.items()}
    assert set(a.by_pid) == set(b.by_pid)
    # the same records again (redelivered after the committed offset): no double references
    second.handle_batch(_batch(*recs[:3]))
    assert {k: v.refcnt for k, v in a.by_exec_id.items()} == {k: v.refcnt for k, v in b.by_exec_id.items()}
    ev, _ = second.handle_batch(_batch(exec_record(34, 32, "/bin/z", [])))
    assert ev[0]["process_exec"]["parent"]["pid"] == 32
    assert records.decode(exec_record(1, 0, "/x", [], "leaf", ("p1", "p2"))).cgroup_ancestors == b"p1\0p2"


def test_clone_forked_before_its_pod_was_known_gets_it() -> None:
    cid, uid = ids()
    cg = (f"cri-containerd-{cid}.scope", (f"kubepods-pod{uid.replace('-', '_')}.slice",))
    e = Enricher(Config(enable_k8s_api=True, event_cache_hold_ms=5000, state_topic=""))
    out, _ = e.handle_batch(_batch(exec_record(40, 1, "/bin/a", [], *cg), fork_record(41, 40)))
    assert out == []
    e.pods.upsert(make_pod("late", uid, "node-u", cid))
    assert len(e.poll_pending()) == 1
    out, _ = e.handle_batch(_batch(exit_record(41, 40)))
    assert out[0]["process_exit"]["process"]["pod"]["name"] == "late"
    assert out[0]["process_exit"]["process"]["flags"] == "clone"
