"""Debian's Prometheus server for tests: started on a free port with a temporary config and
storage directory, scraping the given targets every second; queried over its HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import yaml
from harness import http_get, wait_until

from tetrapipe.broker import free_port


def prometheus_binaries() -> tuple[str, str] | None:
    prom, tool = shutil.which("prometheus"), shutil.which("promtool")
    return (prom, tool) if prom and tool else None


class PrometheusServer:
    def __init__(self, tmp: Path, targets: dict[str, str], scrape_interval: str = "1s") -> None:
        self.tmp = tmp
        self.targets = targets  # service name -> host:port
        self.scrape_interval = scrape_interval
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PrometheusServer:
        conf = {"global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
                "scrape_configs": [{"job_name": "tetrapipe", "static_configs": [
                    {"targets": [addr], "labels": {"service": name}} for name, addr in self.targets.items()]}]}
        cfg = self.tmp / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(conf))
        log = open(self.tmp / "prometheus.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={self.tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: self._alive() and http_get(f"{self.url}/-/ready")[0] == 200, 30,
                   what="prometheus ready")
        return self

    def _alive(self) -> bool:
        if self.proc and self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {(self.tmp / 'prometheus.log').read_text()[-3000:]}")
        return True

    def query(self, expr: str) -> list[dict[str, Any]]:
        code, body = http_get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}), 5)
        if code != 200:
            raise AssertionError(f"query {expr!r} failed ({code}): {body[:500]}")
        doc = json.loads(body)
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    def value(self, expr: str) -> float | None:
        """The single value of an instant query (None when it returns nothing)."""
        res = self.query(expr)
        if not res:
            return None
        assert len(res) == 1, res
        return float(res[0]["value"][1])

    def targets_up(self) -> bool:
        res = self.query('up{job="tetrapipe"}')
        return len(res) == len(self.targets) and all(r["value"][1] == "1" for r in res)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def promtool_check(metrics_text: str) -> tuple[int, str]:
    """``promtool check metrics`` on one /metrics page: (exit code, its complaints)."""
    r = subprocess.run(["promtool", "check", "metrics"], input=metrics_text.encode(),
                       capture_output=True, timeout=30)
    return r.returncode, (r.stdout + r.stderr).decode()
