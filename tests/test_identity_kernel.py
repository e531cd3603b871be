"""Containers in miniature, with the real kernel programs: cgroup v2 directories named as kubelet
and the runtimes name them, processes moved into them and started in new pid, mount, uts and net
namespaces (``unshare``); the events' container id, pod, namespace inums, is_host flags and caps
are checked against /proc. A process started before the collector (procfs bootstrap) has the
``procFS`` flag, its container, and a parent chain that leads to pid 1."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import skip_or_fail
from fake_kube_api import FakeKubeAPI, make_pod
from harness import Pipeline, wait_until
from identity_helpers import ids, one

from bpf import records
from collector.procfs import cgroup2_root, host_namespaces
from enricher.event_builder import cap_names

NS = ("uts", "ipc", "mnt", "pid", "pid_for_children", "net", "cgroup", "user", "time", "time_for_children")
NEW_NS = {"uts", "mnt", "pid", "pid_for_children", "net"}


class Cgroups:
    """Cgroup v2 directories of one test under a unique top directory, removed afterwards."""

    def __init__(self) -> None:
        self.root = cgroup2_root()
        self.made: list[Path] = []

    def make(self, rel: str) -> Path:
        path = self.root
        for part in rel.split("/"):
            path = path / part
            if not path.exists():
                path.mkdir()
                self.made.append(path)
        return path

    def cleanup(self) -> None:
        for path in reversed(self.made):
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)


@pytest.fixture
def cgroups(bpf_ok: None) -> Iterator[Cgroups]:
    if not shutil.which("unshare"):
        skip_or_fail("unshare (util-linux) is not installed")
    cg = Cgroups()
    try:
        yield cg
    finally:
        cg.cleanup()


def _start_in(cg: Path, argv: list[str]) -> subprocess.Popen[bytes]:
    """A shell moves itself into cg, then execs argv."""
    script = f'echo $$ > "{cg}/cgroup.procs" && exec "$@"'
    return subprocess.Popen(["/bin/sh", "-c", script, "sh", *argv])


def _child_of(pid: int, timeout: float = 5.0) -> int:
    def find() -> int | None:
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return None
        return int(kids[0]) if kids else None
    return wait_until(find, timeout, what=f"child of {pid}")


def _truth(pid: int) -> dict:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {
        "ns": {n: os.stat(f"/proc/{pid}/ns/{n}").st_ino for n in NS},
        # the host's namespaces as the collector ships them (/proc/1/ns may be unreadable here)
        "host_ns": dict(zip(records.NS_NAMES, host_namespaces(), strict=True)),
        "cap_eff": int(status["CapEff"].strip(), 16),
        "cap_prm": int(status["CapPrm"].strip(), 16),
        "nspid": int(status["NSpid"].split()[-1]),
    }


@pytest.mark.kernel
def test_containers_in_miniature(pipeline: Pipeline, cgroups: Cgroups, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    cid1, uid1 = ids()   # containerd + kubelet systemd driver, pod known to the API
    cid2, uid2 = ids()   # kubelet cgroupfs driver, pod known to the API
    cid3, _ = ids()      # docker, cgroupfs
    cid4, _ = ids()      # CRI-O, no pod
    kube = FakeKubeAPI(pipeline.node_name).start()
    try:
        kube.put_pod(make_pod("frontend-6f7c9d8b4-abcde", uid1, pipeline.node_name, cid1, namespace="web",
                              labels={"app": "frontend", "pod-template-hash": "6f7c9d8b4"},
                              owner=("ReplicaSet", "frontend-6f7c9d8b4"), probe=["/bin/true", "probe"]))
        kube.put_pod(make_pod("agent-x7k2p", uid2, pipeline.node_name, cid2, namespace="kube-system",
                              owner=("DaemonSet", "agent"), runtime="containerd"))
        pipeline.settings.update(enable_k8s_api="true", event_cache_hold_ms="3000",
                                 k8s_kubeconfig=str(kube.write_kubeconfig(tmp_path / "kubeconfig")))
        cg1 = cgroups.make(f"tp{tag}.slice/kubepods-besteffort-pod{uid1.replace('-', '_')}.slice/"
                           f"cri-containerd-{cid1}.scope")
        cg2 = cgroups.make(f"tp{tag}/kubepods/besteffort/pod{uid2}/{cid2}")
        cg3 = cgroups.make(f"tp{tag}-d/docker/{cid3}")
        cg4 = cgroups.make(f"tp{tag}-c.slice/crio-{cid4}.scope")

        early = _start_in(cg1, ["/bin/sleep", "30"])  # running before the collector: procfs
        time.sleep(0.2)
        pipeline.settings.update(enable_ancestors="base", enable_process_cred="true", enable_process_ns="true")
        pipeline.start_all()
        wait_until(lambda: one(pipeline, "process_exec", early.pid), what="procfs exec of the early sleeper")

        unshare = ["unshare", "--pid", "--fork", "--mount", "--uts", "--net"]
        procs = {
            "c1": _start_in(cg1, [*unshare, "/bin/sleep", "2"]),
            "c2": _start_in(cg2, [*unshare, "/bin/sleep", "2"]),
            "c3": _start_in(cg3, [*unshare, "/bin/sleep", "2"]),
            "c4": _start_in(cg4, [*unshare, "/bin/sleep", "2"]),
        }
        inner = {k: _child_of(p.pid) for k, p in procs.items()}
        wait_until(lambda: all(Path(f"/proc/{pid}/exe").resolve().name == "sleep" for pid in inner.values()),
                   what="sleepers exec'd")
        truth = {k: _truth(pid) for k, pid in inner.items()}
        probe = _start_in(cg1, ["/bin/true", "probe"])
        for p in [*procs.values(), probe]:
            assert p.wait(20) == 0

        evs = {k: wait_until(lambda pid=pid: one(pipeline, "process_exec", pid), timeout=20,
                             what=f"exec of {k}") for k, pid in inner.items()}
        for k, ev in evs.items():
            p, t = ev["process"], truth[k]
            assert p["binary"] == "/usr/bin/sleep" or p["binary"].endswith("/sleep")
            for name in NS:
                got = p["ns"][name]
                assert got["inum"] == t["ns"][name], (k, name)
                assert bool(got.get("is_host")) == (t["ns"][name] == t["host_ns"][name]), (k, name)
                assert bool(got.get("is_host")) == (name not in NEW_NS), (k, name)
            assert sorted(p["cap"]["effective"]) == sorted(cap_names(t["cap_eff"]))
            assert sorted(p["cap"]["permitted"]) == sorted(cap_names(t["cap_prm"]))
            assert t["nspid"] == 1 and p["in_init_tree"] is True
        assert evs["c1"]["process"]["docker"] == cid1[:31]
        assert evs["c2"]["process"]["docker"] == cid2[:31]
        assert evs["c3"]["process"]["docker"] == cid3[:31]
        assert evs["c4"]["process"]["docker"] == cid4[:31]
        pod1 = evs["c1"]["process"]["pod"]
        assert (pod1["uid"], pod1["namespace"], pod1["workload"], pod1["workload_kind"]) == (
            uid1, "web", "frontend", "Deployment")
        assert pod1["container"]["id"] == f"containerd://{cid1}" and pod1["container"]["pid"] == 1
        pod2 = evs["c2"]["process"]["pod"]
        assert (pod2["uid"], pod2["workload"], pod2["workload_kind"]) == (uid2, "agent", "DaemonSet")
        assert "pod" not in evs["c3"]["process"] and "pod" not in evs["c4"]["process"]
        pe = wait_until(lambda: one(pipeline, "process_exec", probe.pid), what="probe exec")
        assert pe["process"]["pod"]["container"]["maybe_exec_probe"] is True

        # procfs bootstrap: flag, container, and a parent chain up to pid 1
        ee = one(pipeline, "process_exec", early.pid)
        assert "procFS" in ee["process"]["flags"].split()
        assert ee["process"]["docker"] == cid1[:31] and ee["process"]["pod"]["uid"] == uid1
        by_id = {e["process_exec"]["process"]["exec_id"]: e["process_exec"]["process"]
                 for e in pipeline.exported() if "process_exec" in e}
        chain, cur = [], ee["process"]
        while cur.get("parent_exec_id"):
            cur = by_id[cur["parent_exec_id"]]
            chain.append(cur["pid"])
        assert chain[0] == os.getpid() and chain[-1] == 1, chain
        assert [a["pid"] for a in ee.get("ancestors", [])] == chain[1:]
    finally:
        early_pid = locals().get("early")
        if early_pid is not None:
            early_pid.kill()
            early_pid.wait()
        kube.stop()
