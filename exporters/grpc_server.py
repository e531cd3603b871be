"""``tetrapipe export grpc``: Tetragon's gRPC API (service ``tetragon.FineGuidanceSensors``) on
``--server-address`` (Tetragon's default ``localhost:54321``; ``unix:///path`` for a unix socket),
so ``tetra`` and programs written against Tetragon's API work against tetrapipe.

- ``GetEvents`` streams events from the events topic as they arrive, with the request's
  allow_list, deny_list and field_filters (the JSON export's filters). Each call reads the topic
  with its own consumer, outside any consumer group and committing nothing, from the topic's end
  (Tetragon streams from the moment of the call). The server sends its initial metadata once the
  stream's position is fixed: a client that waits for it sees every later event. A slow client
  holds back only its own stream (HTTP/2 flow control; its consumer stops fetching).
- ``GetHealth``, ``GetVersion``; the standard ``grpc.health.v1.Health`` service.
- ``ListTracingPolicies``, ``AddTracingPolicy``, ``DeleteTracingPolicy``, ``EnableTracingPolicy``,
  ``DisableTracingPolicy``, ``ConfigureTracingPolicy`` (enable only) are relayed to the
  collector's control socket (``--control-socket``) of this node. Every other call answers
  UNIMPLEMENTED with what tetrapipe offers instead.
- Events carry other users' arguments and written data, policies can kill: GetEvents and the
  policy calls are served only to local callers running as root or as the server's own user (over
  TCP the caller's socket owner is looked up in /proc/net/tcp*; a unix socket is made 0600).
  GetHealth, GetVersion and the health service answer anyone. (Tetragon serves all of them to
  whoever reaches the port.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import Counter, Gauge

from exporters import filters, grpc_api, protojson
from exporters.grpc_peer import peer_uid
from tetragon import sensors_pb2, sensors_pb2_grpc, tetragon_pb2
from tetrapipe import control_client, metrics
from tetrapipe.config import Config

log = logging.getLogger("tetrapipe.export.grpc")

STREAMS = Gauge("tetrapipe_grpc_getevents_streams", "GetEvents streams open")
SENT = Counter("tetrapipe_grpc_events_sent", "Events sent on GetEvents streams")
SKIPPED = Counter("tetrapipe_grpc_events_skipped", "Events not sent on a stream, by reason", ["reason"])
CALLS = Counter("tetrapipe_grpc_calls", "gRPC calls answered, by method and status code", ["method", "code"])
SERVICE = "tetragon.FineGuidanceSensors"


def version() -> str:
    try:
        from importlib.metadata import version as v

        return f"tetrapipe-{v('tetrapipe')}"
    except Exception:  # not installed as a distribution (a source checkout)
        return "tetrapipe-dev"


class FineGuidanceSensors(sensors_pb2_grpc.FineGuidanceSensorsServicer):
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        try:
            self.redaction = filters.parse_redaction_filters(cfg.redaction_filters)
        except filters.FilterError as exc:  # refuse to start, as the JSON exporter does
            raise SystemExit(f"tetrapipe export grpc: {exc}") from None
        self.port = 0  # the TCP port it listens on (set once bound)
        self.topic_ready = False

    # ---- events ---------------------------------------------------------------------------
    async def GetEvents(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await self._authorize("GetEvents", context)
        try:
            select = grpc_api.request_selector(request, self.redaction)
        except filters.FilterError as exc:
            CALLS.labels("GetEvents", "INVALID_ARGUMENT").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        consumer = await self._open_stream(context)
        STREAMS.inc()
        try:
            await context.send_initial_metadata((("tetrapipe-stream", "positioned"),))
            decode = self._decoder()
            while True:
                got = await consumer.getmany(timeout_ms=500)
                for msgs in got.values():
                    for m in msgs:
                        msg = await self._message(decode, select, m)
                        if msg is not None:
                            SENT.inc()
                            yield msg
        finally:
            STREAMS.dec()
            await consumer.stop()

    def _decoder(self) -> Any:
        from schemas import registry

        return registry.decoder_for(self.cfg)

    async def _open_stream(self, context: grpc.aio.ServicerContext) -> Any:
        """A consumer of every partition of the events topic, positioned at its end."""
        from aiokafka.errors import KafkaError

        from tetrapipe import kafka

        consumer = kafka.make_consumer(self.cfg, None, [])  # type: ignore[arg-type]
        try:
            if not self.topic_ready:  # a server started before the pipeline: make the topic as others do
                await kafka.ensure_topics(self.cfg, [self.cfg.events_topic])
                self.topic_ready = True
            await consumer.start()
            await _position_at_end(consumer, self.cfg.events_topic)
        except (KafkaError, OSError, RuntimeError) as exc:
            await consumer.stop()
            CALLS.labels("GetEvents", "UNAVAILABLE").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"events topic {self.cfg.events_topic}: {exc}")
        CALLS.labels("GetEvents", "OK").inc()
        return consumer

    async def _message(self, decode: Any, select: Any, m: Any) -> Any:
        """One Kafka message → the GetEventsResponse to send, or None (filtered out, or skipped and
        counted). A schema registry that does not answer is waited for: the message is fine."""
        from schemas import codec, registry

        while True:
            try:
                doc = select(protojson.to_protojson(decode(m.value)))
                break
            except codec.CodecError as exc:
                SKIPPED.labels("undecodable").inc()
                log.warning("skipping message %s/%s: %s", m.partition, m.offset, exc)
                return None
            except registry.RegistryError as exc:
                log.warning("schema registry: %s; trying message %s/%s again in 1 s", exc, m.partition, m.offset)
                await asyncio.sleep(1.0)
        if doc is None:
            return None
        try:
            return grpc_api.to_message(doc)
        except grpc_api.NotInApi as exc:
            SKIPPED.labels("not_in_api").inc()
            log.warning("event at %s/%s has no GetEventsResponse form: %s", m.partition, m.offset, exc)
            return None

    async def GetHealth(self, request: Any, context: Any) -> Any:  # noqa: N802
        CALLS.labels("GetHealth", "OK").inc()
        return tetragon_pb2.GetHealthStatusResponse(health_status=[tetragon_pb2.HealthStatus(
            event=tetragon_pb2.HEALTH_STATUS_TYPE_STATUS, status=tetragon_pb2.HEALTH_STATUS_RUNNING,
            details="running")])

    async def GetVersion(self, request: Any, context: Any) -> Any:  # noqa: N802
        CALLS.labels("GetVersion", "OK").inc()
        return sensors_pb2.GetVersionResponse(version=version())

    # ---- policies (relayed to the collector) ------------------------------------------------
    async def _authorize(self, method: str, context: grpc.aio.ServicerContext) -> None:
        """Events carry other users' arguments and file data; policies can kill: over TCP only local
        callers running as root or as this server's user are served (the socket's owner in
        /proc/net/tcp*); a unix socket is 0600, its file mode decides."""
        peer = context.peer()
        if peer.startswith("unix:"):
            return
        uid = peer_uid(peer, self.port)
        if uid is None or uid not in (0, os.getuid()):
            CALLS.labels(method, "PERMISSION_DENIED").inc()
            who = "a caller whose owner cannot be checked (not local)" if uid is None else f"uid {uid}"
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"{method} is served to root or uid {os.getuid()} only, not to {who}")

    async def _control(self, method: str, req: dict[str, Any], context: grpc.aio.ServicerContext) -> dict[str, Any]:
        await self._authorize(method, context)
        loop = asyncio.get_running_loop()
        try:
            reply = await loop.run_in_executor(None, control_client.request, self.cfg.control_socket, req)
        except (control_client.ControlError, OSError, ValueError) as exc:
            CALLS.labels(method, "UNAVAILABLE").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        if not reply.get("ok"):
            error = str(reply.get("error") or "refused")
            code = grpc.StatusCode.NOT_FOUND if "not loaded" in error or "no policy" in error \
                else grpc.StatusCode.INVALID_ARGUMENT
            CALLS.labels(method, code.name).inc()
            await context.abort(code, error)
        CALLS.labels(method, "OK").inc()
        return reply

    async def ListTracingPolicies(self, request: Any, context: Any) -> Any:  # noqa: N802
        reply = await self._control("ListTracingPolicies", {"op": "list"}, context)
        return sensors_pb2.ListTracingPoliciesResponse(
            policies=[grpc_api.policy_status(p) for p in reply.get("policies", [])])

    async def AddTracingPolicy(self, request: Any, context: Any) -> Any:  # noqa: N802
        await self._control("AddTracingPolicy", {"op": "add", "yaml": request.yaml, "source": "grpc"}, context)
        return sensors_pb2.AddTracingPolicyResponse()

    async def DeleteTracingPolicy(self, request: Any, context: Any) -> Any:  # noqa: N802
        await self._control("DeleteTracingPolicy", {"op": "delete", "name": request.name}, context)
        return sensors_pb2.DeleteTracingPolicyResponse()

    async def EnableTracingPolicy(self, request: Any, context: Any) -> Any:  # noqa: N802
        await self._control("EnableTracingPolicy", {"op": "enable", "name": request.name}, context)
        return sensors_pb2.EnableTracingPolicyResponse()

    async def DisableTracingPolicy(self, request: Any, context: Any) -> Any:  # noqa: N802
        await self._control("DisableTracingPolicy", {"op": "disable", "name": request.name}, context)
        return sensors_pb2.DisableTracingPolicyResponse()

    async def ConfigureTracingPolicy(self, request: Any, context: Any) -> Any:  # noqa: N802
        if request.HasField("mode"):
            CALLS.labels("ConfigureTracingPolicy", "UNIMPLEMENTED").inc()
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                "tetrapipe sets a policy's mode when it is added: delete it and add it again "
                                "(tetrapipe tracingpolicy add --mode monitor|enforce)")
        if request.HasField("enable"):
            op = "enable" if request.enable else "disable"
            await self._control("ConfigureTracingPolicy", {"op": op, "name": request.name}, context)
        return sensors_pb2.ConfigureTracingPolicyResponse()


def _unimplemented(name: str, instead: str) -> Any:
    async def call(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        CALLS.labels(name, "UNIMPLEMENTED").inc()
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"tetrapipe does not serve {name}: {instead}")
    call.__name__ = name
    return call


_SENSORS = "tetrapipe has no separate sensors: use ListTracingPolicies/EnableTracingPolicy/DisableTracingPolicy"
for _name, _instead in {
    "ListSensors": _SENSORS, "EnableSensor": _SENSORS, "DisableSensor": _SENSORS, "RemoveSensor": _SENSORS,
    "GetStackTraceTree": "no stack traces are collected",
    "RuntimeHook": "the collector sees new containers by watching cgroup creation (README: pods)",
    "GetDebug": "see the services' logs and /metrics", "SetDebug": "use --log-level",
}.items():
    setattr(FineGuidanceSensors, _name, _unimplemented(_name, _instead))


async def _position_at_end(consumer: Any, topic: str) -> None:
    """Assign every partition of the topic and fix each position at its current end."""
    from aiokafka import TopicPartition

    parts: set[int] | None = None
    for _ in range(100):
        parts = consumer.partitions_for_topic(topic)
        if parts:
            break
        await consumer.topics()  # fetches the cluster's metadata
        await asyncio.sleep(0.1)
    if not parts:
        raise RuntimeError(f"topic {topic} has no partitions")
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)


async def _bind(cfg: Config, stop: asyncio.Event) -> tuple[grpc.aio.Server, Any] | None:
    """A started server on --server-address; while the address is taken (another Tetragon, an
    older server), say so and try again every 5 s rather than exit (run would restart us)."""
    while not stop.is_set():
        server = grpc.aio.server()
        servicer = FineGuidanceSensors(cfg)
        sensors_pb2_grpc.add_FineGuidanceSensorsServicer_to_server(servicer, server)
        checker = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checker, server)
        try:
            servicer.port = server.add_insecure_port(cfg.server_address)
            await server.start()
            return server, checker
        except RuntimeError as exc:
            log.error("cannot listen on %s (%s); trying again in 5 s", cfg.server_address, exc)
            await server.stop(None)
        try:
            await asyncio.wait_for(stop.wait(), 5.0)
        except TimeoutError:
            pass
    return None


async def serve(cfg: Config, stop: asyncio.Event) -> None:
    """Run the server until stop."""
    address = cfg.server_address
    if address.startswith("unix:"):
        path = address.removeprefix("unix://").removeprefix("unix:")
        if os.path.exists(path) and stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # left by a server that was killed
        old_umask = os.umask(0o077)  # the socket is private from its creation on
    try:
        bound = await _bind(cfg, stop)
    finally:
        if address.startswith("unix:"):
            os.umask(old_umask)
    if bound is None:
        return
    server, checker = bound
    if address.startswith("unix:"):
        os.chmod(path, 0o600)  # made 0700 under the umask above: no moment it was open to others
    for name in ("", SERVICE):
        await checker.set(name, health_pb2.HealthCheckResponse.SERVING)
    metrics.set_ready()
    log.info("Tetragon API (%s) on %s", SERVICE, address)
    await stop.wait()
    metrics.set_ready(False)
    for name in ("", SERVICE):
        await checker.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(grace=2)
