"""Enricher cost of process identity: events/s of the Kafka-free Enricher for exec+exit pairs
of host processes, of containers without the Kubernetes API, and of containers resolved against
a pod index of N pods; plus the state journal's bytes per entry. Prints figures.

    .venv/bin/python bench/identity_bench.py [pairs] [pods]
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent.parent / "tests")]

from fake_kube_api import make_pod  # noqa: E402
from identity_helpers import exec_record, exit_record  # noqa: E402

from enricher import state  # noqa: E402
from enricher.raw_decoder import Batch  # noqa: E402
from enricher.service import Enricher  # noqa: E402
from tetrapipe.config import Config  # noqa: E402


def run(label: str, cfg: Config, cgroups: list[tuple[str, tuple[str, ...]]], pairs: int,
        pods: list[dict] | None = None) -> None:
    e = Enricher(cfg)
    for p in pods or []:
        e.pods.upsert(p)
    recs = []
    for i in range(pairs):
        leaf, anc = cgroups[i % len(cgroups)]
        recs.append(exec_record(100000 + i, 1, "/usr/bin/true", ["x"], leaf, anc, ktime=10**12 + i))
        recs.append(exit_record(100000 + i, 1))
    batches = [Batch("bench", 0, "", "i", n, 0, 0, [], recs[n:n + 2000]) for n in range(0, len(recs), 2000)]
    t0 = time.perf_counter()
    n = 0
    for b in batches:
        out, _ = e.handle_batch(b)
        n += len(out)
    n += len(e.pending.drain())
    dt = time.perf_counter() - t0
    print(f"{label:44s} {n:7d} events {n / dt:9.0f} events/s")
    if e.journal is not None and e.builder.cache.by_exec_id:
        sample = next(iter(e.builder.cache.by_exec_id.values()))
        print(f"{'':44s} state entry {len(state.entry_to_json(sample))} bytes")


def main() -> None:
    pairs = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    npods = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    pods, cgs = [], []
    for i in range(npods):
        cid, uid = uuid.uuid4().hex * 2, str(uuid.uuid4())
        pods.append(make_pod(f"p{i}", uid, "bench", cid, labels={"app": f"a{i}"}, owner=("DaemonSet", "ds")))
        cgs.append((f"cri-containerd-{cid}.scope", (f"kubepods-pod{uid.replace('-', '_')}.slice",)))
    run("host processes, no k8s, no state", Config(state_topic=""), [("", ())], pairs)
    run("containers, no k8s, no state", Config(state_topic=""), cgs, pairs)
    run(f"containers, k8s index of {npods} pods, no state", Config(enable_k8s_api=True, state_topic=""),
        cgs, pairs, pods)
    run(f"containers, k8s index of {npods} pods, state journal", Config(enable_k8s_api=True), cgs, pairs, pods)


if __name__ == "__main__":
    main()
