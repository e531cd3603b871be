"""Configuration: one set of names for flags, ``TETRAPIPE_*`` environment variables and YAML.

Precedence: defaults < YAML file (``--config`` or ``TETRAPIPE_CONFIG``) < environment < flags.
A field ``export_filename`` is ``--export-filename``, ``TETRAPIPE_EXPORT_FILENAME`` and
``export-filename:`` (or ``export_filename:``) in YAML. Every key is accepted in the environment
and the YAML file by every command (one file can serve all services).

**Adding a key** (one line in ``Config`` below)::

    my_key: int = _opt(10, "what it does", "collector", "Collector")

- argument 3, ``used_by``: the commands that read it, space separated, out of ``COMMANDS``
  (or one of the shorthands ``SERVICES``, ``KAFKA_CLIENTS``, ``EXPORTERS``). Only those commands
  offer ``--my-key`` and list it in ``--help``; ``tetrapipe run`` offers every service's keys and
  hands them all to its children. Left out, the key is offered by every service and
  ``tests/test_cli_options.py`` fails until it is declared: that test compares each command's
  options with the keys its code reads (``cfg.my_key``).
- argument 4, ``section``: the heading it is listed under in ``--help`` (any of ``SECTIONS``,
  or a new one: it is appended).
- ``secret=True`` keeps the value out of the Config's repr (never logged).
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

# the commands that read configuration keys (``export-json`` = ``tetrapipe export json``)
COMMANDS = ("collector", "enricher", "export-json", "export-fluentd", "export-prometheus", "export-grpc",
            "getevents", "tracingpolicy", "status")
EXPORTERS = "export-json export-fluentd export-prometheus export-grpc"
SERVICES = "collector enricher " + EXPORTERS  # what `tetrapipe run` starts
KAFKA_CLIENTS = SERVICES + " getevents"
# --help headings, in this order
SECTIONS = ("General", "Kafka", "Collector", "Collector spool", "Sensors", "Policies", "Enricher", "Redaction",
            "Kubernetes", "JSON export", "fluentd export", "Prometheus export", "gRPC API", "Other")


def _opt(default: Any, help: str, used_by: str = "", section: str = "Other",  # noqa: A002 - argparse's word
         secret: bool = False) -> Any:
    """A setting (see the module's docstring); a ``secret`` one is left out of the Config's repr
    (so it never reaches a log)."""
    meta = {"help": help, "secret": secret, "used_by": tuple(used_by.split()), "section": section}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta, repr=not secret)
    return field(default=default, metadata=meta, repr=not secret)


@dataclass
class Config:
    kafka: str = _opt("", "Kafka bootstrap servers host:port[,...]; empty = 127.0.0.1:9092, and with `run`: "
                        "start the embedded broker there",
        KAFKA_CLIENTS, "Kafka")
    node_name: str = _opt(socket.gethostname(), "node name put in every event",
        "collector enricher export-json", "General")
    cluster_name: str = _opt("", "cluster name put in every event",
        "enricher export-json", "General")
    metrics_address: str = _opt(":2112", "host:port of the /metrics and /healthz server; empty = off",
        SERVICES, "General")
    control_socket: str = _opt("/var/run/tetrapipe/tetrapipe.sock", "collector control socket",
        "collector tracingpolicy export-grpc", "Policies")
    raw_topic: str = _opt("tetrapipe.raw", "topic of raw kernel record batches",
        "collector enricher", "Kafka")
    events_topic: str = _opt("tetrapipe.events", "topic of Avro events",
        "enricher getevents " + EXPORTERS, "Kafka")
    deadletter_topic: str = _opt("tetrapipe.deadletter", "topic of records that failed to decode",
        SERVICES, "Kafka")
    topic_partitions: int = _opt(1, "partitions when tetrapipe creates a topic",
        SERVICES, "Kafka")
    topic_replication_factor: int = _opt(0, "replicas of each topic tetrapipe creates; "
                                         "0 = min(3, brokers in the cluster)",
        SERVICES, "Kafka")
    topic_min_insync_replicas: int = _opt(0, "min.insync.replicas of the topics tetrapipe creates "
                                          "(acks=all waits for them); 0 = 2 with 3+ replicas, else 1",
        SERVICES, "Kafka")
    kafka_stuck_exit_s: int = _opt(120, "a stage whose producer delivered nothing this long while retrying "
                                   "exits with 75 (EX_TEMPFAIL) to be restarted with a fresh one",
        "collector enricher", "Kafka")
    kafka_max_message_bytes: int = _opt(1000000, "largest Kafka message tetrapipe writes (raw batches "
                                        "are cut below it); the topic's max.message.bytes if lower",
        SERVICES, "Kafka")
    schema_registry_url: str = _opt("", "Confluent schema registry; empty = single-object framing",
        "enricher getevents " + EXPORTERS, "Kafka")
    kafka_security_protocol: str = _opt("PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
        KAFKA_CLIENTS, "Kafka")
    kafka_sasl_mechanism: str = _opt("", "SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN",
        KAFKA_CLIENTS, "Kafka")
    kafka_sasl_username: str = _opt("", "SASL user",
        KAFKA_CLIENTS, "Kafka")
    kafka_sasl_password: str = _opt("", "SASL password (prefer the environment variable)",
                               used_by=KAFKA_CLIENTS, section="Kafka", secret=True)
    kafka_ssl_cafile: str = _opt("", "CA bundle that signs the broker's certificate",
        KAFKA_CLIENTS, "Kafka")
    cache_dir: str = _opt("/var/cache/tetrapipe", "generated kernel headers and other caches",
        "collector", "Collector")
    state_dir: str = _opt("/var/lib/tetrapipe", "spool and state files",
        "collector export-fluentd", "General")
    ringbuf_pages: int = _opt(4096, "BPF ring buffer size in pages (power of two)",
        "collector", "Collector")
    batch_max_records: int = _opt(2000, "records per raw batch at most",
        "collector", "Collector")
    batch_max_ms: int = _opt(50, "longest a record waits for its batch",
        "collector", "Collector")
    drain_queue_max: int = _opt(200000, "records buffered between ring buffer and Kafka",
        "collector", "Collector")
    procfs_bootstrap: bool = _opt(True, "report processes already running at collector start",
        "collector", "Collector")
    tracing_policy: list = _opt([], "TracingPolicy files to load at start",
        "collector", "Policies")
    tracing_policy_dir: str = _opt("", "directory of TracingPolicy files, watched",
        "collector", "Policies")
    enable_ancestors: str = _opt("", "comma list of event types that carry ancestors",
        "enricher", "Enricher")
    process_cache_size: int = _opt(65536, "process cache entries at most",
        "enricher", "Enricher")
    enable_process_cred: bool = _opt(False, "processes carry cap, process_credentials and "
                                     "binary_properties (Tetragon's --enable-process-cred)",
        "enricher", "Enricher")
    enable_process_ns: bool = _opt(False, "processes carry ns, their namespaces "
                                   "(Tetragon's --enable-process-ns)",
        "enricher", "Enricher")
    expose_stack_addresses: bool = _opt(False, "stack trace frames carry their addresses (Tetragon's "
                                        "--expose-stack-addresses; off: 0, the layout of the kernel stays "
                                        "out of the events)",
        "enricher", "Enricher")
    export_filename: str = _opt("/var/log/tetrapipe/events.log", "JSON export file",
        "export-json", "JSON export")
    export_file_max_size_mb: int = _opt(10, "rotate the export file at this size",
        "export-json", "JSON export")
    export_file_rotation_interval: str = _opt("0", "rotate also after this long (e.g. 1h); 0 = off",
        "export-json", "JSON export")
    export_file_max_backups: int = _opt(5, "rotated files kept",
        "export-json", "JSON export")
    export_file_compress: bool = _opt(False, "gzip rotated files",
        "export-json", "JSON export")
    export_file_perm: str = _opt("600", "mode of the export file, octal",
        "export-json", "JSON export")
    export_allowlist: str = _opt("", "JSON filters, one per line: export only matching events",
        "export-json", "JSON export")
    export_denylist: str = _opt("", "JSON filters, one per line: never export matching events",
        "export-json", "JSON export")
    field_filters: str = _opt("", "JSON field filters (include/exclude by field path)",
        "export-json", "JSON export")
    redaction_filters: str = _opt("", "JSON redaction filters, one per line (enricher: every output; JSON exporter)",
        "enricher export-json export-grpc", "Redaction")
    export_rate_limit: int = _opt(-1, "events per minute exported at most; -1 = no limit",
        "export-json", "JSON export")
    fluentd_address: str = _opt("127.0.0.1:24224", "fluentd forward input host:port",
        "export-fluentd", "fluentd export")
    fluentd_tag_prefix: str = _opt("tetrapipe", "fluentd tag = <prefix>.<event type>",
        "export-fluentd", "fluentd export")
    metrics_label_filter: str = _opt("namespace,workload,pod,binary", "labels kept on event metrics",
        "export-prometheus", "Prometheus export")
    log_level: str = _opt("info", "debug, info, warning or error",
        SERVICES, "General")
    spool_max_mb: int = _opt(512, "collector spool (raw batches waiting for Kafka) size limit, MiB",
        "collector", "Collector spool")
    spool_memory_batches: int = _opt(16, "raw batches kept in memory before they go to the spool",
        "collector", "Collector spool")
    spool_send_timeout_s: int = _opt(5, "a raw batch not acknowledged within this is spooled, retried",
        "collector", "Collector spool")
    spool_flush_timeout_s: int = _opt(5, "at SIGTERM, time to deliver waiting batches (rest stays spooled)",
        "collector", "Collector spool")
    fluentd_buffer_dir: str = _opt("", "fluentd exporter's disk buffer; empty = <state_dir>/fluentd-buffer",
        "export-fluentd", "fluentd export")
    fluentd_buffer_max_bytes: int = _opt(256 * 1024 * 1024, "fluentd disk buffer bound in bytes",
        "export-fluentd", "fluentd export")
    fluentd_ack_timeout: int = _opt(10, "seconds to wait for fluentd's ack of a chunk before resending",
        "export-fluentd", "fluentd export")
    fluentd_compress: bool = _opt(False, "send CompressedPackedForward (gzip) to fluentd",
        "export-fluentd", "fluentd export")
    enable_k8s_api: bool = _opt(False, "watch this node's pods on the Kubernetes API: pod metadata (enricher), "
                                       "pod-scoped policies (collector)",
        "collector enricher", "Kubernetes")
    k8s_kubeconfig: str = _opt("", "kubeconfig file; empty = in-cluster config, else ~/.kube/config",
        "collector enricher", "Kubernetes")
    k8s_retry_max_ms: int = _opt(30000, "longest wait between Kubernetes API retries (backoff from 0.5 s)",
        "collector enricher", "Kubernetes")
    enable_tracing_policy_crd: bool = _opt(False, "load TracingPolicy/TracingPolicyNamespaced custom resources "
                                           "from the Kubernetes API (with enable_k8s_api)",
        "collector", "Policies")
    opa_url: str = _opt("", "Open Policy Agent server to take a policy set from (http://host:8181); empty = off",
        "collector", "Policies")
    opa_policy_path: str = _opt("tetrapipe/policies", "path of the policy set in OPA's Data API "
                                                      "(data.tetrapipe.policies)",
        "collector", "Policies")
    opa_poll_interval_ms: int = _opt(10000, "how often the OPA policy set is read",
        "collector", "Policies")
    opa_token: str = _opt("", "bearer token for OPA (prefer the environment variable)",
        "collector", "Policies", secret=True)
    enable_pod_annotations: bool = _opt(False, "put pod annotations in events",
        "enricher", "Kubernetes")
    event_cache_hold_ms: int = _opt(5000, "longest an event waits for its pod's metadata; 0 = never",
        "enricher", "Kubernetes")
    event_cache_size: int = _opt(10000, "events held for pod metadata at most",
        "enricher", "Kubernetes")
    enricher_group: str = _opt("tetrapipe-enricher", "consumer group of the enrichers (one per pipeline)",
        "enricher", "Enricher")
    state_topic: str = _opt("tetrapipe.state", "compacted topic of the enricher's process cache; "
                            "empty = no restart state",
        "enricher", "Enricher")
    export_rate_limit_report_interval: str = _opt("1m", "how often a rate_limit_info event reports drops",
        "export-json", "JSON export")
    enable_network_events: bool = _opt(False, "network sensor: TCP connect/accept/close events "
                                       "(process_kprobe tcp_connect, inet_csk_accept, tcp_close)",
        "collector", "Sensors")
    enable_loader_events: bool = _opt(False, "loader sensor: process_loader events for every file "
                                      "a process maps executable (shared libraries)",
        "collector", "Sensors")
    server_address: str = _opt("localhost:54321", "Tetragon's gRPC API: where `export grpc` listens and "
                               "getevents/status connect (host:port or unix:///path)",
        "export-grpc getevents status", "gRPC API")
    enable_udp_events: bool = _opt(False, "UDP sensor: process_kprobe udp_sendmsg events for every "
                                   "datagram sent on an IPv4/IPv6 UDP socket",
        "collector", "Sensors")
    count_uncaught: bool = _opt(True, "count the roads to a protected file or address the loaded policies "
                                "do not judge (tetrapipe_enforcement_uncaught_total, a WARNING each; one "
                                "more BPF program)",
        "collector", "Policies")
    policy_inode_root: str = _opt("/", "root under which Equal/Prefix file filters are resolved to inodes "
                                  "(hard links, bind mounts); /proc/1/root for a collector in a container "
                                  "with the host's pid namespace",
        "collector", "Policies")

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


def keys_for(command: str) -> list[str]:
    """The keys ``command`` offers as flags: those whose ``used_by`` names it (``run``: every
    service's keys); a key that declares no reader is offered by every service."""
    out = []
    for name, f in FIELDS.items():
        used_by = f.metadata.get("used_by") or tuple(SERVICES.split())
        if command in used_by or (command == "run" and set(used_by) & set(SERVICES.split())):
            out.append(name)
    return out


def _default_text(f: dataclasses.Field[Any]) -> str:
    if f.metadata.get("secret"):
        return ""
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
    if isinstance(default, bool):
        return f" (default: {str(default).lower()})"
    if isinstance(default, list):
        default = ",".join(default)
    if default == "":
        return " (default: empty)"
    return f" (default: {default!r})" if isinstance(default, str) else f" (default: {default})"


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Add one ``--flag`` per config key ``command`` reads, grouped by section, defaults shown.
    Defaults stay unset in the namespace so that the environment and the YAML file still apply."""
    parser.add_argument("--config", metavar="FILE",
                        help="YAML configuration file (also TETRAPIPE_CONFIG); every key of every "
                             "service is accepted there and as TETRAPIPE_<KEY> in the environment")
    names = keys_for(command)
    sections = [*SECTIONS, *sorted({FIELDS[n].metadata.get("section", "Other") for n in names} - set(SECTIONS))]
    for title in sections:
        mine = [n for n in names if FIELDS[n].metadata.get("section", "Other") == title]
        if not mine:
            continue
        group = parser.add_argument_group(f"{title} options")
        for name in mine:
            f = FIELDS[name]
            flag = "--" + name.replace("_", "-")
            text = f.metadata["help"] + _default_text(f)
            if isinstance(f.default, bool):
                group.add_argument(flag, dest=name, default=None, action=argparse.BooleanOptionalAction,
                                   help=text)
            elif f.default is dataclasses.MISSING:
                group.add_argument(flag, dest=name, default=None, action="append", metavar="VALUE",
                                   help=text + "; repeat or comma-separate")
            else:
                group.add_argument(flag, dest=name, default=None, metavar=name.split("_")[-1].upper(),
                                   help=text)


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
