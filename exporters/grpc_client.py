"""The client side of Tetragon's gRPC API, as ``tetra`` uses it: ``getevents --server-address``
streams events from a server (ours or Tetragon's), ``status`` asks its health."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import grpc

from exporters import grpc_api
from tetragon import events_pb2, sensors_pb2_grpc, tetragon_pb2
from tetrapipe.config import Config


def stub(address: str) -> tuple[grpc.Channel, sensors_pb2_grpc.FineGuidanceSensorsStub]:
    ch = grpc.insecure_channel(address)
    return ch, sensors_pb2_grpc.FineGuidanceSensorsStub(ch)


def status(cfg: Config, timeout: float) -> int:
    """``tetra status``: prints ``Health Status: running``."""
    ch, s = stub(cfg.server_address)
    try:
        res = s.GetHealth(tetragon_pb2.GetHealthStatusRequest(), timeout=timeout, wait_for_ready=True)
    except grpc.RpcError as exc:
        print(f"tetrapipe status: {cfg.server_address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    finally:
        ch.close()
    if not res.health_status:
        print("tetrapipe status: the server answered without a status", file=sys.stderr)
        return 1
    print(f"Health Status: {res.health_status[0].details}")
    return 0


def stream(address: str, request: events_pb2.GetEventsRequest, out: Callable[[dict[str, Any]], None],
           timeout: float | None = None) -> int:
    """GetEvents until the server ends the stream (or Ctrl-C); each event as a protojson dict."""
    ch, s = stub(address)
    try:
        for msg in s.GetEvents(request, timeout=timeout, wait_for_ready=True):
            out(grpc_api.to_doc(msg))
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return 0
        print(f"tetrapipe getevents: {address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    finally:
        ch.close()
    return 0
