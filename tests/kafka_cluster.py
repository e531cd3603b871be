"""Apache Kafka (KRaft, no ZooKeeper) for the tests and bench/: one broker or a loopback cluster of
``n`` nodes, each a JVM acting as broker and controller, data in a temp dir.

The jars come from ``scripts/setup-kafka.sh`` (/var/cache/tetrapipe-build/kafka/<version>/libs).
Each node can serve, besides its PLAINTEXT listener, SASL_PLAINTEXT (SCRAM-SHA-256/512, users
made at format time with ``kafka-storage format --add-scram``) and SSL / SASL_SSL (a PEM key and
certificate chain signed by a CA the test makes). Every JVM gets PR_SET_PDEATHSIG: a killed test
runner leaves no broker behind.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

CACHE = Path(os.environ.get("TETRAPIPE_BUILD_CACHE", "/var/cache/tetrapipe-build")) / "kafka"
VERSION = os.environ.get("TETRAPIPE_KAFKA_VERSION", "4.1.1")
HEAP = os.environ.get("TETRAPIPE_KAFKA_HEAP", "-Xmx384m")


def kafka_home() -> Path | None:
    d = CACHE / VERSION
    return d if (d / ".complete").exists() else None


def unavailable_reason() -> str | None:
    if kafka_home() is None:
        return f"Apache Kafka {VERSION} is not installed under {CACHE}: run scripts/setup-kafka.sh"
    if shutil.which("java") is None:
        return "no java on PATH: run scripts/setup-kafka.sh"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    os.setpgid(0, 0)


def java(main: str, *args: str, heap: str = "-Xmx128m") -> list[str]:
    home = kafka_home()
    assert home is not None, unavailable_reason()
    return ["java", heap, "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto",
            f"-Dlog4j2.configurationFile={home / 'log4j2.yaml'}", "-cp", f"{home / 'libs'}/*", main, *args]


def run_tool(main: str, *args: str, timeout: float = 120) -> str:
    """A Kafka command-line tool by its main class (kafka.tools.StorageTool = kafka-storage,
    kafka.admin.ConfigCommand = kafka-configs, ...). Raises with its output on failure."""
    p = subprocess.run(java(main, *args), capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{main} {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p.stdout


@dataclass
class Node:
    node_id: int
    port: int            # PLAINTEXT
    controller_port: int
    sasl_port: int = 0   # SASL_PLAINTEXT (SCRAM)
    ssl_port: int = 0    # SSL
    sasl_ssl_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    stopped_by_test: bool = False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class KafkaCluster:
    """``size`` KRaft nodes (broker+controller each) on 127.0.0.1."""

    workdir: Path
    size: int = 1
    scram_users: dict[str, str] = field(default_factory=dict)   # user -> password (both mechanisms)
    tls_pem: Path | None = None      # PEM file: PKCS#8 key then the certificate chain
    broker_config: dict[str, str] = field(default_factory=dict)
    heap: str = HEAP
    nodes: list[Node] = field(default_factory=list)
    cluster_id: str = ""

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for i in range(1, self.size + 1):
            n = Node(i, _free_port(), _free_port())
            if self.scram_users:
                n.sasl_port = _free_port()
            if self.tls_pem:
                n.ssl_port = _free_port()
                if self.scram_users:
                    n.sasl_ssl_port = _free_port()
            self.nodes.append(n)

    # ---- addresses ----------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def sasl_bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.sasl_port}" for n in self.nodes)

    @property
    def ssl_bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.ssl_port}" for n in self.nodes)

    @property
    def sasl_ssl_bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.sasl_ssl_port}" for n in self.nodes)

    def node(self, node_id: int) -> Node:
        return next(n for n in self.nodes if n.node_id == node_id)

    # ---- configuration ------------------------------------------------------------------
    def _properties(self, n: Node) -> str:
        rf = min(3, self.size)
        listeners = [f"PLAINTEXT://127.0.0.1:{n.port}"]
        if n.sasl_port:
            listeners.append(f"SASL_PLAINTEXT://127.0.0.1:{n.sasl_port}")
        if n.ssl_port:
            listeners.append(f"SSL://127.0.0.1:{n.ssl_port}")
        if n.sasl_ssl_port:
            listeners.append(f"SASL_SSL://127.0.0.1:{n.sasl_ssl_port}")
        props = {
            "process.roles": "broker,controller",
            "node.id": str(n.node_id),
            "controller.quorum.voters": ",".join(f"{m.node_id}@127.0.0.1:{m.controller_port}"
                                                 for m in self.nodes),
            "listeners": ",".join([*listeners, f"CONTROLLER://127.0.0.1:{n.controller_port}"]),
            "advertised.listeners": ",".join(listeners),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,"
                                              "SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL",
            "log.dirs": str(self.workdir / f"node{n.node_id}" / "data"),
            "num.partitions": "1",
            "offsets.topic.replication.factor": str(rf),
            "offsets.topic.num.partitions": "5",
            "transaction.state.log.replication.factor": str(rf),
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": str(rf),
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            # a killed node is noticed in seconds, not the default 9 s / 18 s
            "broker.session.timeout.ms": "4000",
            "broker.heartbeat.interval.ms": "500",
            "controller.quorum.election.timeout.ms": "1000",
            "controller.quorum.fetch.timeout.ms": "2000",
            "replica.lag.time.max.ms": "5000",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "num.replica.fetchers": "1",
            "log.cleaner.dedupe.buffer.size": str(4 * 1024 * 1024),
            "log.cleaner.backoff.ms": "1000",
        }
        if self.scram_users:
            props["sasl.enabled.mechanisms"] = "SCRAM-SHA-256,SCRAM-SHA-512"
            for lst in ("sasl_plaintext", "sasl_ssl"):
                for mech in ("scram-sha-256", "scram-sha-512"):
                    props[f"listener.name.{lst}.{mech}.sasl.jaas.config"] = \
                        "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        if self.tls_pem:
            props["ssl.keystore.type"] = "PEM"
            props["ssl.keystore.location"] = str(self.tls_pem)
        props.update(self.broker_config)
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def format(self) -> None:
        self.cluster_id = run_tool("kafka.tools.StorageTool", "random-uuid").strip()
        for n in self.nodes:
            d = self.workdir / f"node{n.node_id}"
            d.mkdir(parents=True, exist_ok=True)
            (d / "server.properties").write_text(self._properties(n))
            args = ["format", "-t", self.cluster_id, "-c", str(d / "server.properties"), "--ignore-formatted"]
            for user, pw in self.scram_users.items():
                for mech in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
                    args += ["--add-scram", f"{mech}=[name={user},password={pw}]"]
            run_tool("kafka.tools.StorageTool", *args)

    # ---- life cycle ---------------------------------------------------------------------
    def start_node(self, n: Node) -> None:
        d = self.workdir / f"node{n.node_id}"
        out = open(d / "kafka.log", "ab")  # noqa: SIM115 - the child holds it
        n.proc = subprocess.Popen(java("kafka.Kafka", str(d / "server.properties"), heap=self.heap),
                                  stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        n.stopped_by_test = False

    def start(self, timeout: float = 120.0) -> KafkaCluster:
        if not self.cluster_id:
            self.format()
        for n in self.nodes:
            if not n.alive:
                self.start_node(n)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Every live node answers metadata and the cluster lists all live brokers."""
        deadline = time.monotonic() + timeout
        want = {n.node_id for n in self.nodes if n.alive}
        while True:
            for n in self.nodes:
                if n.proc is not None and n.proc.poll() is not None and not n.stopped_by_test:
                    raise RuntimeError(f"kafka node {n.node_id} exited {n.proc.returncode}:\n{self.log(n)}")
            try:
                if self._listening() and asyncio.run(self._brokers()) >= want:
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"kafka cluster not ready after {timeout}s:\n"
                                   + "\n".join(self.log(n) for n in self.nodes))
            time.sleep(0.5)

    def _listening(self) -> bool:
        for n in self.nodes:
            if n.alive:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", n.port)) != 0:
                        return False
        return True

    async def _brokers(self) -> set[int]:
        from aiokafka.admin import AIOKafkaAdminClient

        live = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes if n.alive)
        admin = AIOKafkaAdminClient(bootstrap_servers=live, request_timeout_ms=3000)
        await admin.start()
        try:
            meta = await admin.describe_cluster()
            return {b["node_id"] for b in meta["brokers"]}
        finally:
            await admin.close()

    def kill9(self, node_id: int) -> None:
        n = self.node(node_id)
        if n.alive and n.proc is not None:
            n.stopped_by_test = True
            n.proc.send_signal(signal.SIGKILL)
            n.proc.wait()

    def stop_node(self, node_id: int, timeout: float = 30.0) -> None:
        n = self.node(node_id)
        if n.alive and n.proc is not None:
            n.stopped_by_test = True
            n.proc.send_signal(signal.SIGTERM)
            try:
                n.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                n.proc.kill()
                n.proc.wait()

    def restart_node(self, node_id: int, timeout: float = 120.0) -> None:
        self.start_node(self.node(node_id))
        self.wait_ready(timeout)

    def stop(self) -> None:
        for n in self.nodes:  # SIGTERM to all at once: a controlled shutdown of the quorum
            if n.alive and n.proc is not None:
                n.stopped_by_test = True
                n.proc.send_signal(signal.SIGTERM)
        for n in self.nodes:
            if n.proc is not None:
                try:
                    n.proc.wait(30)
                except subprocess.TimeoutExpired:
                    n.proc.kill()
                    n.proc.wait()

    def __enter__(self) -> KafkaCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self, n: Node) -> str:
        try:
            return (self.workdir / f"node{n.node_id}" / "kafka.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    # ---- inspection ---------------------------------------------------------------------
    def partition_roles(self, topic: str, partition: int = 0) -> tuple[int, list[int], list[int]]:
        """(leader, replicas, in-sync replicas) of a partition (asked again while the admin
        client picks a node that just died)."""
        for attempt in range(20):
            try:
                return asyncio.run(self._roles(topic, partition))
            except Exception:
                if attempt == 19:
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")

    async def _roles(self, topic: str, partition: int) -> tuple[int, list[int], list[int]]:
        from aiokafka.admin import AIOKafkaAdminClient

        live = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes if n.alive)
        admin = AIOKafkaAdminClient(bootstrap_servers=live, request_timeout_ms=5000)
        await admin.start()
        try:
            (desc,) = await admin.describe_topics([topic])
            for p in desc["partitions"]:
                if p["partition"] == partition:
                    return p["leader"], list(p["replicas"]), list(p["isr"])
            raise KeyError(f"{topic}-{partition}")
        finally:
            await admin.close()

    def topic_config(self, topic: str) -> str:
        """``kafka-configs --describe --all`` of a topic (real Kafka's own tool)."""
        return run_tool("kafka.admin.ConfigCommand", "--bootstrap-server", self.bootstrap.split(",")[0],
                        "--entity-type", "topics", "--entity-name", topic, "--describe", "--all")


def make_tls_pem(d: Path) -> tuple[Path, Path]:
    """A CA (ca.pem) and the brokers' PEM keystore (broker-keystore.pem: PKCS#8 key, then the
    certificate for 127.0.0.1/localhost signed by the CA). Returns (ca.pem, keystore)."""
    d.mkdir(parents=True, exist_ok=True)

    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
         "-days", "2", "-subj", f"/CN=tetrapipe-test-ca-{uuid.uuid4().hex[:6]}")
    ossl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr",
         "-subj", "/CN=localhost")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ossl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "broker.pem", "-days", "2", "-extfile", "san.ext")
    ossl("pkcs8", "-topk8", "-nocrypt", "-in", "broker.key", "-out", "broker.p8")
    ks = d / "broker-keystore.pem"
    ks.write_text((d / "broker.p8").read_text() + (d / "broker.pem").read_text() + (d / "ca.pem").read_text())
    return d / "ca.pem", ks
