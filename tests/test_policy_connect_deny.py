"""A TracingPolicy asks for a deny on connect (Override on a tcp_connect selector): the policy
manager turns the selector into a cgroup/connect4+6 rule on the cgroup v2 root, and a connect it
matches fails with EPERM before any packet; other binaries and other destinations connect; after
the policy is deleted the same connect succeeds. Monitor mode installs no rule.

The rule is scoped to a copy of bash the test makes (matched by its inode) and to an address in
a network namespace of the test's own, so nothing else on this shared machine is touched.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from collector import loader, procfs
from collector.drain import RecordQueue
from collector.policy.manager import PolicyManager
from collector.policy.model import PolicyError
from tests.conftest import bpf_unavailable_reason, skip_or_fail


def policy(name: str, bash_copy: Path, mode: str = "enforce") -> str:
    return textwrap.dedent(f"""\
        apiVersion: cilium.io/v1alpha1
        kind: TracingPolicy
        metadata:
          name: {name}
        spec:
          options:
          - name: policy-mode
            value: {mode}
          kprobes:
          - call: tcp_connect
            syscall: false
            args:
            - {{index: 0, type: sock}}
            selectors:
            - matchArgs:
              - {{index: 0, operator: DAddr, values: ["192.0.2.0/24"]}}
              - {{index: 0, operator: DPort, values: ["8099"]}}
              matchBinaries:
              - {{operator: In, values: ["{bash_copy}"]}}
              matchActions:
              - action: Override
                argError: -1
        """)


def connect_in_netns(tmp: Path, bash: str) -> list[str]:
    """In a fresh network namespace: a listener on 192.0.2.1:8099, then ``bash`` connects to it
    and to 127.0.0.1:8099; prints ok/refused for each."""
    script = tmp / "net.sh"
    script.write_text(textwrap.dedent(f"""\
        ip link set lo up
        ip addr add 192.0.2.1/32 dev lo
        python3 -c 'import socket, time
        s = socket.socket(); s.bind(("0.0.0.0", 8099)); s.listen(8); time.sleep(10)' &
        for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/8099) 2>/dev/null && break; sleep 0.1; done
        for h in 192.0.2.1 127.0.0.1; do
            {bash} -c "exec 3<>/dev/tcp/$h/8099" 2>/dev/null && echo ok || echo refused
        done
        kill %1
    """))
    out = subprocess.run(["unshare", "-n", "bash", str(script)], capture_output=True, text=True,
                         timeout=30)
    return out.stdout.split()


def test_override_on_tcp_connect_refuses_with_eperm(tmp_path: Path) -> None:
    reason = bpf_unavailable_reason()
    if reason:
        skip_or_fail(reason)
    if not (shutil.which("ip") and shutil.which("unshare") and shutil.which("python3")):
        skip_or_fail("ip, unshare and python3 are needed for the test's network namespace")
    bash_copy = tmp_path / "bash-denied"
    shutil.copy2("/bin/bash", bash_copy)
    os.chmod(bash_copy, 0o755)
    loader.prepare()
    mgr = PolicyManager(RecordQueue(100_000, asyncio.new_event_loop()), procfs.host_namespaces())
    try:
        # monitor mode: reported only, no connect refused
        mgr.load_text(policy("deny-connect-monitor", bash_copy, "monitor"))
        assert mgr.connect_deny is None
        assert connect_in_netns(tmp_path, str(bash_copy)) == ["ok", "ok"]
        mgr.delete("deny-connect-monitor")

        mgr.load_text(policy("deny-connect", bash_copy))
        assert mgr.connect_deny is not None
        assert connect_in_netns(tmp_path, str(bash_copy)) == ["refused", "ok"]
        assert connect_in_netns(tmp_path, "/bin/bash") == ["ok", "ok"]   # another binary
        assert mgr.connect_deny.denied() == [1]

        labels = {"action": "override", "hook": "tcp_connect", "hook_index": "", "policy": "deny-connect",
                  "policy_namespace": "", "selector_index": ""}
        before = REGISTRY.get_sample_value("tetrapipe_tracingpolicy_selector_actions_total", labels) or 0.0
        mgr.delete("deny-connect")  # the refusals are counted before the rules go
        after = REGISTRY.get_sample_value("tetrapipe_tracingpolicy_selector_actions_total", labels) or 0.0
        assert after - before == 1
        assert connect_in_netns(tmp_path, str(bash_copy)) == ["ok", "ok"]

        # what connect4/6 cannot check is refused at load, with the YAML path
        bad = policy("deny-connect-bad", bash_copy).replace(
            "      matchBinaries:", "      matchPIDs:\n      - {operator: In, values: [1]}\n      matchBinaries:")
        assert "matchPIDs" in bad
        with pytest.raises(PolicyError, match=r"selectors\[0\].*connect4"):
            mgr.load_text(bad)
    finally:
        mgr.stop()
    assert mgr.connect_deny is None
