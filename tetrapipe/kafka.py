"""Kafka helpers shared by every stage: client settings, topic creation, producer start with
idempotence detection, and the dead-letter writer."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    UnsupportedSaslMechanismError,
)
from prometheus_client import Gauge

from tetrapipe.config import Config
from tetrapipe.idle_fetch import IdleFetchConsumer
from tetrapipe.metrics import DEAD_LETTERS

log = logging.getLogger("tetrapipe.kafka")

MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # fetch sizes, and the producer's client-side request cap

IDEMPOTENT = Gauge("tetrapipe_kafka_idempotent_producer",
                   "1 when this process's producer is idempotent, 0 when the broker refused it")


def client_settings(cfg: Config) -> dict[str, Any]:
    """Connection settings common to producers, consumers and the admin client."""
    s: dict[str, Any] = {
        "bootstrap_servers": cfg.kafka or "127.0.0.1:9092",
        "security_protocol": cfg.kafka_security_protocol,
    }
    if cfg.kafka_sasl_mechanism:
        s["sasl_mechanism"] = cfg.kafka_sasl_mechanism
        s["sasl_plain_username"] = cfg.kafka_sasl_username
        s["sasl_plain_password"] = cfg.kafka_sasl_password
    if cfg.kafka_security_protocol in ("SSL", "SASL_SSL"):
        ctx = ssl.create_default_context(cafile=cfg.kafka_ssl_cafile or None)
        s["ssl_context"] = ctx
    return s


class KafkaAuthError(KafkaError):
    """The broker refused our SASL login. The message names the broker, mechanism and user,
    never the password."""


class KafkaTlsError(KafkaAuthError):
    """The broker's TLS certificate was not accepted (kafka_ssl_cafile): no login was tried."""


def _tls_refused(cfg: Config, exc: BaseException) -> KafkaTlsError | None:
    """A certificate the CA file does not vouch for. ssl.SSLCertVerificationError is also a
    ValueError, which aiokafka's SCRAM client raises for a refused login: told apart first."""
    if not isinstance(exc, ssl.SSLCertVerificationError):
        return None
    why = exc.verify_message or exc.reason or "certificate verify failed"
    return KafkaTlsError(f"broker {cfg.kafka} over {cfg.kafka_security_protocol}: certificate verify failed "
                         f"({why}): check kafka_ssl_cafile ({cfg.kafka_ssl_cafile or 'the system CAs'})")


def _auth_refused(cfg: Config, exc: BaseException) -> KafkaAuthError | None:
    """A SASL failure or an untrusted certificate, told apart from an unreachable broker.
    aiokafka's SCRAM client raises KeyError/ValueError when the server answers its final message
    with an error (``e=...``) or a wrong signature."""
    tls = _tls_refused(cfg, exc)
    if tls is not None:
        return tls
    if not cfg.kafka_sasl_mechanism:
        return None
    if isinstance(exc, SaslAuthenticationFailed | AuthenticationFailedError | UnsupportedSaslMechanismError
                  | KeyError | ValueError):
        why = type(exc).__name__ if isinstance(exc, KeyError | ValueError) else str(exc)
        return KafkaAuthError(f"broker {cfg.kafka} refused the {cfg.kafka_sasl_mechanism} login of user "
                              f"{cfg.kafka_sasl_username!r} over {cfg.kafka_security_protocol} ({why}): "
                              f"check kafka_sasl_username / kafka_sasl_password")
    return None


def _drop_bootstrap_errors(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Unable connect to")


async def _why_unreachable(cfg: Config) -> BaseException | None:
    """Why the bootstrap failed. aiokafka's bootstrap only logs each server's error and raises a
    bare "Unable to bootstrap": a refused SASL login (SASL_AUTHENTICATION_FAILED, as Kafka
    answers a wrong password or an unknown user) looks like an outage there. One connection to
    the first bootstrap server, with the same settings, tells which."""
    s = client_settings(cfg)
    host, _, port = s["bootstrap_servers"].split(",")[0].strip().rpartition(":")
    try:
        conn = await create_conn(host.strip("[]") or "127.0.0.1", int(port), request_timeout_ms=10000,
                                 ssl_context=s.get("ssl_context"), security_protocol=s["security_protocol"],
                                 sasl_mechanism=s.get("sasl_mechanism"),
                                 sasl_plain_username=s.get("sasl_plain_username"),
                                 sasl_plain_password=s.get("sasl_plain_password"))
    except Exception as exc:  # noqa: BLE001 - the reason is what we are after
        return exc
    conn.close()
    return None


async def ensure_topics(cfg: Config, topics: list[str]) -> None:
    """Create the topics that do not exist yet (tetrapipe never relies on auto-creation). The
    first contact of every stage with the broker: a refused login fails here, clearly, in one
    line (KafkaAuthError); an unreachable broker raises KafkaConnectionError with the reason."""
    admin = AIOKafkaAdminClient(**client_settings(cfg))
    client_log = logging.getLogger("aiokafka")  # aiokafka's client logs under this very name
    client_log.addFilter(_drop_bootstrap_errors)  # "Unable connect ...": we say why, once, below
    try:
        await admin.start()
    except Exception as exc:
        await admin.close()
        why: BaseException | None = exc
        if isinstance(exc, KafkaConnectionError):
            why = await _why_unreachable(cfg) or exc
        refused = _auth_refused(cfg, why)
        if refused is not None:
            raise refused from None  # aiokafka's traceback says nothing more, and holds the client
        if why is not exc:
            bare = exc.args[0] if exc.args else "unable to bootstrap"
            raise KafkaConnectionError(f"{bare}: {type(why).__name__}: {why}") from None
        raise
    finally:
        client_log.removeFilter(_drop_bootstrap_errors)
    try:
        await create_missing(cfg, admin, topics)
    finally:
        await admin.close()


def replication(cfg: Config, brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) of the topics tetrapipe creates: as configured,
    else 3 replicas (fewer on a smaller cluster) with 2 in sync."""
    rf = cfg.topic_replication_factor or max(1, min(3, brokers))
    min_isr = cfg.topic_min_insync_replicas or (2 if rf >= 3 else 1)
    if min_isr > rf:
        raise ValueError(f"topic_min_insync_replicas {min_isr} is more than topic_replication_factor {rf}: "
                         "every acks=all write would be refused")
    return rf, min_isr


async def create_missing(cfg: Config, admin: AIOKafkaAdminClient, topics: list[str],
                         configs: dict[str, str] | None = None) -> list[str]:
    """Create the topics of ``topics`` that do not exist, replicated as configured; the names
    created. ``configs``: topic configs on top (e.g. cleanup.policy=compact)."""
    existing = set(await admin.list_topics())
    missing = [t for t in topics if t not in existing]
    if not missing:
        return []
    # brokers from the metadata the admin client holds (Tansu has no DescribeCluster)
    rf, min_isr = replication(cfg, len(admin._client.cluster.brokers()) or 1)
    tconf = dict(configs or {})
    if rf > 1:  # a one-replica topic keeps the broker's default (Tansu knows no topic configs)
        tconf["min.insync.replicas"] = str(min_isr)
    try:
        await admin.create_topics([NewTopic(t, num_partitions=cfg.topic_partitions, replication_factor=rf,
                                            topic_configs=tconf) for t in missing])
    except TopicAlreadyExistsError:
        pass
    log.info("created topics %s (partitions %d, replication factor %d, min.insync.replicas %s%s)",
             ", ".join(missing), cfg.topic_partitions, rf, min_isr if rf > 1 else "default",
             "".join(f", {k}={v}" for k, v in (configs or {}).items()))
    return missing


async def max_message_bytes(cfg: Config, topic: str) -> int:
    """The largest message ``topic`` takes: the topic's max.message.bytes where the broker
    describes it, bounded by kafka_max_message_bytes."""
    limit = cfg.kafka_max_message_bytes
    admin = AIOKafkaAdminClient(**client_settings(cfg))
    try:
        await admin.start()
        (resp,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                                               {"max.message.bytes": None})])
        for res in resp.resources:
            for entry in res[4]:
                if entry[0] == "max.message.bytes" and entry[1]:
                    limit = min(limit, int(entry[1]))
    except Exception as exc:  # noqa: BLE001 - a broker that cannot describe it: the setting alone
        log.info("max.message.bytes of %s not described (%s): using %d", topic, exc, limit)
    finally:
        await admin.close()
    return limit


async def start_producer(cfg: Config, **extra: Any) -> AIOKafkaProducer:
    """A started producer with acks=all; idempotent where the broker supports it.

    The embedded broker refuses InitProducerId: then the producer falls back to a plain one and
    the consumers' sequence audit drops duplicates."""
    base = dict(client_settings(cfg), acks="all", max_request_size=MAX_MESSAGE_BYTES,
                linger_ms=5, request_timeout_ms=30000)
    base.update(extra)
    producer = AIOKafkaProducer(enable_idempotence=True, **base)
    sender_log = logging.getLogger("aiokafka.producer.sender")
    level = sender_log.level
    sender_log.setLevel(logging.CRITICAL)  # the refusal is expected on some brokers
    try:
        await producer.start()
        IDEMPOTENT.set(1)
        return producer
    except KafkaError as exc:
        # Tansu answers InitProducerId with an error: acks=all alone, duplicates left to the audit
        log.warning("broker refused an idempotent producer (%s: %s): using acks=all without it; "
                    "consumers drop retried duplicates by sequence", type(exc).__name__, exc)
        await producer.stop()
    finally:
        sender_log.setLevel(level)
    producer = AIOKafkaProducer(**base)
    await producer.start()
    IDEMPOTENT.set(0)
    return producer


PRODUCER_STUCK_S = 120.0
EX_TEMPFAIL = 75  # sysexits.h: temporary failure, the supervisor starts the stage again


class DeliveryWatch:
    """Counts how long a retry loop has gone without a delivery. Past ``limit_s`` (seen: the
    producer of a stage delivered nothing after every broker of a cluster restarted) the stage
    exits at once with EX_TEMPFAIL, without stopping the producer (whose stop would wait for the
    same undeliverable batches): a fresh process, with a fresh producer, resumes from the
    committed offsets, and nothing is committed past what was not acknowledged."""

    def __init__(self, what: str, limit_s: float = PRODUCER_STUCK_S) -> None:
        self.what = what
        self.limit_s = limit_s
        self.since: float | None = None

    def failed(self, why: str) -> None:
        now = asyncio.get_running_loop().time()
        if self.since is None:
            self.since = now
        elif now - self.since > self.limit_s:
            log.error("%s not acknowledged for %.0fs (%s): exiting with %d so that a fresh process "
                      "resumes from the committed offsets", self.what, now - self.since, why, EX_TEMPFAIL)
            logging.shutdown()
            os._exit(EX_TEMPFAIL)


def is_idempotent(producer: AIOKafkaProducer) -> bool:
    """Whether the broker gave this producer an id (Apache Kafka does, Tansu refuses). A broker
    that refuses it is Tansu here, whose end offsets lag (see enricher/state.py)."""
    return getattr(producer, "_txn_manager", None) is not None


def make_consumer(cfg: Config, group: str, topics: list[str], **extra: Any) -> AIOKafkaConsumer:
    # fetch_max_wait_ms: a broker may hold a fetch this long before answering (Tansu does, even
    # when data arrives): aiokafka's 500 ms default put ~130 ms p50 on every Kafka hop; 25 ms
    # keeps a hop at ~10-30 ms for ~40 fetches/s from an idle consumer (bench/kafka_hop.py),
    # and once no record came for IDLE_AFTER_S the consumer asks for IDLE_FETCH_WAIT_MS
    # (tetrapipe/idle_fetch.py; idle_after_s / idle_fetch_wait_ms in ``extra``)
    settings = dict(client_settings(cfg), group_id=group, enable_auto_commit=False,
                    auto_offset_reset="earliest", max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
                    fetch_max_bytes=4 * MAX_MESSAGE_BYTES, fetch_max_wait_ms=25)
    settings.update(extra)
    return IdleFetchConsumer(*topics, **settings)


async def send_dead_letter(producer: AIOKafkaProducer, cfg: Config, stage: str, value: bytes,
                           error: str, key: bytes | None = None, source: str = "") -> None:
    """Keep a bad message: original bytes, the error in headers. Counted per stage."""
    headers = [("tetrapipe-error", error.encode("utf-8", "replace")[:4096]),
               ("tetrapipe-stage", stage.encode()),
               ("tetrapipe-source", source.encode("utf-8", "replace"))]
    backoff = 0.2
    while True:  # kept until the broker acknowledged it: the caller commits past it afterwards
        try:
            await producer.send_and_wait(cfg.deadletter_topic, value, key=key, headers=headers)
            break
        except KafkaError as exc:
            if not (exc.retriable or isinstance(exc, KafkaTimeoutError)):
                raise
            log.warning("dead letter not acknowledged (%s): sending again in %.1fs", exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
    DEAD_LETTERS.labels(stage=stage).inc()
