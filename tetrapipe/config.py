"""Configuration: one set of names for flags, ``TETRAPIPE_*`` environment variables and YAML.

Precedence: defaults < YAML file (``--config`` or ``TETRAPIPE_CONFIG``) < environment < flags.
A field ``export_filename`` is ``--export-filename``, ``TETRAPIPE_EXPORT_FILENAME`` and
``export-filename:`` (or ``export_filename:``) in YAML.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


def _opt(default: Any, help: str, secret: bool = False) -> Any:  # noqa: A002 - argparse's word
    """A setting; a ``secret`` one is left out of the Config's repr (so it never reaches a log)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help}, repr=not secret)
    return field(default=default, metadata={"help": help, "secret": secret}, repr=not secret)


@dataclass
class Config:
    kafka: str = _opt("", "Kafka bootstrap servers; empty with `run` = start the embedded broker")
    node_name: str = _opt(socket.gethostname(), "node name put in every event")
    cluster_name: str = _opt("", "cluster name put in every event")
    metrics_address: str = _opt(":2112", "host:port of the /metrics and /healthz server; empty = off")
    control_socket: str = _opt("/var/run/tetrapipe/tetrapipe.sock", "collector control socket")
    raw_topic: str = _opt("tetrapipe.raw", "topic of raw kernel record batches")
    events_topic: str = _opt("tetrapipe.events", "topic of Avro events")
    deadletter_topic: str = _opt("tetrapipe.deadletter", "topic of records that failed to decode")
    topic_partitions: int = _opt(1, "partitions when tetrapipe creates a topic")
    topic_replication_factor: int = _opt(0, "replicas of each topic tetrapipe creates; "
                                         "0 = min(3, brokers in the cluster)")
    topic_min_insync_replicas: int = _opt(0, "min.insync.replicas of the topics tetrapipe creates "
                                          "(acks=all waits for them); 0 = 2 with 3+ replicas, else 1")
    kafka_stuck_exit_s: int = _opt(120, "a stage whose producer delivered nothing this long while retrying "
                                   "exits with 75 (EX_TEMPFAIL) to be restarted with a fresh one")
    kafka_max_message_bytes: int = _opt(1000000, "largest Kafka message tetrapipe writes (raw batches "
                                        "are cut below it); the topic's max.message.bytes if lower")
    schema_registry_url: str = _opt("", "Confluent schema registry; empty = single-object framing")
    kafka_security_protocol: str = _opt("PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    kafka_sasl_mechanism: str = _opt("", "SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN")
    kafka_sasl_username: str = _opt("", "SASL user")
    kafka_sasl_password: str = _opt("", "SASL password (prefer the environment variable)", secret=True)
    kafka_ssl_cafile: str = _opt("", "CA bundle that signs the broker's certificate")
    cache_dir: str = _opt("/var/cache/tetrapipe", "generated kernel headers and other caches")
    state_dir: str = _opt("/var/lib/tetrapipe", "spool and state files")
    ringbuf_pages: int = _opt(4096, "BPF ring buffer size in pages (power of two)")
    batch_max_records: int = _opt(2000, "records per raw batch at most")
    batch_max_ms: int = _opt(50, "longest a record waits for its batch")
    drain_queue_max: int = _opt(200000, "records buffered between ring buffer and Kafka")
    procfs_bootstrap: bool = _opt(True, "report processes already running at collector start")
    tracing_policy: list = _opt([], "TracingPolicy files to load at start")
    tracing_policy_dir: str = _opt("", "directory of TracingPolicy files, watched")
    enable_ancestors: str = _opt("", "comma list of event types that carry ancestors")
    process_cache_size: int = _opt(65536, "process cache entries at most")
    export_filename: str = _opt("/var/log/tetrapipe/events.log", "JSON export file")
    export_file_max_size_mb: int = _opt(10, "rotate the export file at this size")
    export_file_rotation_interval: str = _opt("0", "rotate also after this long (e.g. 1h); 0 = off")
    export_file_max_backups: int = _opt(5, "rotated files kept")
    export_file_compress: bool = _opt(False, "gzip rotated files")
    export_file_perm: str = _opt("600", "mode of the export file, octal")
    export_allowlist: str = _opt("", "JSON filters, one per line: export only matching events")
    export_denylist: str = _opt("", "JSON filters, one per line: never export matching events")
    field_filters: str = _opt("", "JSON field filters (include/exclude by field path)")
    redaction_filters: str = _opt("", "JSON redaction filters, one per line (enricher: every output; JSON exporter)")
    export_rate_limit: int = _opt(-1, "events per minute exported at most; -1 = no limit")
    fluentd_address: str = _opt("127.0.0.1:24224", "fluentd forward input host:port")
    fluentd_tag_prefix: str = _opt("tetrapipe", "fluentd tag = <prefix>.<event type>")
    metrics_label_filter: str = _opt("namespace,workload,pod,binary", "labels kept on event metrics")
    log_level: str = _opt("info", "debug, info, warning or error")
    spool_max_mb: int = _opt(512, "collector spool (raw batches waiting for Kafka) size limit, MiB")
    spool_memory_batches: int = _opt(16, "raw batches kept in memory before they go to the spool")
    spool_send_timeout_s: int = _opt(5, "a raw batch not acknowledged within this is spooled, retried")
    spool_flush_timeout_s: int = _opt(5, "at SIGTERM, time to deliver waiting batches (rest stays spooled)")
    fluentd_buffer_dir: str = _opt("", "fluentd exporter's disk buffer; empty = <state_dir>/fluentd-buffer")
    fluentd_buffer_max_bytes: int = _opt(256 * 1024 * 1024, "fluentd disk buffer bound in bytes")
    fluentd_ack_timeout: int = _opt(10, "seconds to wait for fluentd's ack of a chunk before resending")
    fluentd_compress: bool = _opt(False, "send CompressedPackedForward (gzip) to fluentd")
    enable_k8s_api: bool = _opt(False, "watch this node's pods on the Kubernetes API: pod metadata (enricher), "
                                       "pod-scoped policies (collector)")
    k8s_kubeconfig: str = _opt("", "kubeconfig file; empty = in-cluster config, else ~/.kube/config")
    k8s_retry_max_ms: int = _opt(30000, "longest wait between Kubernetes API retries (backoff from 0.5 s)")
    enable_pod_annotations: bool = _opt(False, "put pod annotations in events")
    event_cache_hold_ms: int = _opt(5000, "longest an event waits for its pod's metadata; 0 = never")
    event_cache_size: int = _opt(10000, "events held for pod metadata at most")
    enricher_group: str = _opt("tetrapipe-enricher", "consumer group of the enrichers (one per pipeline)")
    state_topic: str = _opt("tetrapipe.state", "compacted topic of the enricher's process cache; "
                            "empty = no restart state")
    export_rate_limit_report_interval: str = _opt("1m", "how often a rate_limit_info event reports drops")
    enable_network_events: bool = _opt(False, "network sensor: TCP connect/accept/close events "
                                       "(process_kprobe tcp_connect, inet_csk_accept, tcp_close)")
    enable_loader_events: bool = _opt(False, "loader sensor: process_loader events for every file "
                                      "a process maps executable (shared libraries)")
    enable_udp_events: bool = _opt(False, "UDP sensor: process_kprobe udp_sendmsg events for every "
                                   "datagram sent on an IPv4/IPv6 UDP socket")

    # ---- derived -----------------------------------------------------------------------
    @property
    def metrics_host_port(self) -> tuple[str, int] | None:
        if not self.metrics_address:
            return None
        host, _, port = self.metrics_address.rpartition(":")
        return host or "0.0.0.0", int(port)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _coerce(name: str, value: Any) -> Any:
    f = FIELDS[name]
    kind = type(f.default) if f.default is not dataclasses.MISSING else list
    if kind is bool:
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{name}: {value!r} is not a boolean")
    if kind is int:
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: {value!r} is not an integer") from None
    if kind is list:
        if isinstance(value, list):
            return [str(v) for v in value]
        return [v for v in str(value).split(",") if v]
    return str(value)


class ConfigError(ValueError):
    pass


def add_arguments(parser: argparse.ArgumentParser, names: list[str] | None = None) -> None:
    """Add one ``--flag`` per config field (all, or the given ones). Defaults stay unset so
    that the environment and the YAML file can still apply."""
    parser.add_argument("--config", help="YAML configuration file")
    for name, f in FIELDS.items():
        if names is not None and name not in names:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(f.default, bool):
            parser.add_argument(flag, dest=name, default=None, action=argparse.BooleanOptionalAction,
                                help=f.metadata["help"])
        elif f.default is dataclasses.MISSING:
            parser.add_argument(flag, dest=name, default=None, action="append",
                                help=f.metadata["help"])
        else:
            parser.add_argument(flag, dest=name, default=None, help=f.metadata["help"])


def load(args: argparse.Namespace | None = None, environ: dict[str, str] | None = None) -> Config:
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = getattr(args, "config", None) or env.get("TETRAPIPE_CONFIG")
    if path:
        try:
            doc = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
        if not isinstance(doc, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping")
        for key, value in doc.items():
            name = str(key).replace("-", "_")
            if name not in FIELDS:
                raise ConfigError(f"config file {path}: unknown setting {key!r}")
            values[name] = _coerce(name, value)
    for name in FIELDS:
        key = "TETRAPIPE_" + name.upper()
        if key in env:
            values[name] = _coerce(name, env[key])
    if args is not None:
        for name in FIELDS:
            v = getattr(args, name, None)
            if v is not None:
                values[name] = _coerce(name, v)
    return Config(**values)
