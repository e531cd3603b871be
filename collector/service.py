"""The collector service: load the kernel programs, report processes already running, drain the
ring buffer and produce raw batches to Kafka keyed by node name (acks=all). It never parses
records beyond what framing needs."""

from __future__ import annotations

import asyncio
import logging

from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from prometheus_client import Counter, Gauge

from bpf import records
from collector import capabilities, kernel_features, process_program, procfs
from collector.batcher import Batcher
from collector.drain import COALESCE_MS, RecordQueue, RingBufferDrain
from collector.policy import control as policy_control
from collector.policy.manager import PolicyManager
from collector.policy.pod_scope import PodScope
from collector.process_program import CannotStart  # noqa: F401 - the command catches service.CannotStart
from collector.spool import Outbox, Spool
from tetrapipe import kafka, metrics
from tetrapipe.config import Config
from tetrapipe.k8s.pods import PodIndex

log = logging.getLogger("tetrapipe.collector")

BATCHES = Counter("tetrapipe_raw_batches_produced", "Raw batches the broker acknowledged")
PRODUCE_ERRORS = Counter("tetrapipe_raw_produce_errors", "Raw batches the broker did not take")
PROCFS_RECORDS = Counter("tetrapipe_procfs_records", "Processes reported by the /proc bootstrap")
TOO_LARGE = Counter("tetrapipe_raw_batches_too_large", "Raw batches (one record each) over the broker's "
                    "message size: dead-lettered, cut to fit, with their original size")
PRODUCER_REPLACED = Counter("tetrapipe_raw_producer_replaced", "Kafka producers the collector replaced "
                            "after they delivered nothing for kafka_stuck_exit_s")
BATCH_BYTES_LIMIT = Gauge("tetrapipe_raw_batch_max_bytes", "Raw batches are cut below this size")
BATCH_OVERHEAD = 4096  # RawBatch header fields and the Kafka record around it, generously


class Limits:
    """The raw batch size bound: kafka_max_message_bytes, lowered to the raw topic's
    max.message.bytes once the broker has told it."""

    def __init__(self, max_bytes: int) -> None:
        self.set(max_bytes)

    def set(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.records_bytes = max(1024, max_bytes - BATCH_OVERHEAD)
        BATCH_BYTES_LIMIT.set(max_bytes)


EX_CONFIG = 78  # sysexits.h: the collector cannot start on this host; restarting will not help


class Collector:
    """Kernel side of the collector: programs loaded, drain running, records in ``queue``."""

    def __init__(self, cfg: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        # the base program compiles in a thread (collector/process_program.py), begun by the
        # collector command before its imports; the probes below run beside that compile
        pending = process_program.take(cfg)
        self.features = capabilities.probe()
        log.info("%s", self.features.summary())
        # kprobes, trampolines, BPF LSM, fmod_ret, override: each hook's mechanism is chosen from these
        self.kernel_features = kernel_features.probe()
        log.info("%s", self.kernel_features.summary())
        loaded = pending.result()   # CannotStart: no include tree, or process.c refused
        self.bpf = loaded.bpf
        self.sensors_on: list[str] = loaded.sensors_on
        self.queue = RecordQueue(cfg.drain_queue_max, loop)
        # policy, loader and connect-deny drains order their records after this one's (exec first)
        self.drain = RingBufferDrain(self.bpf, self.queue, coalesce_ms=COALESCE_MS)
        self.batcher = Batcher(cfg.node_name, records.layout_id(), host_ns=procfs.host_namespaces())
        # enable_k8s_api: this node's pods, for policies scoped to pods (podSelector, containerSelector)
        self.pods = PodIndex() if cfg.enable_k8s_api else None
        self.policies = PolicyManager(self.queue, self.batcher.host_ns, self.kernel_features,
                                      pod_scope=PodScope(self.pods) if self.pods is not None else None)
        self.policies.loader_builtin = "loader" in self.sensors_on  # else spec.loader loads it alone
        self.policies.order_after = self.drain
        self.policies.uncaught.enabled = cfg.count_uncaught       # TETRAPIPE_COUNT_UNCAUGHT too
        self.policies.inode_root = cfg.policy_inode_root

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
    """Frame records into batches as fast as the drain fills the queue, whatever Kafka does;
    a separate sender delivers them in order from the outbox (memory head, on-disk spool)."""
    outbox = Outbox(Spool(cfg.state_path / "spool", cfg.spool_max_mb * 1024 * 1024),
                    cfg.spool_memory_batches)
    limits = Limits(cfg.kafka_max_message_bytes)
    sender = asyncio.create_task(send_loop(cfg, outbox, limits))
    drain_stopped = False
    try:
        while True:
            if stop.is_set() and not drain_stopped:
                col.stop()  # flush what the kernel still holds into the queue, then frame it
                drain_stopped = True
            if stop.is_set() and not len(col.queue):
                break
            if sender.done():
                sender.result()  # a sender bug must not go unnoticed
            try:
                await asyncio.wait_for(col.queue.ready.wait(), 0.5)
            except TimeoutError:
                pass
            await _fill(cfg, col, stop)
            col.policies.tick()
            parts, count = col.queue.take_framed(cfg.batch_max_records, limits.records_bytes)
            lost = (col.drain.kernel_lost_delta() + col.policies.kernel_lost_delta()
                    + col.queue.lost_delta())
            if not count and not lost:
                continue
            outbox.put(col.batcher.frame_framed(parts, count, lost), count)
        # SIGTERM: deliver what waits, for a bounded time; the rest stays spooled for next start
        try:
            await asyncio.wait_for(_drained(outbox, sender), cfg.spool_flush_timeout_s)
        except TimeoutError:
            log.warning("broker did not take everything within %ss: %d batches stay spooled",
                        cfg.spool_flush_timeout_s, len(outbox))
    finally:
        sender.cancel()
        try:
            await sender
        except (asyncio.CancelledError, Exception):
            pass
        outbox.spill()


async def _fill(cfg: Config, col: Collector, stop: asyncio.Event) -> None:
    """Records are waiting: let the batch fill up to ``batch_max_records``, for at most
    ``batch_max_ms`` (looked at every fifth of it). Each raw batch costs every stage downstream a
    round (a produce, a fetch, a commit, state writes), whatever its size: at an exec loop's
    ~3k records/s, batches cut every 10 ms cost more CPU per event in the enricher, the
    exporters and the broker than the events themselves (bench/overhead.py)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + cfg.batch_max_ms / 1000
    while len(col.queue) < cfg.batch_max_records and not stop.is_set():
        left = end - loop.time()
        if left <= 0:
            return
        await asyncio.sleep(min(left, cfg.batch_max_ms / 1000 / 5))


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def _drained(outbox: Outbox, sender: asyncio.Task[None]) -> None:
    while len(outbox) and not sender.done():
        await asyncio.sleep(0.05)


async def send_loop(cfg: Config, outbox: Outbox, limits: Limits | None = None) -> None:
    """Deliver the outbox head, one batch at a time (so a retry never reorders a node's stream),
    acks=all. While the broker does not answer, everything waits on disk and the head is retried
    with backoff; a batch whose delivery is uncertain is sent again (the sequence audit drops
    the duplicate)."""
    key = cfg.node_name.encode()
    backoff = 0.2
    producer = None
    while producer is None:
        try:
            await asyncio.wait_for(kafka.ensure_topics(cfg, [cfg.raw_topic, cfg.deadletter_topic]),
                                   cfg.spool_send_timeout_s * 2)
            producer = await asyncio.wait_for(kafka.start_producer(cfg, linger_ms=0),
                                              cfg.spool_send_timeout_s * 2)
            if limits is not None:
                limits.set(await asyncio.wait_for(kafka.max_message_bytes(cfg, cfg.raw_topic),
                                                  cfg.spool_send_timeout_s * 2))
        except (KafkaError, OSError, TimeoutError) as exc:
            outbox.degraded = True
            outbox.spill()
            log.warning("broker unreachable (%s); spooling, retrying in %.1fs", _why(exc), backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
    metrics.set_ready()
    log.info("collector ready: producing to %s", cfg.raw_topic)
    loop = asyncio.get_running_loop()
    last_ok = loop.time()
    try:
        while True:
            item = outbox.head()
            if item is None:
                await outbox.changed.wait()
                last_ok = loop.time()  # idle is not stuck
                continue
            if loop.time() - last_ok > cfg.kafka_stuck_exit_s:
                producer = await _replace_producer(cfg, producer, loop.time() - last_ok)
                last_ok = loop.time()
            try:
                await asyncio.wait_for(producer.send_and_wait(cfg.raw_topic, item.data, key=key),
                                       cfg.spool_send_timeout_s)
            except MessageSizeTooLargeError as exc:
                # batches are cut below the limit: only a record too large alone gets here
                PRODUCE_ERRORS.inc()
                TOO_LARGE.inc()
                # a refused batch leaves an idempotent producer's sequence broken (measured:
                # the next batch fails too): a fresh producer for the dead letter and what follows
                producer = await _replace_producer(cfg, producer, 0.0, why="after a refused batch")
                await _dead_letter_too_large(cfg, producer, item.data, exc,
                                             limits.max_bytes if limits else cfg.kafka_max_message_bytes)
                outbox.done(item)
                continue
            except (KafkaError, TimeoutError) as exc:
                PRODUCE_ERRORS.inc()
                if not outbox.degraded:
                    log.warning("broker does not answer (%s): spooling to disk", _why(exc))
                outbox.degraded = True
                outbox.spill()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            outbox.done(item)
            last_ok = loop.time()
            BATCHES.inc()
            if outbox.degraded:
                log.info("broker answers again; %d batches left to replay", len(outbox))
                outbox.degraded = False
            backoff = 0.2
    finally:
        try:
            await asyncio.wait_for(producer.stop(), 2)
        except (TimeoutError, KafkaError):
            pass


async def _replace_producer(cfg: Config, old: object, stuck_s: float, why: str = "") -> object:
    """A producer that delivered nothing for kafka_stuck_exit_s while the broker was retried
    (seen after every broker of a cluster restarted) is dropped for a fresh one; the collector
    itself never exits for it (its kernel programs would stop observing). The spool keeps the
    batches meanwhile; one sent twice is dropped by the sequence audit."""
    log.warning("%s: replacing the Kafka producer", why or f"raw batches not acknowledged for {stuck_s:.0f}s")
    PRODUCER_REPLACED.inc()
    try:
        await asyncio.wait_for(old.stop(), 2)  # type: ignore[attr-defined]
    except (TimeoutError, KafkaError, OSError):
        pass
    backoff = 0.5
    while True:
        try:
            return await asyncio.wait_for(kafka.start_producer(cfg, linger_ms=0), cfg.spool_send_timeout_s * 2)
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("new producer not started (%s); retrying in %.1fs", _why(exc), backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


async def _dead_letter_too_large(cfg: Config, producer: object, data: bytes, exc: BaseException,
                                 limit: int) -> None:
    """A raw batch the broker refuses for its size goes to the dead-letter topic cut to fit,
    with its original size: its sequence number shows as a gap in the enricher's audit."""
    keep = max(0, limit - BATCH_OVERHEAD)
    why = (f"raw batch of {len(data)} bytes over the broker's message size ({exc}); "
           f"first {min(keep, len(data))} bytes kept")
    log.error("%s: dead-lettered", why)
    await kafka.send_dead_letter(producer, cfg, "collector", data[:keep], why,  # type: ignore[arg-type]
                                 key=cfg.node_name.encode(), source=cfg.raw_topic)


async def run(cfg: Config, stop: asyncio.Event) -> None:
    col = Collector(cfg, asyncio.get_running_loop())
    col.start()
    control = await policy_control.serve(cfg.control_socket, col.policies) if cfg.control_socket else None
    watch = (asyncio.create_task(policy_control.watch_dir(cfg.tracing_policy_dir, col.policies, stop))
             if cfg.tracing_policy_dir else None)
    pod_watch = None
    if col.pods is not None:
        from tetrapipe.k8s.watch import PodWatcher  # 1.6 s of imports: only when enabled

        pod_watch = asyncio.create_task(PodWatcher(col.pods, cfg.node_name, cfg.k8s_kubeconfig,
                                                   backoff_max_s=cfg.k8s_retry_max_ms / 1000).run(stop),
                                        name="k8s-pod-watch")
    sources = policy_sources(cfg, col, stop)
    try:
        await produce_loop(cfg, col, stop)
    finally:
        for task in sources:
            task.cancel()
        if pod_watch is not None:
            pod_watch.cancel()
        if watch is not None:
            watch.cancel()
        if control is not None:
            control.close()
        col.stop()


def policy_sources(cfg: Config, col: Collector, stop: asyncio.Event) -> list[asyncio.Task]:
    """Policy sources beyond files and the control socket (collector/policy/sources/)."""
    tasks = []
    if cfg.enable_tracing_policy_crd:
        if not cfg.enable_k8s_api:
            log.error("enable_tracing_policy_crd needs enable_k8s_api: TracingPolicy resources are not watched")
        else:
            from collector.policy.sources.k8s import K8sPolicySource

            src = K8sPolicySource(col.policies, cfg.node_name, cfg.k8s_kubeconfig,
                                  backoff_max_s=cfg.k8s_retry_max_ms / 1000)
            tasks.append(asyncio.create_task(src.run(stop), name="k8s-tracingpolicies"))
    if cfg.opa_url:
        from collector.policy.sources.opa import OpaPolicySource

        opa = OpaPolicySource(col.policies, cfg.opa_url, cfg.opa_policy_path,
                              cfg.opa_poll_interval_ms / 1000, token=cfg.opa_token)
        tasks.append(asyncio.create_task(opa.run(stop), name="opa-policies"))
    return tasks
