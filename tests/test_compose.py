"""docker-compose.yml (no Docker engine here): parsed with PyYAML and checked service by service:
images, commands, ports, mounts, and that every file it names exists and says what the other
services expect (ports, hostnames, config keys)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tetrapipe import config as config_mod
from tetrapipe import kafka as kafka_lib
from tetrapipe.supervisor import PORTS

REPO = Path(__file__).resolve().parent.parent
KAFKA_NODES = ("kafka-1", "kafka-2", "kafka-3")
KAFKA_VERSION = re.search(r"KAFKA_VERSION:-([\d.]+)", (REPO / "scripts/setup-kafka.sh").read_text())[1]  # type: ignore[index]
TETRAPIPE_SERVICES = {"collector": "collector", "enricher": "enricher", "export-json": "export json",
                      "export-prometheus": "export prometheus", "export-fluentd": "export fluentd"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _mounts(svc: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    for v in svc.get("volumes", []):
        parts = v.split(":")
        out.append((parts[0], parts[1], parts[2] if len(parts) > 2 else "rw"))
    return out


def _port(svc: dict[str, Any]) -> set[int]:
    return {int(p.split(":")[-1]) for p in svc.get("ports", [])}


def test_services_and_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {*KAFKA_NODES, *TETRAPIPE_SERVICES, "fluentd", "prometheus", "grafana"}
    for node in KAFKA_NODES:  # the version the tests run
        assert services[node]["image"] == f"apache/kafka:{KAFKA_VERSION}"
    assert services["fluentd"]["image"].startswith("fluent/fluentd:v1")
    assert services["prometheus"]["image"].startswith("prom/prometheus:v")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    for name in TETRAPIPE_SERVICES:
        assert services[name]["image"] == "tetrapipe:latest"
        build = services[name]["build"]
        assert (REPO / build["context"] / build["dockerfile"]).is_file()
        for node in KAFKA_NODES:
            assert services[name]["depends_on"][node]["condition"] == "service_healthy"


def broker_properties(env: dict[str, Any]) -> dict[str, str]:
    """The server.properties the apache/kafka image makes of KAFKA_* variables: the prefix off,
    ``___`` is ``-``, ``__`` is ``_``, ``_`` is ``.``, lower case."""
    props = {}
    for k, v in env.items():
        if k.startswith("KAFKA_") and k != "KAFKA_HEAP_OPTS":
            name = k[6:].lower().replace("___", "\0").replace("__", "\1").replace("_", ".")
            props[name.replace("\0", "-").replace("\1", "_")] = str(v)
    return props


def test_kafka_is_three_kraft_nodes(compose: dict[str, Any]) -> None:
    voters = set()
    for i, node in enumerate(KAFKA_NODES, 1):
        svc = compose["services"][node]
        props = broker_properties(svc["environment"])
        assert set(props["process.roles"].split(",")) == {"broker", "controller"}
        assert props["node.id"] == str(i)
        assert f"PLAINTEXT://{node}:9092" in props["advertised.listeners"]
        assert "healthcheck" in svc and f"{node}-data" in compose["volumes"]
        assert not any("zookeeper" in k for k in props)
        voters.add(props["controller.quorum.voters"])
        # a KRaft cluster id is 16 bytes in URL-safe base64, the same on every node
        assert len(base64.urlsafe_b64decode(svc["environment"]["CLUSTER_ID"] + "==")) == 16
    assert voters == {",".join(f"{i}@{n}:9093" for i, n in enumerate(KAFKA_NODES, 1))}
    assert len({compose["services"][n]["environment"]["CLUSTER_ID"] for n in KAFKA_NODES}) == 1


def test_replication_and_message_size_match_what_tetrapipe_uses(compose: dict[str, Any]) -> None:
    """What the crash suite ran on three brokers: 3 replicas, min.insync.replicas 2. The config
    file says it, tetrapipe's own defaults pick the same for three brokers, and the brokers'
    defaults (topics made by others, internal topics) agree; Kafka takes a message of the size
    tetrapipe cuts raw batches below."""
    cfg = config_mod.load(None, {"TETRAPIPE_CONFIG": str(REPO / "deploy/tetrapipe/tetrapipe.yaml")})
    brokers = len(cfg.kafka.split(","))
    assert brokers == len(KAFKA_NODES)
    assert kafka_lib.replication(cfg, brokers) == (3, 2)
    assert kafka_lib.replication(config_mod.Config(), brokers) == (3, 2)  # the defaults agree
    for node in KAFKA_NODES:
        props = broker_properties(compose["services"][node]["environment"])
        assert int(props["default.replication.factor"]) == 3 and int(props["min.insync.replicas"]) == 2
        assert int(props["offsets.topic.replication.factor"]) == 3
        assert int(props["transaction.state.log.replication.factor"]) == 3
        assert int(props["transaction.state.log.min.isr"]) == 2
        assert int(props["message.max.bytes"]) >= cfg.kafka_max_message_bytes
        assert cfg.kafka_max_message_bytes == config_mod.Config().kafka_max_message_bytes
        assert props["auto.create.topics.enable"] == "false"  # tetrapipe creates its topics


def test_sasl_ssl_override_is_the_tested_broker_setup(compose: dict[str, Any], tmp_path: Path) -> None:
    """docker-compose.sasl-ssl.yml: each node's SASL_SSL listener is configured as the test
    brokers' (tests/kafka_cluster.py), every tetrapipe service uses it with SCRAM-SHA-512 and the
    CA of deploy/kafka/make-certs.sh, whose broker certificate names every node."""
    from kafka_cluster import KafkaCluster

    over = yaml.safe_load((REPO / "docker-compose.sasl-ssl.yml").read_text())["services"]
    tested = KafkaCluster(tmp_path / "k", size=1, scram_users={"u": "p"}, tls_pem=tmp_path / "ks.pem")
    tested_props = dict(line.split("=", 1) for line in tested._properties(tested.nodes[0]).splitlines())
    for node in KAFKA_NODES:
        env = {**compose["services"][node]["environment"], **over[node]["environment"]}
        props = broker_properties(env)
        assert f"SASL_SSL://{node}:9094" in props["advertised.listeners"].split(",")
        assert "SASL_SSL://:9094" in props["listeners"].split(",")
        assert "SASL_SSL:SASL_SSL" in props["listener.security.protocol.map"].split(",")
        assert "SCRAM-SHA-512" in props["sasl.enabled.mechanisms"].split(",")
        key = "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"
        assert props[key] == tested_props[key]
        assert props["ssl.keystore.type"] == tested_props["ssl.keystore.type"] == "PEM"
        mounts = {dst: src for src, dst, _ in _mounts(over[node])}
        assert mounts[props["ssl.keystore.location"]] == "./deploy/kafka/secrets/broker-keystore.pem"
    for name in TETRAPIPE_SERVICES:
        env = over[name]["environment"]
        assert env["TETRAPIPE_KAFKA"] == ",".join(f"{n}:9094" for n in KAFKA_NODES)
        assert env["TETRAPIPE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env["TETRAPIPE_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
        assert env["TETRAPIPE_KAFKA_SASL_PASSWORD"].startswith("${")  # from the environment, not the file
        mounts = {dst: src for src, dst, _ in _mounts(over[name])}
        assert mounts[env["TETRAPIPE_KAFKA_SSL_CAFILE"]] == "./deploy/kafka/secrets/ca.pem"
        assert over[name]["depends_on"]["kafka-scram-user"]["condition"] == "service_completed_successfully"
    user_cmd = " ".join(over["kafka-scram-user"]["command"])
    assert "--entity-name tetrapipe" in user_cmd and "SCRAM-SHA-512=" in user_cmd
    # the certificates: the CA vouches for every node's name
    certs = tmp_path / "secrets"
    subprocess.run([str(REPO / "deploy/kafka/make-certs.sh"), str(certs)], check=True, capture_output=True)
    for node in KAFKA_NODES:
        subprocess.run(["openssl", "verify", "-CAfile", certs / "ca.pem", "-verify_hostname", node,
                        certs / "broker-keystore.pem"], check=True, capture_output=True)
    bad = subprocess.run(["openssl", "verify", "-CAfile", certs / "ca.pem", "-verify_hostname", "kafka-9",
                          certs / "broker-keystore.pem"], capture_output=True)
    assert bad.returncode != 0


def test_tetrapipe_commands_ports_and_config(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, sub in TETRAPIPE_SERVICES.items():
        cmd = services[name]["command"]
        assert " ".join(cmd).startswith(sub)
        assert cmd[cmd.index("--config") + 1] == "/etc/tetrapipe/tetrapipe.yaml"
        port = PORTS[name]  # the same port as `tetrapipe run` gives the service
        assert cmd[cmd.index("--metrics-address") + 1] == f":{port}"
        assert port in _port(services[name])
        mounts = {dst: src for src, dst, _ in _mounts(services[name])}
        assert (REPO / mounts["/etc/tetrapipe/tetrapipe.yaml"]).is_file()
    # the shared config file is one tetrapipe really accepts, pointing at the compose services
    cfg = config_mod.load(None, {"TETRAPIPE_CONFIG": str(REPO / "deploy/tetrapipe/tetrapipe.yaml")})
    assert cfg.kafka == ",".join(f"{n}:9092" for n in KAFKA_NODES)
    assert cfg.fluentd_address == "fluentd:24224"


def test_collector_is_privileged_with_host_pid_and_kernel_mounts(compose: dict[str, Any]) -> None:
    c = compose["services"]["collector"]
    assert c["privileged"] is True and c["pid"] == "host"
    mounts = {src: (dst, mode) for src, dst, mode in _mounts(c)}
    assert mounts["/sys"][0] == "/sys"
    assert mounts["/sys/kernel/btf"] == ("/sys/kernel/btf", "ro")
    assert mounts["/proc"][0] == "/host/proc"


def test_every_named_file_exists(compose: dict[str, Any]) -> None:
    named = 0
    for name, svc in compose["services"].items():
        for src, _, _ in _mounts(svc):
            if src.startswith(("./", "/")) and not src.startswith(("/sys", "/proc")):
                assert (REPO / src).exists(), f"{name} mounts missing {src}"
                named += 1
            elif not src.startswith(("/sys", "/proc")):
                assert src in compose["volumes"], f"{name}: volume {src} not declared"
    assert named >= 10


def test_prometheus_scrapes_every_service(compose: dict[str, Any]) -> None:
    prom = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    for name in TETRAPIPE_SERVICES:
        assert f"{name}:{PORTS[name]}" in targets
    assert "--config.file=/etc/prometheus/prometheus.yml" in compose["services"]["prometheus"]["command"]


def test_fluentd_config_receives_forward_output(compose: dict[str, Any]) -> None:
    conf = (REPO / "deploy/fluentd/fluent.conf").read_text()
    assert re.search(r"<source>\s*@type forward\s*port 24224", conf)
    assert "<match tetrapipe.**>" in conf  # tag prefix the exporter uses
    assert 24224 in _port(compose["services"]["fluentd"])
    cmd = compose["services"]["fluentd"]["command"]
    conf_in_container = cmd[cmd.index("-c") + 1]
    mounts = {dst: src for src, dst, _ in _mounts(compose["services"]["fluentd"])}
    assert mounts[conf_in_container] == "./deploy/fluentd/fluent.conf"


def test_grafana_provisioning(compose: dict[str, Any]) -> None:
    mounts = {dst: src for src, dst, _ in _mounts(compose["services"]["grafana"])}
    ds_dir = REPO / mounts["/etc/grafana/provisioning/datasources"]
    ds = yaml.safe_load(next(ds_dir.glob("*.yml")).read_text())["datasources"][0]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    prov = yaml.safe_load(next((REPO / mounts["/etc/grafana/provisioning/dashboards"]).glob("*.yml"))
                          .read_text())["providers"][0]
    dash_dir = prov["options"]["path"]
    assert mounts[dash_dir] == "./deploy/grafana/dashboards"
    dashboards = list((REPO / mounts[dash_dir]).glob("*.json"))
    assert dashboards
    for d in dashboards:
        doc = json.loads(d.read_text())
        uids = {t["datasource"]["uid"] for p in doc["panels"] for t in p.get("targets", [])}
        assert uids == {ds["uid"]}
