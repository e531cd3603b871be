"""docker-compose.yml (no Docker engine here): parsed with PyYAML and checked service by service:
images, commands, ports, mounts, and that every file it names exists and says what the other
services expect (ports, hostnames, config keys)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tetrapipe import config as config_mod
from tetrapipe.supervisor import PORTS

REPO = Path(__file__).resolve().parent.parent
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
    assert set(services) == {"kafka", *TETRAPIPE_SERVICES, "fluentd", "prometheus", "grafana"}
    assert re.fullmatch(r"apache/kafka:\d+\.\d+\.\d+", services["kafka"]["image"])
    assert services["fluentd"]["image"].startswith("fluent/fluentd:v1")
    assert services["prometheus"]["image"].startswith("prom/prometheus:v")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    for name in TETRAPIPE_SERVICES:
        assert services[name]["image"] == "tetrapipe:latest"
        build = services[name]["build"]
        assert (REPO / build["context"] / build["dockerfile"]).is_file()
        assert services[name]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_kafka_is_kraft(compose: dict[str, Any]) -> None:
    env = compose["services"]["kafka"]["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert not any("ZOOKEEPER" in k for k in env)
    assert "healthcheck" in compose["services"]["kafka"]


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
    assert cfg.kafka == "kafka:9092"
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
