"""The collector service: load the kernel programs, report processes already running, drain the
ring buffer and produce raw batches to Kafka keyed by node name (acks=all). It never parses
records beyond what framing needs."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from prometheus_client import Counter

from bpf import records
from collector import capabilities, loader, procfs
from collector.batcher import Batcher
from collector.drain import RecordQueue, RingBufferDrain
from collector.policy import control as policy_control
from collector.policy.manager import PolicyManager
from tetrapipe import kafka, metrics
from tetrapipe.config import Config

log = logging.getLogger("tetrapipe.collector")

BATCHES = Counter("tetrapipe_raw_batches_produced", "Raw batches the broker acknowledged")
PRODUCE_ERRORS = Counter("tetrapipe_raw_produce_errors", "Raw batches the broker did not take")
PROCFS_RECORDS = Counter("tetrapipe_procfs_records", "Processes reported by the /proc bootstrap")


class Collector:
    """Kernel side of the collector: programs loaded, drain running, records in ``queue``."""

    def __init__(self, cfg: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        self.features = capabilities.probe()
        log.info("%s", self.features.summary())
        tree = loader.prepare(Path(cfg.cache_dir) / "kernel-headers")
        log.info("kernel include tree %s (%s)", tree.path, "generated" if tree.generated else "cached")
        self.bpf = loader.load_program("process.c", {"TP_RINGBUF_PAGES": cfg.ringbuf_pages})
        self.queue = RecordQueue(cfg.drain_queue_max, loop)
        self.drain = RingBufferDrain(self.bpf, self.queue)
        self.batcher = Batcher(cfg.node_name, records.layout_id(), host_ns=procfs.host_namespaces())
        self.policies = PolicyManager(self.queue, self.batcher.host_ns, self.features.kprobes)

    def start(self) -> None:
        self.drain.start()
        if self.cfg.procfs_bootstrap:
            n = 0
            for rec in procfs.walk():
                self.queue.put(rec)
                n += 1
            PROCFS_RECORDS.inc(n)
            self.queue.wake()
            log.info("reported %d running processes from /proc", n)
        # policies from the configuration, before the collector reports ready
        self.policies.load_configured(self.cfg.tracing_policy, self.cfg.tracing_policy_dir)

    def stop(self) -> None:
        self.policies.stop()
        self.drain.stop()


async def produce_loop(cfg: Config, col: Collector, stop: asyncio.Event) -> None:
    await kafka.ensure_topics(cfg, [cfg.raw_topic, cfg.deadletter_topic])
    producer = await kafka.start_producer(cfg)
    key = cfg.node_name.encode()
    inflight: set[asyncio.Future] = set()
    metrics.set_ready()
    log.info("collector ready: producing to %s", cfg.raw_topic)

    def done(fut: asyncio.Future) -> None:
        inflight.discard(fut)
        if fut.cancelled() or fut.exception() is not None:
            PRODUCE_ERRORS.inc()
            log.error("raw batch not produced: %s", None if fut.cancelled() else fut.exception())
        else:
            BATCHES.inc()

    try:
        while True:
            if stop.is_set() and not len(col.queue):
                break
            try:
                await asyncio.wait_for(col.queue.ready.wait(), 0.5)
            except TimeoutError:
                pass
            if len(col.queue) < cfg.batch_max_records and not stop.is_set():
                await asyncio.sleep(cfg.batch_max_ms / 1000 / 5)
            col.policies.tick()
            recs = col.queue.take(cfg.batch_max_records)
            lost = col.drain.kernel_lost_delta() + col.policies.kernel_lost_delta()
            if not recs and not lost:
                continue
            fut = await producer.send(cfg.raw_topic, col.batcher.frame(recs, lost), key=key)
            inflight.add(fut)
            fut.add_done_callback(done)
        if inflight:
            await asyncio.wait(inflight)
    finally:
        await producer.stop()


async def run(cfg: Config, stop: asyncio.Event) -> None:
    col = Collector(cfg, asyncio.get_running_loop())
    col.start()
    control = await policy_control.serve(cfg.control_socket, col.policies) if cfg.control_socket else None
    watch = (asyncio.create_task(policy_control.watch_dir(cfg.tracing_policy_dir, col.policies, stop))
             if cfg.tracing_policy_dir else None)
    try:
        await produce_loop(cfg, col, stop)
    finally:
        if watch is not None:
            watch.cancel()
        if control is not None:
            control.close()
        col.stop()
