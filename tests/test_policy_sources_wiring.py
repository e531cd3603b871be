"""The collector starts the policy sources its configuration names (collector/service.py
``policy_sources``), with a real PolicyManager, the stand-in API server and an OPA address where
nothing listens: the CRD source lists both kinds, the OPA source reports itself down, refusals
need no kernel."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

from fake_kube_api import FakeKubeAPI
from harness import free_port_block

from collector.drain import RecordQueue
from collector.policy.manager import PolicyManager
from collector.policy.sources import policyset
from collector.service import policy_sources
from tetrapipe.config import Config, load


def test_sources_started_from_the_configuration(tmp_path: Path) -> None:
    api = FakeKubeAPI("n1").start()
    api.crds.apply({"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": "p"},
                    "spec": {"kprobes": [{"call": "sys_write", "syscall": True,
                                          "args": [{"index": 0, "type": "int128"}]}]}})
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(json.dumps({"enable-k8s-api": True, "enable-tracing-policy-crd": True,
                                    "k8s-kubeconfig": str(api.write_kubeconfig(tmp_path / "kc")),
                                    "opa-url": f"http://127.0.0.1:{free_port_block(1)}",
                                    "opa-poll-interval-ms": 200, "node-name": "n1"}))
    cfg = load(environ={"TETRAPIPE_CONFIG": str(cfg_file), "TETRAPIPE_OPA_TOKEN": "s3cret"})
    assert cfg.opa_token == "s3cret" and "s3cret" not in repr(cfg)

    async def main() -> None:
        stop = asyncio.Event()
        mgr = PolicyManager(RecordQueue(100, asyncio.get_running_loop()), [0] * 10)
        tasks = policy_sources(cfg, SimpleNamespace(policies=mgr), stop)  # type: ignore[arg-type]
        assert sorted(t.get_name() for t in tasks) == ["k8s-tracingpolicies", "opa-policies"]
        unreachable = policyset.SOURCE_ERRORS.labels(source="opa", reason="unreachable")
        n = unreachable._value.get()
        for _ in range(100):
            st = ((api.crds.get("TracingPolicy", "p") or {}).get("status") or {}).get("nodes", {}).get("n1")
            if st and unreachable._value.get() > n:
                break
            await asyncio.sleep(0.1)
        assert st["state"] == "error" and 'unknown argument type "int128"' in st["reason"]
        assert policyset.SOURCE_UP.labels(source="opa")._value.get() == 0
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)

    try:
        asyncio.run(main())
    finally:
        api.stop()
    assert not policy_sources(Config(), SimpleNamespace(policies=None), asyncio.Event())  # type: ignore[arg-type]
