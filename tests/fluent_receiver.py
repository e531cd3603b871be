"""A receiver of Fluentd's Forward Protocol v1 on loopback, for tests.

Implements the four event modes of the spec (github.com/fluent/fluentd/wiki/Forward-Protocol-
Specification-v1): Message ``[tag, time, record, option?]``, Forward ``[tag, [[time, record]...],
option?]``, PackedForward ``[tag, <MessagePackEventStream as bin/str>, option?]`` and
CompressedPackedForward (PackedForward with ``compressed: "gzip"``), and chunk/ack: an option with
``chunk`` is answered with ``{"ack": chunk}`` once the whole message was read. EventTime (ext type
0: big-endian uint32 seconds + uint32 nanoseconds) and integer times are both accepted.

It can be stopped and started again on the same port (a fluentd outage), and told to swallow
acks (a fluentd that received but never confirmed).
"""

from __future__ import annotations

import gzip
import io
import socket
import socketserver
import struct
import threading
from dataclasses import dataclass
from typing import Any

import msgpack


@dataclass
class Received:
    tag: str
    time_ns: int
    record: dict[str, Any]
    mode: str
    chunk: str | None


def _ext_hook(code: int, data: bytes) -> Any:
    if code == 0 and len(data) == 8:
        sec, nsec = struct.unpack(">II", data)
        return _EventTime(sec * 1_000_000_000 + nsec)
    return msgpack.ExtType(code, data)


class _EventTime(int):
    """An EventTime's value in ns (int subclass, so we can tell it from integer seconds)."""


def _time_ns(t: Any) -> int:
    if isinstance(t, _EventTime):
        return int(t)
    if isinstance(t, int):
        return t * 1_000_000_000
    if isinstance(t, float):
        return int(t * 1e9)
    raise ValueError(f"bad event time {t!r}")


class ProtocolError(ValueError):
    pass


def decode_message(msg: Any) -> tuple[str, list[tuple[int, dict[str, Any]]], dict[str, Any]]:
    """One forward-protocol message → (mode, [(time_ns, record)], option); tag via msg[0]."""
    if not isinstance(msg, list) or len(msg) < 2 or not isinstance(msg[0], str):
        raise ProtocolError(f"not a forward-protocol message: {str(msg)[:80]}")
    second = msg[1]
    if isinstance(second, list):  # Forward
        option = msg[2] if len(msg) > 2 and isinstance(msg[2], dict) else {}
        return "Forward", [(_time_ns(e[0]), e[1]) for e in second], option
    if isinstance(second, bytes | str):  # PackedForward / CompressedPackedForward
        option = msg[2] if len(msg) > 2 and isinstance(msg[2], dict) else {}
        raw = second.encode() if isinstance(second, str) else second
        mode = "PackedForward"
        if option.get("compressed") == "gzip":
            raw = gzip.GzipFile(fileobj=io.BytesIO(raw)).read()  # reads concatenated members too
            mode = "CompressedPackedForward"
        entries = []
        for e in msgpack.Unpacker(io.BytesIO(raw), raw=False, ext_hook=_ext_hook):
            entries.append((_time_ns(e[0]), e[1]))
        if "size" in option and option["size"] != len(entries):
            raise ProtocolError(f"option size {option['size']} but {len(entries)} entries")
        return mode, entries, option
    # Message
    if len(msg) < 3 or not isinstance(msg[2], dict):
        raise ProtocolError(f"Message mode needs [tag, time, record]: {str(msg)[:80]}")
    option = msg[3] if len(msg) > 3 and isinstance(msg[3], dict) else {}
    return "Message", [(_time_ns(second), msg[2])], option


class FluentReceiver:
    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.events: list[Received] = []
        self.acks_sent = 0
        self.messages_by_mode: dict[str, int] = {}
        self.errors: list[str] = []
        self.send_acks = True
        self._lock = threading.Lock()
        self._server: socketserver.ThreadingTCPServer | None = None
        self._conns: set[socket.socket] = set()

    # ---- lifecycle --------------------------------------------------------------------
    def start(self) -> FluentReceiver:
        receiver = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                receiver._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = Server((self.host, self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        """Close the listening socket and every open connection (fluentd went away)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def __enter__(self) -> FluentReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # ---- protocol ---------------------------------------------------------------------
    def _serve(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.add(conn)
        unpacker = msgpack.Unpacker(raw=False, ext_hook=_ext_hook, max_buffer_size=256 * 1024 * 1024)
        try:
            while True:
                data = conn.recv(262144)
                if not data:
                    return
                unpacker.feed(data)
                for msg in unpacker:
                    self._handle(conn, msg)
        except (OSError, ValueError) as exc:
            with self._lock:
                self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _handle(self, conn: socket.socket, msg: Any) -> None:
        mode, entries, option = decode_message(msg)
        chunk = option.get("chunk")
        with self._lock:
            for t, rec in entries:
                self.events.append(Received(msg[0], t, rec, mode, chunk))
            self.messages_by_mode[mode] = self.messages_by_mode.get(mode, 0) + 1
        if chunk is not None and self.send_acks:
            conn.sendall(msgpack.packb({"ack": chunk}, use_bin_type=True))
            with self._lock:
                self.acks_sent += 1

    # ---- what arrived -----------------------------------------------------------------
    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.events)

    def count(self) -> int:
        with self._lock:
            return len(self.events)


__all__ = ["FluentReceiver", "Received", "decode_message", "ProtocolError"]
