"""End-to-end throughput through a three-node Apache Kafka cluster (3 replicas,
min.insync.replicas 2, acks=all, idempotent producers) next to the embedded Tansu, in the same
run: synthetic raw batches are produced to the raw topic at once, one enricher and the JSON
exporter (real processes) take them to the export file; events/s from the first exported event
to the last, per round, rounds interleaved.

    sudo .venv/bin/python -m bench.kafka_vs_tansu [--events 20000] [--rounds 3] [--json out.json]

Needs scripts/setup-kafka.sh. Timing lives here, never in the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from harness import Pipeline  # noqa: E402
from kafka_cluster import KafkaCluster  # noqa: E402

from bench.synth import ProcessStream  # noqa: E402
from bpf import records  # noqa: E402
from collector.batcher import Batcher  # noqa: E402
from tetrapipe import kafka  # noqa: E402
from tetrapipe.broker import EmbeddedBroker  # noqa: E402
from tetrapipe.config import Config  # noqa: E402

BATCH = 500  # records per raw batch: well below Kafka's 1 MiB message limit


def frames(node: str, n_events: int) -> tuple[list[bytes], int]:
    """Raw batches of n_events // 2 processes, and the events they make (an exec and an exit
    each, and the stream's first parent: as bench/e2e.py counts them)."""
    n_procs = n_events // 2
    recs = list(ProcessStream().processes(n_procs))
    b = Batcher(node, records.layout_id())
    return [b.frame(recs[i:i + BATCH]) for i in range(0, len(recs), BATCH)], 2 * n_procs + 1


async def produce(cfg: Config, topic: str, batches: list[bytes], key: bytes) -> None:
    await kafka.ensure_topics(cfg, [topic])
    p = await kafka.start_producer(cfg)
    try:
        await asyncio.gather(*[await p.send(topic, f, key=key) for f in batches])
    finally:
        await p.stop()


def one_round(bootstrap: str, tmp: Path, n_events: int) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    pipe = Pipeline(bootstrap, tmp, settings={"export_file_max_size_mb": "0", "state_topic": ""})
    try:
        pipe.start("enricher", "enricher")
        exp = pipe.start("export-json", "export", "json")
        batches, n_recs = frames(pipe.node_name, n_events)
        t0 = time.monotonic()
        asyncio.run(produce(Config(kafka=bootstrap), pipe.base["raw_topic"], batches, pipe.node_name.encode()))
        produced = time.monotonic() - t0
        first = last = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            n = exp.metric("tetrapipe_events_exported_total", sink="json")
            now = time.monotonic()
            if n > 0 and first is None:
                first = now
            if n >= n_recs:
                last = now
                break
            time.sleep(0.05)
        return {"events": n_recs, "produce_s": round(produced, 2),
                "events_per_s": round(n_recs / (last - first), 1) if first and last and last > first else None,
                "complete": last is not None}
    finally:
        pipe.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="tetrapipe-kvt-"))
    res: dict[str, list[dict[str, Any]]] = {"tansu": [], "kafka3": []}
    with EmbeddedBroker(log_path=tmp / "tansu.log") as tansu, KafkaCluster(tmp / "kafka", size=3) as k3:
        for r in range(args.rounds):
            for name, bootstrap in (("tansu", tansu.bootstrap), ("kafka3", k3.bootstrap)):
                out = one_round(bootstrap, tmp / f"{name}{r}", args.events)
                res[name].append(out)
                print(f"round {r} {name:<6} {out}", flush=True)
    summary = {name: {"median_events_per_s": statistics.median([x["events_per_s"] or 0 for x in rs]),
                      "rounds": rs} for name, rs in res.items()}
    for name, s in summary.items():
        print(f"{name:<6} median {s['median_events_per_s']:.0f} events/s over {args.rounds} rounds")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
