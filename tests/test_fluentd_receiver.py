"""The test receiver speaks Fluentd's Forward Protocol v1: all four modes, EventTime, chunk/ack.
Checked with raw sockets and with fluent-logger's own sender, so the exporter tests rest on it."""

from __future__ import annotations

import gzip
import socket
import struct

import msgpack
import pytest
from fluent.sender import EventTime, FluentSender
from fluent_receiver import FluentReceiver, ProtocolError, decode_message
from harness import wait_until


def _et(ns: int) -> msgpack.ExtType:
    return msgpack.ExtType(0, struct.pack(">II", *divmod(ns, 1_000_000_000)))


def _send_and_ack(rx: FluentReceiver, msg: list, chunk: str | None) -> dict | None:
    with socket.create_connection(("127.0.0.1", rx.port), timeout=5) as s:
        s.sendall(msgpack.packb(msg, use_bin_type=True))
        if chunk is None:
            return None
        return msgpack.unpackb(s.recv(4096), raw=False)


def test_all_four_modes_with_ack() -> None:
    t = 1_700_000_000_123_456_789
    with FluentReceiver() as rx:
        assert _send_and_ack(rx, ["a.msg", _et(t), {"k": 1}, {"chunk": "c1"}], "c1") == {"ack": "c1"}
        assert _send_and_ack(rx, ["a.fwd", [[_et(t + 1), {"k": 2}], [5, {"k": 3}]], {"chunk": "c2"}],
                             "c2") == {"ack": "c2"}
        stream = b"".join(msgpack.packb([_et(t + i), {"k": 10 + i}], use_bin_type=True) for i in range(3))
        assert _send_and_ack(rx, ["a.packed", stream, {"chunk": "c3", "size": 3}], "c3") == {"ack": "c3"}
        assert _send_and_ack(rx, ["a.gz", gzip.compress(stream), {"chunk": "c4", "size": 3,
                                                                  "compressed": "gzip"}], "c4") == {"ack": "c4"}
        _send_and_ack(rx, ["a.noack", _et(t), {"k": 99}], None)
        wait_until(lambda: rx.count() == 10, 5, what="10 events")
        got = rx.snapshot()
    assert [(e.tag, e.mode) for e in got[:3]] == [("a.msg", "Message"), ("a.fwd", "Forward"),
                                                  ("a.fwd", "Forward")]
    assert got[0].time_ns == t and got[0].record == {"k": 1}
    assert got[2].time_ns == 5_000_000_000  # integer seconds are accepted too
    assert [e.mode for e in got[3:9]] == ["PackedForward"] * 3 + ["CompressedPackedForward"] * 3
    assert [e.record["k"] for e in got[3:9]] == [10, 11, 12, 10, 11, 12]
    assert got[5].time_ns == t + 2
    assert rx.acks_sent == 4 and not rx.errors


def test_size_mismatch_and_garbage_are_refused() -> None:
    stream = msgpack.packb([_et(1), {"k": 1}], use_bin_type=True)
    with pytest.raises(ProtocolError):
        decode_message(["t", stream, {"size": 2}])
    with pytest.raises(ProtocolError):
        decode_message([1, 2, 3])


def test_fluent_logger_sender_is_understood() -> None:
    with FluentReceiver() as rx:
        sender = FluentSender("app", host="127.0.0.1", port=rx.port, nanosecond_precision=True)
        assert sender.emit_with_time("x", EventTime.from_unix_nano(42_000_000_007), {"a": "b"})
        sender.close()
        wait_until(lambda: rx.count() == 1, 5, what="one event")
        e = rx.snapshot()[0]
    assert (e.tag, e.time_ns, e.record, e.mode) == ("app.x", 42_000_000_007, {"a": "b"}, "Message")


def test_restart_on_same_port() -> None:
    rx = FluentReceiver().start()
    port = rx.port
    rx.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    rx.start()
    assert rx.port == port
    assert _send_and_ack(rx, ["t", _et(1), {"a": 1}, {"chunk": "z"}], "z") == {"ack": "z"}
    rx.stop()
