"""fluentd sink: events over Fluentd's Forward Protocol v1, at least once.

Each event goes out with tag ``<fluentd_tag_prefix>.<event type>`` (``tetrapipe.process_exec``),
record = the event in Tetragon's protojson form, and its own time as an EventTime (nanoseconds).
A batch becomes one PackedForward message per tag (CompressedPackedForward with
``fluentd_compress``), each carrying a ``chunk`` id; a batch counts as delivered only once fluentd
answered ``{"ack": <chunk id>}`` for every message of it.

fluent-logger's ``FluentSender`` gives the connection (TCP with TCP_NODELAY, or ``unix://``) and
the EventTime type; version 0.11 sends but never reads acks (it even reads and throws away what
the server sends), so ``AckingSender`` turns that off and adds sending a chunk and waiting for
its ack.

Batches are first written to a bounded disk buffer (exporters/fluentd_buffer.py) and sent from
there in order by one flusher task, so the exporter keeps reading Kafka while fluentd is down; the
Kafka position reported as committable only advances past a batch once fluentd acknowledged it.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import logging
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack
from fluent.sender import EventTime, FluentSender
from prometheus_client import Counter

from exporters import protojson
from exporters.fluentd_buffer import BufferFull, DiskBuffer
from exporters.worker import EXPORT_ERRORS, EXPORTED, EXPORTED_BYTES, LAST_EXPORT
from tetrapipe.config import Config

log = logging.getLogger("tetrapipe.export.fluentd")

CHUNKS_ACKED = Counter("tetrapipe_fluentd_chunks_acked", "Forward messages fluentd acknowledged")
SEND_ERRORS = Counter("tetrapipe_fluentd_send_errors", "Failed deliveries to fluentd (retried)", ["error"])


class AckTimeout(OSError):
    pass


class AckingSender(FluentSender):
    """FluentSender that sends whole forward-protocol messages with a chunk option and waits for
    fluentd's acks. Blocking: call it from one worker thread at a time."""

    def _check_recv_side(self) -> None:
        # the base class reads and discards whatever the server sent: that would eat the acks
        return

    def send_messages(self, messages: list[tuple[str, bytes, int]], compressed: bool) -> list[str]:
        """Send one PackedForward (or CompressedPackedForward) message per (tag, entries);
        returns the chunk ids to wait for."""
        self._reconnect()
        ids: list[str] = []
        out = bytearray()
        for tag, entries, count in messages:
            chunk = base64.b64encode(uuid.uuid4().bytes).decode()
            option: dict[str, Any] = {"chunk": chunk, "size": count}
            if compressed:
                entries = gzip.compress(entries, compresslevel=1)
                option["compressed"] = "gzip"
            out += msgpack.packb([tag, entries, option], use_bin_type=True)
            ids.append(chunk)
        assert self.socket is not None
        self.socket.sendall(out)
        return ids

    def wait_acks(self, ids: list[str], timeout: float) -> None:
        """Block until fluentd acknowledged every chunk id (or raise)."""
        pending = set(ids)
        sock = self.socket
        if sock is None:
            raise ConnectionError("not connected")
        unpacker = msgpack.Unpacker(raw=False)
        deadline = time.monotonic() + timeout
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AckTimeout(f"fluentd did not acknowledge {len(pending)} chunk(s) in {timeout}s")
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise ConnectionError("fluentd closed the connection before acknowledging")
            unpacker.feed(data)
            for msg in unpacker:
                if isinstance(msg, dict) and "ack" in msg:
                    pending.discard(msg["ack"])
        sock.settimeout(self.timeout)

    def drop_connection(self) -> None:
        self._close()


def pack_events(events: list[dict[str, Any]], prefix: str) -> tuple[list[tuple[str, bytes, int]], int]:
    """Events → [(tag, PackedForward entries)], grouped by tag in first-seen order; and bytes."""
    packer = msgpack.Packer(use_bin_type=True)
    streams: dict[str, list[bytes]] = {}
    for ev in events:
        tag = f"{prefix}.{protojson.event_type(ev)}" if prefix else protojson.event_type(ev)
        t = ev.get("time") or time.time_ns()
        streams.setdefault(tag, []).append(
            packer.pack([EventTime.from_unix_nano(int(t)), protojson.to_protojson(ev)]))
    messages = []
    total = 0
    for tag, parts in streams.items():
        entries = b"".join(parts)
        total += len(entries)
        messages.append((tag, entries, len(parts)))
    return messages, total


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``unix:///path`` → (host, port) as FluentSender wants them."""
    if address.startswith("unix://"):
        return address, 0
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"fluentd address {address!r}: expected host:port or unix:///path")
    return host.strip("[]"), int(port)


class FluentdSink:
    """Sink with deferred commits: ``put`` buffers a batch, ``committable`` says how far Kafka
    may be committed (only past batches fluentd acknowledged)."""

    name = "fluentd"

    def __init__(self, cfg: Config) -> None:
        self.host, self.port = parse_address(cfg.fluentd_address)
        self.prefix = cfg.fluentd_tag_prefix
        self.compress = cfg.fluentd_compress
        self.ack_timeout = float(cfg.fluentd_ack_timeout)
        buffer_dir = cfg.fluentd_buffer_dir or str(Path(cfg.state_dir) / "fluentd-buffer")
        self.buffer = DiskBuffer(Path(buffer_dir), cfg.fluentd_buffer_max_bytes)
        self.sender = AckingSender("", host=self.host, port=self.port, timeout=self.ack_timeout)
        self._acked: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._stopping = False
        self._flusher: asyncio.Task[None] | None = None
        self.connected = False

    async def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_loop(), name="fluentd-flusher")
        self._wake.set()

    async def put(self, events: list[dict[str, Any]], offsets: dict[str, int]) -> int:
        messages, size = pack_events(events, self.prefix)
        deadline = time.monotonic() + 5.0
        while True:
            try:
                self.buffer.append(messages, len(events), offsets)
                break
            except BufferFull:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                self._space.clear()
                try:
                    await asyncio.wait_for(self._space.wait(), left)
                except TimeoutError:
                    pass
        self._wake.set()
        return size

    async def write(self, events: list[dict[str, Any]]) -> int:
        """Plain-sink form (no Kafka positions): buffer and wait until fluentd acknowledged."""
        await self.put(events, {})
        while len(self.buffer) and not self._stopping:
            await asyncio.sleep(0.01)
        return 0

    def committable(self) -> dict[str, int]:
        if self.buffer.dropped_chunks:
            # a chunk of this run was lost from the disk buffer: committing past it would lose its
            # events for good; holding the offsets makes a restart read them from Kafka again
            return {}
        return dict(self._acked)

    async def _flush_loop(self) -> None:
        backoff = 0.2
        while not self._stopping:
            dropped = self.buffer.dropped_chunks
            chunk = self.buffer.oldest()
            if self.buffer.dropped_chunks > dropped:
                log.error("a disk-buffer chunk was unreadable: Kafka offsets are no longer committed; "
                          "restart the fluentd exporter to export its events again from Kafka")
            if chunk is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                if chunk.messages:
                    await asyncio.to_thread(self._deliver, chunk.messages)
            except (OSError, ValueError) as exc:
                if self._stopping:
                    return
                SEND_ERRORS.labels(error=type(exc).__name__).inc()
                EXPORT_ERRORS.labels(sink=self.name).inc()
                if self.connected:
                    log.warning("fluentd at %s: %s; buffering on disk and retrying", self._where(), exc)
                self.connected = False
                self.sender.drop_connection()
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if not self.connected:
                log.info("fluentd at %s acknowledges again", self._where())
            self.connected = True
            backoff = 0.2
            self.buffer.remove(chunk.seq)
            for tp, off in chunk.offsets.items():
                if off > self._acked.get(tp, -1):
                    self._acked[tp] = off
            CHUNKS_ACKED.inc(len(chunk.messages))
            EXPORTED.labels(sink=self.name).inc(chunk.events)
            EXPORTED_BYTES.labels(sink=self.name).inc(sum(len(e) for _, e, _ in chunk.messages))
            LAST_EXPORT.labels(sink=self.name).set(time.time())
            self._space.set()

    def _deliver(self, messages: list[tuple[str, bytes, int]]) -> None:
        ids = self.sender.send_messages(messages, self.compress)
        self.sender.wait_acks(ids, self.ack_timeout)

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def _where(self) -> str:
        return self.host if self.host.startswith("unix://") else f"{self.host}:{self.port}"

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        sock = self.sender.socket
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # unblocks a thread waiting for an ack
            except OSError:
                pass
        if self._flusher:
            try:
                await asyncio.wait_for(self._flusher, self.ack_timeout + 2)
            except (TimeoutError, asyncio.CancelledError):
                self._flusher.cancel()
        self.sender.drop_connection()
        log.info("fluentd sink stopped; %d chunks (%d events) stay buffered in %s", len(self.buffer),
                 self.buffer.events, self.buffer.dir)


__all__ = ["AckingSender", "FluentdSink", "pack_events", "parse_address"]
