"""A collector process for the syscall-event benchmarks: the collector's own path (BPF ring buffer
→ ``RingBufferDrain`` → ``RecordQueue`` → ``Batcher`` → ``collector.service.produce_loop`` →
Kafka), fed by the bench-only kernel program ``bench/syscall_hook.c`` instead of the policy
engine's programs.

    python -m bench.hook_collector --hook openat --prefix /tmp/x/target   (config: TETRAPIPE_*)

Prints ``ready`` once attached and, after SIGTERM, one JSON line of counters.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import signal
import sys
from pathlib import Path

from bpf import records
from collector import loader
from collector.batcher import Batcher
from collector.drain import RecordQueue, RingBufferDrain
from collector.service import produce_loop
from tetrapipe import config as config_mod
from tetrapipe import metrics
from tetrapipe.service import run_async

SOURCE = Path(__file__).with_name("syscall_hook.c")


class HookCollector:
    """What ``produce_loop`` needs of a collector: ``queue``, ``drain``, ``batcher``."""

    def __init__(self, cfg: config_mod.Config, loop: asyncio.AbstractEventLoop, hook: str,
                 prefix: str, tgid: int, match_all: bool) -> None:
        loader.prepare(Path(cfg.cache_dir) / "kernel-headers")
        defines: dict[str, object] = {"TP_RINGBUF_PAGES": cfg.ringbuf_pages,
                                      f"BENCH_HOOK_{hook.upper()}": 1}
        if match_all:
            defines["BENCH_MATCH_ALL"] = 1
        self.bpf = loader.load_program("syscall_hook.c", defines, text=SOURCE.read_text())
        m = self.bpf["match"]
        val = m.Leaf()
        raw = prefix.encode()[:64]
        val.len = len(raw)
        val.tgid = tgid
        ctypes.memmove(ctypes.addressof(val) + type(val).prefix.offset, raw, len(raw))
        m[ctypes.c_int(0)] = val
        self.queue = RecordQueue(cfg.drain_queue_max, loop)
        self.drain = RingBufferDrain(self.bpf, self.queue)
        self.batcher = Batcher(cfg.node_name, records.layout_id())
        self.kernel_lost = 0

    def kernel_lost_total(self) -> int:
        return int(self.bpf["drops"].sum(0).value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.hook_collector")
    p.add_argument("--hook", choices=["openat", "write"], required=True)
    p.add_argument("--prefix", default="", help="openat: path prefix to match")
    p.add_argument("--tgid", type=int, default=0, help="write: the writer's process id to match")
    p.add_argument("--match-all", action="store_true", help="emit on every call, no filter")
    args = p.parse_args(argv)
    cfg = config_mod.load()

    async def run() -> None:
        stop = asyncio.Event()
        term = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, term.set)
        col = HookCollector(cfg, loop, args.hook, args.prefix, args.tgid, args.match_all)
        col.drain.start()
        task = asyncio.create_task(produce_loop(cfg, col, stop))
        while not metrics._ready["ready"] and not task.done():  # producer started
            await asyncio.sleep(0.05)
        if task.done():
            await task
        print("ready", flush=True)
        await term.wait()
        col.drain.stop()  # consumes what is left in the ring buffer
        col.queue.wake()
        stop.set()
        await task
        print(json.dumps({
            "kernel_lost": col.kernel_lost_total(),
            "queue_lost": col.queue.lost,
            "batches": col.batcher.seq,
        }), flush=True)

    run_async(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
