"""The whole kernel pipeline on Apache Kafka 4.1 with SASL_SSL and SCRAM-SHA-512 served by Kafka
itself: collector → raw topic → enricher → events topic → JSON exporter, every stage logged in
as a user made with ``kafka-storage format --add-scram``, over the broker's TLS listener whose
certificate a CA made for the test session signed (the session's ``kafka`` fixture, one broker).
Then what a user gets wrong, each stage saying it in one line: a wrong password, and a CA that
did not sign the broker's certificate. (The same against the SCRAM and TLS fronts before Tansu:
test_kafka_scram.py and test_kafka_security.py.)"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import KAFKA_USERS
from harness import Pipeline, Service, wait_until
from kafka_cluster import KafkaCluster, make_tls_pem

USER = "bob"
MECH = "SCRAM-SHA-512"


def _settings(ca: Path, password: str) -> dict[str, str]:
    return {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": MECH,
            "kafka_sasl_username": USER, "kafka_sasl_password": password, "kafka_ssl_cafile": str(ca)}


def _no_secret(tmp: Path, secret: str, services: list[Service]) -> None:
    for svc in services:
        if svc.proc is not None and svc.proc.poll() is None:
            cmdline = Path(f"/proc/{svc.proc.pid}/cmdline").read_bytes()
            assert secret.encode() not in cmdline  # handed over in the environment, never argv
    for f in tmp.glob("*.log"):
        assert secret not in f.read_text(errors="replace"), f"the password is in {f.name}"


def _one_line(log: str, needle: str) -> str:
    lines = [x for x in log.splitlines() if needle in x.lower()]
    assert lines, log
    assert "Traceback" not in log and "Unable connect" not in log, log
    return lines[0]


@pytest.mark.kernel
def test_whole_pipeline_over_sasl_ssl_scram_sha512_on_kafka(bpf_ok: None, kafka: KafkaCluster,
                                                             kafka_certs: tuple[Path, Path],
                                                             tmp_path: Path) -> None:
    secret = KAFKA_USERS[USER]
    pipe = Pipeline(kafka.sasl_ssl_bootstrap, tmp_path, settings=_settings(kafka_certs[0], secret))
    try:
        pipe.start_all(exporters=("json",))
        _no_secret(tmp_path, secret, list(pipe.services.values()))
        marker = f"sasl-ssl-{uuid.uuid4().hex[:8]}"
        subprocess.run(["/bin/true", marker], check=True)
        wait_until(lambda: any(e.get("process_exec", {}).get("process", {}).get("arguments") == marker
                               for e in pipe.exported()), 60,
                   what="the event, through Kafka's SASL_SSL listener")
    finally:
        pipe.stop()
    _no_secret(tmp_path, secret, [])


@pytest.mark.kernel
def test_wrong_password_and_untrusted_ca_said_in_one_line_per_stage(bpf_ok: None, kafka: KafkaCluster,
                                                                    kafka_certs: tuple[Path, Path],
                                                                    tmp_path: Path) -> None:
    """Kafka refuses bob's login (wrong password): the enricher and the JSON exporter stop with
    status 2 and one line naming user and mechanism, the collector keeps observing and says the
    same reason in its retry line. A CA that did not sign the broker's certificate: the TLS
    handshake is refused, and each stage says so in one line."""
    ca = kafka_certs[0]
    other_ca, _ = make_tls_pem(tmp_path / "other-ca")
    cases = {"wrong-password": (_settings(ca, "not-the-password"), f"refused the {MECH.lower()} login of user 'bob'"),
             "untrusted-ca": (_settings(other_ca, KAFKA_USERS[USER]), "certificate verify failed")}
    pipes = {case: Pipeline(kafka.sasl_ssl_bootstrap, tmp_path / case, settings=settings)
             for case, (settings, _) in cases.items()}
    try:
        for case, pipe in pipes.items():  # both cases at once: six processes, one wait
            (tmp_path / case).mkdir()
            pipe.start("enricher", "enricher", wait=False)
            pipe.start("export-json", "export", "json", wait=False)
            pipe.start("collector", "collector", wait=False)
        for case, pipe in pipes.items():
            needle = cases[case][1]
            for svc in (pipe.services["enricher"], pipe.services["export-json"]):
                assert svc.proc is not None
                rc = svc.proc.wait(90)
                line = _one_line(svc.log(), needle)
                assert rc == 2, (case, svc.name, rc, svc.log())
                assert len([x for x in svc.log().splitlines() if needle in x.lower()]) == 1, svc.log()
                assert "127.0.0.1" in line, line  # names the broker it tried
                if case == "untrusted-ca":  # says which file to check, and does not blame the login
                    assert str(other_ca) in line and "kafka_ssl_cafile" in line and "login" not in line, line
            collector = pipe.services["collector"]
            wait_until(lambda c=collector, n=needle: n in c.log().lower(), 90, what=f"the collector's {case} line")
            assert collector.proc is not None and collector.proc.poll() is None, collector.log()
            _one_line(collector.log(), needle)
    finally:
        for pipe in pipes.values():
            pipe.stop()
    for case in cases:
        _no_secret(tmp_path / case, KAFKA_USERS[USER], [])


def test_untrusted_certificate_is_not_called_a_refused_login() -> None:
    """ssl.SSLCertVerificationError is also a ValueError, which aiokafka's SCRAM client raises for
    a refused login: the certificate is told apart first, with or without SASL."""
    import ssl

    from tetrapipe import kafka as kafka_lib
    from tetrapipe.config import Config

    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_message = "self-signed certificate in certificate chain"
    for kw in ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": MECH, "kafka_sasl_username": USER},
               {"kafka_security_protocol": "SSL"}):
        err = kafka_lib._auth_refused(Config(kafka="b:9093", kafka_ssl_cafile="/etc/ca.pem", **kw), exc)
        assert isinstance(err, kafka_lib.KafkaTlsError) and isinstance(err, kafka_lib.KafkaAuthError)
        assert str(err).endswith("broker b:9093 over " + kw["kafka_security_protocol"] + ": certificate verify failed "
                            "(self-signed certificate in certificate chain): check kafka_ssl_cafile (/etc/ca.pem)")
    login = kafka_lib._auth_refused(Config(kafka="b", kafka_sasl_mechanism=MECH, kafka_sasl_username=USER),
                                    ValueError("bad server signature"))
    assert login is not None and not isinstance(login, kafka_lib.KafkaTlsError) and "login of user" in str(login)
