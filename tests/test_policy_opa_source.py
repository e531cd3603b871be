"""Policies from a real Open Policy Agent server (built by scripts/setup-opa.sh from the Go module
proxy): Rego turns the security team's data (``data.protected.files``) into TracingPolicy objects
at ``data.tetrapipe.policies``; the OPA source polls it and the PolicyManager loads real BPF
programs that Sigkill writes. A data change adds, changes and removes policies; an invalid policy
is refused while the others act; an undefined document (the Rego module deleted) and OPA stopped
keep the last good set acting; OPA restarted is followed again.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import bpf_unavailable_reason, skip_or_fail
from harness import LoopThread, free_port_block, wait_until

from collector import loader, procfs
from collector.drain import RecordQueue
from collector.policy.manager import PolicyManager
from collector.policy.sources import policyset
from collector.policy.sources.opa import OpaPolicySource, wanted_set

OPA = "/var/cache/tetrapipe-build/opa/bin/opa"
DASH = "/usr/bin/dash"

REGO = """package tetrapipe

import rego.v1

policies contains p if {
	some f in data.protected.files
	p := {
		"apiVersion": "cilium.io/v1alpha1",
		"kind": "TracingPolicy",
		"metadata": {"name": f.name},
		"spec": {"kprobes": [{
			"call": "sys_write",
			"syscall": true,
			"args": [{"index": 0, "type": "fd"}],
			"selectors": [{
				"matchArgs": [{"index": 0, "operator": object.get(f, "operator", "Equal"), "values": [f.path]}],
				"matchActions": [{"action": "Sigkill"}],
			}],
		}]},
	}
}
"""


def write(path: Path) -> int:
    return subprocess.run([DASH, "-c", f"echo hello >> {path}"], capture_output=True, timeout=30).returncode


class Opa:
    """A real OPA server on a loopback port, with the Rego above and a data file."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port_block(1)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        (tmp / "tetrapipe.rego").write_text(REGO)

    def start(self, files: list[dict[str, str]]) -> Opa:
        (self.tmp / "data.json").write_text(json.dumps({"protected": {"files": files}}))
        with open(self.tmp / "opa.log", "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen([OPA, "run", "--server", "--addr", f"127.0.0.1:{self.port}",
                                          "--log-level", "error", str(self.tmp / "tetrapipe.rego"),
                                          str(self.tmp / "data.json")], stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_until(lambda: self._up(), timeout=30, what="OPA listening")
        except AssertionError:
            self.stop()
            raise
        return self

    def _up(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def put(self, path: str, body: Any, ctype: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data, method="PUT",
                                     headers={"Content-Type": ctype})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status in (200, 204)

    def delete(self, path: str) -> None:
        with urllib.request.urlopen(urllib.request.Request(f"{self.url}{path}", method="DELETE"), timeout=5):
            pass

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def SourceThread(mgr: PolicyManager, url: str) -> LoopThread:  # noqa: N802 - reads as the class it was
    return LoopThread(OpaPolicySource(mgr, url, "tetrapipe/policies", interval_s=0.3, timeout_s=2))


@pytest.fixture
def opa_env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    reason = bpf_unavailable_reason()
    if reason:
        skip_or_fail(reason)
    if not os.access(OPA, os.X_OK):
        skip_or_fail(f"no OPA server at {OPA}: run scripts/setup-opa.sh")
    files = Path(f"/tmp/tp-opa-{uuid.uuid4().hex[:8]}")
    files.mkdir()
    loader.prepare()
    mgr = PolicyManager(RecordQueue(1_000_000, asyncio.new_event_loop()), procfs.host_namespaces())
    opa = Opa(tmp_path)
    try:
        yield {"mgr": mgr, "opa": opa, "files": files,
               "start_source": lambda: _keep(SourceThread(mgr, opa.url).start())}
    finally:
        for s in _started:
            s.stop()
        _started.clear()
        mgr.stop()
        opa.stop()
        shutil.rmtree(files, ignore_errors=True)


_started: list[SourceThread] = []


def _keep(src: SourceThread) -> SourceThread:
    _started.append(src)
    return src


def test_opa_policy_set_follows_data_and_survives_outages(opa_env: dict[str, Any]) -> None:
    mgr, opa, files = opa_env["mgr"], opa_env["opa"], opa_env["files"]
    a, b, b2, c = files / "a.txt", files / "b.txt", files / "b2.txt", files / "c.txt"
    opa.start([{"name": "opa-a", "path": str(a)}, {"name": "opa-b", "path": str(b)}])
    src = opa_env["start_source"]().source
    up = policyset.SOURCE_UP.labels(source="opa")
    wait_until(lambda: set(mgr.loaded) == {"opa-a", "opa-b"}, timeout=60, what="the Rego's two policies")
    assert up._value.get() == 1
    assert write(a) == -9 and write(b) == -9 and write(c) == 0

    # the security team changes its data: a removed, b changed, c added, d invalid
    opa.put("/v1/data/protected/files", [
        {"name": "opa-b", "path": str(b2)}, {"name": "opa-c", "path": str(c)},
        {"name": "opa-d", "path": str(files / "d.txt"), "operator": "Prefx"}])
    wait_until(lambda: set(mgr.loaded) == {"opa-b", "opa-c"} and "TracingPolicy//opa-d" in src.set.entries,
               timeout=60, what="set applied")
    bad = src.set.entries["TracingPolicy//opa-d"]
    assert bad.state == "error" and bad.error is not None
    assert bad.error.path == "spec.kprobes[0].selectors[0].matchArgs[0].operator"
    assert bad.error.reason == 'unknown operator "Prefx"' and bad.error.line > 1
    assert bad.error.source.startswith("data.tetrapipe.policies[")
    assert write(a) == 0 and write(b) == 0 and write(b2) == -9 and write(c) == -9
    wait_until(lambda: policyset.SOURCE_POLICIES.labels(source="opa", state="error")._value.get() == 1,
               what="refusal counted")

    # the Rego module goes away: the document is undefined, the last good set keeps acting
    invalid = policyset.SOURCE_ERRORS.labels(source="opa", reason="invalid")
    n = invalid._value.get()
    opa.delete("/v1/policies/" + _module_id(opa))
    wait_until(lambda: invalid._value.get() > n + 2, what="undefined document seen")
    assert up._value.get() == 0 and set(mgr.loaded) == {"opa-b", "opa-c"}
    assert write(b2) == -9

    # OPA stopped: unreachable, nothing unloaded
    opa.stop()
    unreachable = policyset.SOURCE_ERRORS.labels(source="opa", reason="unreachable")
    n = unreachable._value.get()
    wait_until(lambda: unreachable._value.get() > n + 2, what="OPA unreachable seen")
    assert set(mgr.loaded) == {"opa-b", "opa-c"} and write(c) == -9

    # OPA restarted with the Rego and a data file of its own: followed again
    opa.start([{"name": "opa-c", "path": str(c)}])
    wait_until(lambda: set(mgr.loaded) == {"opa-c"} and up._value.get() == 1, timeout=60,
               what="set of the restarted OPA")
    assert write(b2) == 0 and write(c) == -9
    assert not src.set.entries.keys() - {"TracingPolicy//opa-c"}


def _module_id(opa: Opa) -> str:
    with urllib.request.urlopen(f"{opa.url}/v1/policies", timeout=5) as r:
        mods = json.loads(r.read())["result"]
    return next(m["id"] for m in mods if "tetrapipe" in m["id"])


def test_wanted_set_shapes() -> None:
    pol = {"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": "x"}, "spec": {}}
    assert list(wanted_set([pol], "data.p")) == ["TracingPolicy//x"]
    assert wanted_set({"k": pol}, "data.p")["TracingPolicy//x"][1] == "data.p.k"
    assert list(wanted_set([{"kind": "TracingPolicy"}], "data.p")) == ["data.p[0]"]  # refused by the parser
    for bad in ("text", 3, [1], [[pol]]):
        with pytest.raises(ValueError):
            wanted_set(bad, "data.p")
