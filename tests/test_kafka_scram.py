"""A successful Kafka SASL/SCRAM login (SCRAM-SHA-256 and -512, over SASL_PLAINTEXT and
SASL_SSL) by our real stages, and the refusals a Tetragon user meets: a wrong password, an
unknown user, a mechanism the user has no credential for. Each refusal stops the stage with
exit code 2 and one line that names broker, mechanism and user; no password is in any log or
command line.

Against what: the embedded broker (Tansu, plaintext) behind tests/scram_front.py, a SCRAM front
that verifies the exchange server-side (RFC 5802, the ``scramp`` library) before it pipes the
connection to Tansu; for SASL_SSL, tests/tls_proxy.py's TLS front before it. Tansu 0.6.0 cannot
be the SCRAM server for a successful login: it keeps no SCRAM credential in ``memory://`` or
``s3://`` storage (scram_front.py says what was measured). Its own refusal is tested in
test_kafka_security.py."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import Pipeline, wait_until
from scram_front import ScramFront
from tls_proxy import TlsProxy, make_test_certs

from tetrapipe import kafka
from tetrapipe.broker import EmbeddedBroker, free_port
from tetrapipe.config import Config

USERS = {"alice": "SCRAM-SHA-256", "bob": "SCRAM-SHA-512"}  # one credential each


@dataclass
class ScramBroker:
    bootstrap: str
    front: ScramFront
    passwords: dict[str, str]
    broker_log: Path
    tls: TlsProxy | None = None

    def settings(self, user: str, mechanism: str | None = None, password: str | None = None,
                 cafile: Path | None = None) -> dict[str, str]:
        s = {"kafka_security_protocol": "SASL_SSL" if self.tls else "SASL_PLAINTEXT",
             "kafka_sasl_mechanism": mechanism or USERS[user], "kafka_sasl_username": user,
             "kafka_sasl_password": password if password is not None else self.passwords[user]}
        if cafile is not None:
            s["kafka_ssl_cafile"] = str(cafile)
        return s


@contextmanager
def scram_broker(tmp: Path, certs: Path | None = None) -> Iterator[ScramBroker]:
    """Tansu on a private port; clients reach it only through the SCRAM front (and, with
    ``certs``, the TLS front before it): the broker's metadata names the outermost port."""
    passwords = {u: f"tp-secret-{uuid.uuid4().hex}" for u in USERS}
    front_port = free_port()
    outer = free_port() if certs else front_port
    log = tmp / "broker.log"
    with EmbeddedBroker(advertised_port=outer, log_path=log) as broker, \
            ScramFront(front_port, broker.port, {u: (m, passwords[u]) for u, m in USERS.items()}) as front:
        tls = TlsProxy(outer, front_port, certs / "broker.pem", certs / "broker.key").start() if certs else None
        try:
            yield ScramBroker(f"127.0.0.1:{outer}", front, passwords, log, tls)
        finally:
            if tls is not None:
                tls.stop()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_certs(tmp_path_factory.mktemp("certs"))


def assert_no_secret(sb: ScramBroker, *places: Path) -> None:
    for f in places:
        text = f.read_text(errors="replace")
        for user, secret in sb.passwords.items():
            assert secret not in text, f"the password of {user} is in {f.name}"


@pytest.mark.parametrize("user", ["alice", "bob"])
def test_stage_helpers_log_in_and_move_records(user: str, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """tetrapipe.kafka's helpers, which every stage uses (topic creation, the acks=all
    producer, the consumer group): logged in with the user's mechanism, records go through."""
    caplog.set_level(logging.DEBUG)
    with scram_broker(tmp_path) as sb:
        s = sb.settings(user)
        topic = f"scram-{uuid.uuid4().hex[:8]}"
        cfg = Config(kafka=sb.bootstrap, kafka_security_protocol=s["kafka_security_protocol"],
                     kafka_sasl_mechanism=s["kafka_sasl_mechanism"], kafka_sasl_username=user,
                     kafka_sasl_password=s["kafka_sasl_password"])
        sent = [f"record {i} of {user}".encode() for i in range(50)]

        async def move() -> list[bytes]:
            await kafka.ensure_topics(cfg, [topic])
            producer = await kafka.start_producer(cfg)
            try:
                for v in sent:
                    await producer.send_and_wait(topic, v)
            finally:
                await producer.stop()
            consumer = kafka.make_consumer(cfg, f"g-{topic}", [topic])
            await consumer.start()
            got: list[bytes] = []
            try:
                while len(got) < len(sent):
                    batch = await asyncio.wait_for(consumer.getmany(timeout_ms=500), 20)
                    got += [m.value for msgs in batch.values() for m in msgs]
            finally:
                await consumer.stop()
            return got

        assert asyncio.run(move()) == sent
        logins = sb.front.ok_logins(USERS[user])
        assert logins and all(x.user == user for x in logins), sb.front.logins
        assert not [x for x in sb.front.logins if not x.ok], sb.front.logins
    (tmp_path / "test.log").write_text(caplog.text)
    assert_no_secret(sb, tmp_path / "test.log", sb.broker_log)


@pytest.mark.kernel
@pytest.mark.parametrize("user, tls", [("alice", False), ("bob", True)],
                         ids=["SCRAM-SHA-256-SASL_PLAINTEXT", "SCRAM-SHA-512-SASL_SSL"])
def test_whole_pipeline_logs_in_with_scram(bpf_ok: None, user: str, tls: bool, certs: Path,
                                           tmp_path: Path) -> None:
    """collector → enricher → JSON exporter, every stage logged in as ``user``: an exec of ours
    comes out in the export file."""
    with scram_broker(tmp_path, certs if tls else None) as sb:
        pipe = Pipeline(sb.bootstrap, tmp_path, settings=sb.settings(user, cafile=certs / "ca.pem"))
        try:
            pipe.start_all(exporters=("json",))
            for svc in pipe.services.values():
                assert svc.proc is not None
                cmdline = Path(f"/proc/{svc.proc.pid}/cmdline").read_bytes()
                assert sb.passwords[user].encode() not in cmdline  # environment, never argv
            marker = f"scram-{uuid.uuid4().hex[:8]}"
            subprocess.run(["/bin/true", marker], check=True)
            wait_until(lambda: any(e.get("process_exec", {}).get("process", {}).get("arguments") == marker
                                   for e in pipe.exported()), 40, what="the event, carried after a SCRAM login")
        finally:
            pipe.stop()
        ok = sb.front.ok_logins(USERS[user])
        assert len(ok) >= 3 and all(x.user == user for x in ok), sb.front.logins  # three stages
        assert not [x for x in sb.front.logins if not x.ok], sb.front.logins
        if sb.tls is not None:
            assert sb.tls.handshakes >= 3 and sb.tls.failed_handshakes == 0
    assert_no_secret(sb, sb.broker_log, *tmp_path.glob("*.log"))


REFUSALS = {  # case: (user, mechanism, password; None = the user's own)
    "wrong-password": ("alice", "SCRAM-SHA-256", "not-the-password"),
    "unknown-user": ("mallory", "SCRAM-SHA-512", "any-password"),
    "no-credential-for-mechanism": ("alice", "SCRAM-SHA-512", None),
}


def _assert_refused_in_one_line(log: str, user: str, mechanism: str) -> None:
    lines = [x for x in log.splitlines() if f"refused the {mechanism} login of user '{user}'" in x]
    assert len(lines) == 1, log
    assert "SaslAuthenticationFailed" in lines[0] or "Authentication failed" in lines[0], lines[0]
    assert "Traceback" not in log, log
    assert "Unable connect" not in log, log  # aiokafka's own line, said once more, in other words


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_login_stops_the_stage_with_one_line(case: str, tmp_path: Path) -> None:
    user, mechanism, password = REFUSALS[case]
    with scram_broker(tmp_path) as sb:
        pipe = Pipeline(sb.bootstrap, tmp_path, settings=sb.settings(user, mechanism, password))
        try:
            services = [pipe.start("enricher", "enricher", wait=False),
                        pipe.start("export-json", "export", "json", wait=False)]
            for svc in services:
                assert svc.proc is not None
                assert svc.proc.wait(60) == 2, svc.log()
                _assert_refused_in_one_line(svc.log(), user, mechanism)
        finally:
            pipe.stop()
        refused = [x for x in sb.front.logins if not x.ok]
        assert len(refused) >= 2 and all(x.user == user and x.mechanism == mechanism for x in refused)
        assert not sb.front.ok_logins()
        secret = sb.passwords.get(user) if password is None else password
        for f in [sb.broker_log, *tmp_path.glob("*.log")]:
            assert secret not in f.read_text(errors="replace"), f"the password is in {f.name}"


@pytest.mark.kernel
def test_collector_with_a_wrong_password_spools_says_why_and_loses_nothing(bpf_ok: None,
                                                                          tmp_path: Path) -> None:
    """The collector is the one stage that would lose kernel events by stopping: with a refused
    login it keeps observing, spools, and says why in its retry line. Restarted with the right
    password, what it spooled reaches the export file."""
    with scram_broker(tmp_path) as sb:
        pipe = Pipeline(sb.bootstrap, tmp_path, settings=sb.settings("bob"))
        try:
            wrong = pipe.start("collector-wrong-password", "collector", wait=False,
                               extra={"kafka_sasl_password": "not-the-password"})
            line = "refused the SCRAM-SHA-512 login of user 'bob'"
            wait_until(lambda: line in wrong.log(), 90, what="the collector's refusal line")
            marker = f"scram-spooled-{uuid.uuid4().hex[:8]}"
            subprocess.run(["/bin/true", marker], check=True)
            time.sleep(1.0)  # framed (batch_max_ms) before the stop
            wrong.signal(signal.SIGTERM)
            assert wrong.proc is not None and wrong.proc.wait(30) == 0, wrong.log()
            log = wrong.log()
            assert "spooling" in [x for x in log.splitlines() if line in x][0], log
            assert "Traceback" not in log and "Unable connect" not in log, log
            assert any((tmp_path / "state" / "spool").iterdir()), "nothing was spooled"
            assert not sb.front.ok_logins() and [x for x in sb.front.logins if x.user == "bob"]

            pipe.start_all(exporters=("json",))  # the right password, the same spool
            wait_until(lambda: any(e.get("process_exec", {}).get("process", {}).get("arguments") == marker
                                   for e in pipe.exported()), 60, what="the spooled event, exported")
        finally:
            pipe.stop()
        assert len(sb.front.ok_logins("SCRAM-SHA-512")) >= 3
    assert_no_secret(sb, sb.broker_log, *tmp_path.glob("*.log"))
