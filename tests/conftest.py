"""Shared fixtures: one embedded broker per session, BPF availability, the service harness.

A kernel test may skip only where BPF truly cannot load here; with CI=true that is a failure.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Pipeline  # noqa: E402

from tetrapipe.broker import EmbeddedBroker  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# the uncaught-road counter (collector/policy/uncaught.py) costs a compile per PolicyManager and
# collector: off in the suite, on in tests/test_bypass.py, which asserts it for every missed road
os.environ.setdefault("TETRAPIPE_COUNT_UNCAUGHT", "0")

if os.geteuid() == 0:  # as the collector does: tests that read tracefs formats at import see them
    try:
        from collector.kernel_headers import ensure_tracefs

        ensure_tracefs()
    except Exception:  # noqa: BLE001 - the kernel tests say why BPF cannot work here
        pass


def skip_or_fail(reason: str) -> None:
    """Skip a test whose real dependency is missing; under CI=true, fail instead."""
    if IN_CI:
        pytest.fail(f"CI=true: cannot skip: {reason}")
    pytest.skip(reason)


def bpf_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "not root: loading BPF programs needs CAP_BPF/CAP_PERFMON/CAP_SYS_ADMIN"
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "no BTF at /sys/kernel/btf/vmlinux: cannot generate kernel types for bcc"
    try:
        import bcc  # noqa: F401
    except ImportError as exc:
        return f"bcc is not importable ({exc}); run scripts/setup.sh"
    return None


@pytest.fixture(scope="session")
def bpf_ok() -> None:
    reason = bpf_unavailable_reason()
    if reason:
        skip_or_fail(reason)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A real Kafka-compatible broker (Tansu) for the whole session."""
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as b:
        yield b


@pytest.fixture
def pipeline(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[Pipeline]:
    p = Pipeline(broker.bootstrap, tmp_path)
    try:
        yield p
    finally:
        p.stop()


# ---- Apache Kafka (tests/kafka_cluster.py; installed by scripts/setup-kafka.sh) --------------
KAFKA_USERS = {"alice": "alice-secret-1", "bob": "bob-secret-2"}


@pytest.fixture(scope="session")
def kafka_certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(ca.pem, the brokers' PEM keystore): a CA made for this session."""
    from kafka_cluster import make_tls_pem

    return make_tls_pem(tmp_path_factory.mktemp("kafka-certs"))


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory, kafka_certs: tuple[Path, Path]) -> Iterator[object]:
    """One Apache Kafka broker (KRaft) for the session: PLAINTEXT, SASL_PLAINTEXT and SASL_SSL
    with SCRAM-SHA-256/512 users KAFKA_USERS, SSL with a CA made here."""
    from kafka_cluster import KafkaCluster, unavailable_reason

    reason = unavailable_reason()
    if reason:
        skip_or_fail(reason)
    with KafkaCluster(tmp_path_factory.mktemp("kafka1"), size=1, scram_users=KAFKA_USERS,
                      tls_pem=kafka_certs[1]) as k:
        yield k


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Three Apache Kafka nodes (KRaft, each broker and controller) on loopback, for the session."""
    from kafka_cluster import KafkaCluster, unavailable_reason

    reason = unavailable_reason()
    if reason:
        skip_or_fail(reason)
    with KafkaCluster(tmp_path_factory.mktemp("kafka3"), size=3) as k:
        yield k


@pytest.fixture
def kafka_pipeline(kafka: object, tmp_path: Path) -> Iterator[Pipeline]:
    p = Pipeline(kafka.bootstrap, tmp_path)  # type: ignore[attr-defined]
    try:
        yield p
    finally:
        p.stop()
