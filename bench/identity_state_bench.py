"""State topic cost on the embedded broker: journal N process-cache entries (as an enricher
does, flushed per 2000), then replay them as a restarting enricher would. Prints figures.

    .venv/bin/python bench/identity_state_bench.py [entries]
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent.parent / "tests")]

from identity_helpers import exec_record  # noqa: E402

from enricher import state  # noqa: E402
from enricher.raw_decoder import Batch  # noqa: E402
from enricher.service import Enricher  # noqa: E402
from tetrapipe import kafka  # noqa: E402
from tetrapipe.broker import EmbeddedBroker  # noqa: E402
from tetrapipe.config import Config  # noqa: E402


async def main(bootstrap: str, n: int) -> None:
    cfg = Config(kafka=bootstrap, state_topic=f"bench-{uuid.uuid4().hex[:6]}.state")
    await state.ensure_state_topic(cfg)
    producer = await kafka.start_producer(cfg)
    e = Enricher(cfg)
    cid = uuid.uuid4().hex * 2
    cg = (f"cri-containerd-{cid}.scope", ("kubepods-pod0000_1111.slice",))
    t0 = time.perf_counter()
    for start in range(0, n, 2000):
        recs = [exec_record(10_000 + i, 1, "/usr/bin/app", ["--flag"], *cg, ktime=10**12 + i)
                for i in range(start, min(n, start + 2000))]
        e.handle_batch(Batch("bench", 0, "", "i", start, 0, 0, [], recs))
        futs = await e.journal.flush(producer)
        await asyncio.gather(*futs)
    dt = time.perf_counter() - t0
    print(f"journal: {n} entries written and acked in {dt:.2f}s ({n / dt:.0f}/s)")
    t0 = time.perf_counter()
    entries = await state.replay(cfg, [0], producer)
    dt = time.perf_counter() - t0
    print(f"replay:  {len(entries)} entries read back in {dt:.2f}s ({len(entries) / dt:.0f}/s)")
    await producer.stop()


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    with EmbeddedBroker() as b:
        asyncio.run(main(b.bootstrap, n))
