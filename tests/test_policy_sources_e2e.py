"""The whole pipeline with the policy sources on: a real ``tetrapipe collector`` process
(``enable_k8s_api``, ``enable_tracing_policy_crd``, ``opa_url``), enricher and JSON exporter on the
embedded broker. A TracingPolicy created on the API server (the loopback stand-in,
tests/fake_kube_api.py) and one produced by Rego in a real OPA server both kill a write, the kill
events name their policies in the export, the sources' metrics say they are up, and deleting the
resource stops the kill."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

from conftest import bpf_unavailable_reason, skip_or_fail
from fake_kube_api import FakeKubeAPI
from harness import Pipeline, wait_until
from test_policy_k8s_source import kill_policy
from test_policy_opa_source import OPA, Opa


def write(path: Path) -> int:
    return subprocess.run(["/usr/bin/dash", "-c", f"echo x >> {path}"], capture_output=True, timeout=30).returncode


def test_crd_and_opa_policies_through_the_pipeline(broker, tmp_path: Path) -> None:  # noqa: ANN001
    reason = bpf_unavailable_reason()
    if reason:
        skip_or_fail(reason)
    if not os.access(OPA, os.X_OK):
        skip_or_fail(f"no OPA server at {OPA}: run scripts/setup-opa.sh")
    files = Path(f"/tmp/tp-e2e-src-{uuid.uuid4().hex[:8]}")
    files.mkdir()
    k8s_target, opa_target = files / "k8s.txt", files / "opa.txt"
    p = Pipeline(broker.bootstrap, tmp_path)
    api = FakeKubeAPI(p.node_name).start()
    opa = Opa(tmp_path).start([{"name": "e2e-opa", "path": str(opa_target)}])
    p.settings.update(enable_k8s_api="true", enable_tracing_policy_crd="true",
                      k8s_kubeconfig=str(api.write_kubeconfig(tmp_path / "kubeconfig")),
                      opa_url=opa.url, opa_poll_interval_ms="500")
    try:
        p.start("enricher", "enricher")
        p.start("export-json", "export", "json")
        col = p.start("collector", "collector", wait=False).wait_ready(180)
        api.crds.apply(kill_policy("e2e-k8s", k8s_target))
        wait_until(lambda: ((api.crds.get("TracingPolicy", "e2e-k8s") or {}).get("status") or {})
                   .get("state") == "Loaded", timeout=60, what="status Loaded written by the collector")
        wait_until(lambda: col.metric("tetrapipe_policy_source_policies", source="opa", state="loaded") == 1,
                   timeout=60, what="OPA policy loaded")
        assert col.metric("tetrapipe_policy_source_up", source="kubernetes") == 1
        assert col.metric("tetrapipe_policy_source_up", source="opa") == 1
        assert write(k8s_target) == -9 and write(opa_target) == -9

        def kills() -> set[str]:
            out = set()
            for line in p.export_text().splitlines():
                if '"process_kprobe"' in line:
                    try:
                        ev = json.loads(line)["process_kprobe"]
                    except json.JSONDecodeError:
                        continue
                    if ev.get("action") == "KPROBE_ACTION_SIGKILL":
                        out.add(ev.get("policy_name", ""))
            return out
        wait_until(lambda: {"e2e-k8s", "e2e-opa"} <= kills(), timeout=60, what="kill events of both policies")
        api.crds.delete("TracingPolicy", "e2e-k8s")
        wait_until(lambda: write(k8s_target) == 0, timeout=30, what="kill gone with the resource")
        assert write(opa_target) == -9
    finally:
        p.stop()
        opa.stop()
        api.stop()
        for f in files.iterdir():
            f.unlink()
        files.rmdir()
