"""Cost of policies scoped to pods (collector/policy/pod_scope.py).

    sudo .venv/bin/python bench/pod_scope_bench.py [--pods 100] [--writes 200000] [--rounds 5]

1. Write loop outside the scope: ``dd bs=1`` on the host (one read(2) and one write(2) per byte)
   with the seed policy loaded twice, unscoped and as a ``TracingPolicyNamespaced`` with a
   podSelector (the host process is out of scope: the hook returns after the cgroup lookup);
   both stay attached, rounds alternate which one is enabled (the scoped one checks the cgroup
   before its on switch). dd's CPU time per write, medians, as bench/policy_write_overhead.py.
2. Rescan: ``--pods`` pods of two containers each, their cgroup v2 directories created (as
   kubelet + containerd name them) under a temporary slice, and two scoped policies loaded; the
   time of one forced recompute (walk of the cgroup v2 tree + selection + map diff) and of one
   periodic rescan with nothing changed.
3. Window: a new container's cgroup is made (its pod already known); time from the mkdir until
   the policy's map holds its cgroup id, with the periodic rescan off (the cgroup_mkdir wake-up).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.policy_write_overhead import SEED, dd_ns_per_write  # noqa: E402
from collector import connect_deny, loader, procfs  # noqa: E402
from collector.drain import RecordQueue  # noqa: E402
from collector.policy.manager import PolicyManager  # noqa: E402
from collector.policy.pod_scope import PodScope  # noqa: E402
from tetrapipe.k8s.pods import PodIndex  # noqa: E402


def pod(name: str, uid: str, namespace: str, labels: dict[str, str], containers: list[tuple[str, str]]) -> dict:
    return {"metadata": {"name": name, "uid": uid, "namespace": namespace, "labels": labels},
            "spec": {"containers": [{"name": n, "image": "docker.io/library/busybox:1.36"} for n, _ in containers]},
            "status": {"containerStatuses": [{"name": n, "containerID": f"containerd://{cid}",
                                              "image": "docker.io/library/busybox:1.36"}
                                             for n, cid in containers]}}


def scoped(text: str, name: str) -> str:
    """The seed policy as a TracingPolicyNamespaced in namespace shop with a podSelector."""
    head, spec = text.split("spec:\n", 1)
    head = head.replace("kind: TracingPolicy", "kind: TracingPolicyNamespaced")
    head = head.replace('  name: "deny-tmp-forbidden-write"', f"  name: {name}\n  namespace: shop")
    return head + "spec:\n  podSelector:\n    matchLabels:\n      app: web\n" + spec


def median_ms(fn, n: int = 20) -> float:  # noqa: ANN001
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--writes", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (loads BPF programs, makes cgroups)")
    root = connect_deny.cgroup2_root()
    if root is None:
        sys.exit("no cgroup v2 hierarchy mounted")
    base = root / f"tetrapipe-bench-{uuid.uuid4().hex[:8]}.slice"
    base.mkdir()
    made: list[Path] = []
    index = PodIndex()
    for i in range(a.pods):
        uid = str(uuid.uuid4())
        ctrs = [("app", uuid.uuid4().hex * 2), ("sidecar", uuid.uuid4().hex * 2)]
        pod_dir = base / f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice"
        pod_dir.mkdir()
        made.append(pod_dir)
        for _, cid in ctrs:
            (pod_dir / f"cri-containerd-{cid}.scope").mkdir()
            made.append(pod_dir / f"cri-containerd-{cid}.scope")
        index.upsert(pod(f"p{i}", uid, "shop" if i % 2 else "other", {"app": "web" if i % 3 else "db"}, ctrs))
    loader.prepare()
    scope = PodScope(index)
    mgr = PolicyManager(RecordQueue(1_000_000, asyncio.new_event_loop()), procfs.host_namespaces(),
                        pod_scope=scope)
    target = os.path.join(tempfile.mkdtemp(prefix="tp-bench-"), "out")
    seed = SEED.read_text()
    try:
        print(f"1. dd bs=1 count={a.writes} on the host, medians of {a.rounds} alternating rounds")
        (plain,) = mgr.load_text(seed, "seed")
        (ns,) = mgr.load_text(scoped(seed, "seed-scoped"), "seed-scoped")
        # both programs stay attached; only which one is enabled changes ("off": neither)
        runs: dict[str, list[float]] = {"off": [], "unscoped": [], "scoped": []}
        for _ in range(a.rounds):
            for state in runs:
                mgr.set_enabled(plain.name, state == "unscoped")
                mgr.set_enabled(ns.name, state == "scoped")
                runs[state].append(dd_ns_per_write(target, a.writes))
        med = {k: statistics.median(v) for k, v in runs.items()}
        print(f"   both attached, both disabled                 {med['off']:7.0f} ns CPU/write")
        print(f"   unscoped seed enabled (no match: other file) {med['unscoped']:7.0f} ns CPU/write")
        print(f"   scoped seed enabled (host: out of scope)     {med['scoped']:7.0f} ns CPU/write")
        mgr.delete(plain.name)
        mgr.load_text(scoped(seed, "seed-scoped-2").replace("app: web", "app: db"), "seed-scoped-2")
        print(f"2. rescan with {a.pods} pods x 2 containers ({len(made)} cgroups made), "
              f"{len(scope.policies)} scoped policies, cgroup v2 root {root}")
        print(f"   selected: {', '.join(f'{n}={len(sp.cgroups)}' for n, sp in scope.policies.items())}")
        print(f"   forced recompute (walk + select + map diff): {median_ms(lambda: scope.refresh(force=True)):.2f} ms")
        print(f"   periodic check, nothing due:                  {median_ms(scope.refresh, 1000):.4f} ms")
        # 3. a new container's cgroup appears: time until the map holds it (mkdir wake-up, no tick)
        scope.rescan_s = 3600.0
        scope.refresh(force=True)
        table = scope.policies["seed-scoped"].table
        lat = []
        for i in range(20):
            uid, cid = str(uuid.uuid4()), uuid.uuid4().hex * 2
            index.upsert(pod(f"new{i}", uid, "shop", {"app": "web"}, [("app", cid)]))
            pod_dir = base / f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice"
            pod_dir.mkdir()
            made.append(pod_dir)
            t0 = time.perf_counter()
            (pod_dir / f"cri-containerd-{cid}.scope").mkdir()
            made.append(pod_dir / f"cri-containerd-{cid}.scope")
            key = ctypes.c_uint64(os.stat(pod_dir / f"cri-containerd-{cid}.scope").st_ino)
            while key not in table and time.perf_counter() - t0 < 5:
                time.sleep(0.0005)
            lat.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.05)
        print(f"3. new container cgroup → in its policy's map (cgroup_mkdir wake-up, periodic rescan off), "
              f"20 containers: median {statistics.median(lat):.1f} ms, max {max(lat):.1f} ms")
    finally:
        mgr.stop()
        for d in reversed(made):
            d.rmdir()
        base.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
