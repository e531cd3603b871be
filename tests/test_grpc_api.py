"""Tetragon's gRPC API served by ``tetrapipe export grpc``, driven by a client built from our .proto
(the generated ``tetragon`` package), against a real pipeline: BPF collector, enricher, broker,
JSON exporter and the gRPC server (TCP on loopback).

- GetEvents streams exactly the events the JSON export file holds, with allow/deny lists and
  field filters applied as the export's filters apply them;
- policies managed end to end: add (Sigkill) → the kill is seen on the stream → disable → delete;
  a broken policy is refused with its reason; a caller that is not root cannot change policies;
- GetHealth, GetVersion, grpc.health.v1, UNIMPLEMENTED for the rest; ``tetrapipe status`` and
  ``tetrapipe getevents --server-address`` as tetra uses them;
- Tetragon's own client (tests/tetragon_client, built on Tetragon's generated Go code by
  scripts/setup-tetragon-client.sh) streams the same events, knows every field we send, and manages
  policies (add → kill seen → delete).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import skip_or_fail
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import REPO, Pipeline, wait_until

from exporters import filters, grpc_api
from tetragon import events_pb2, sensors_pb2, sensors_pb2_grpc, tetragon_pb2
from tetrapipe.broker import EmbeddedBroker, free_port

pytestmark = pytest.mark.kernel


class Stream:
    """A GetEvents call read on a thread; ``docs`` fills as events arrive."""

    def __init__(self, stub: sensors_pb2_grpc.FineGuidanceSensorsStub, req: events_pb2.GetEventsRequest) -> None:
        self.call = stub.GetEvents(req, wait_for_ready=True)
        self.call.initial_metadata()  # sent once the server's position in the topic is fixed
        self.docs: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for msg in self.call:
                self.docs.append(grpc_api.to_doc(msg))
        except grpc.RpcError:
            pass

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(5)


@pytest.fixture(scope="module")
def api(bpf_ok: None, broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("grpc")
    p = Pipeline(broker.bootstrap, tmp)
    address = f"127.0.0.1:{free_port()}"
    p.settings["server_address"] = address
    try:
        p.start_all(exporters=("json", "grpc"))
        channel = grpc.insecure_channel(address)
        grpc.channel_ready_future(channel).result(timeout=30)
        yield p, address, sensors_pb2_grpc.FineGuidanceSensorsStub(channel), channel
        channel.close()
    finally:
        p.stop()


def _exits(docs: list[dict[str, Any]], marker: str) -> list[dict[str, Any]]:
    return [d for d in docs if marker in d.get("process_exit", {}).get("process", {}).get("arguments", "")]


def test_getevents_streams_what_the_json_file_holds(api: Any) -> None:
    p, _, stub, _ = api
    marker = f"grpc-{uuid.uuid4().hex[:10]}"
    allow = [events_pb2.Filter(arguments_regex=[marker]),  # OR'd: the shell's events too
             events_pb2.Filter(binary_regex=["/true$"], arguments_regex=[marker])]
    deny = [events_pb2.Filter(binary_regex=["/sh$"], event_set=[events_pb2.PROCESS_EXIT])]
    ff = events_pb2.FieldFilter(action=events_pb2.EXCLUDE, event_set=[events_pb2.PROCESS_EXEC])
    ff.fields.paths.extend(["process.cwd", "parent"])
    stream = Stream(stub, events_pb2.GetEventsRequest(allow_list=allow, deny_list=deny, field_filters=[ff]))
    try:
        subprocess.run(["/bin/sh", "-c", f"/bin/echo {marker}; /bin/true {marker}; exit 3"], check=False,
                       stdout=subprocess.DEVNULL)
        wait_until(lambda: len(_exits(stream.docs, marker)) >= 2, 30, what="exits on the gRPC stream")
        wait_until(lambda: len(_exits(p.exported(), marker)) >= 3, 30, what="exits in the JSON file")
    finally:
        stream.close()
    # the JSON file with the request's filters applied by the export's filter code
    select = grpc_api.request_selector(events_pb2.GetEventsRequest(allow_list=allow, deny_list=deny,
                                                                   field_filters=[ff]))
    expected = [d for d in (select(e) for e in p.exported()) if d is not None]
    assert stream.docs == expected
    kinds = sorted(filters.event_key(d) + ":" + filters.process(d)["binary"] for d in stream.docs)
    assert kinds == ["process_exec:/bin/sh", "process_exec:/usr/bin/echo", "process_exec:/usr/bin/true",
                     "process_exit:/usr/bin/echo", "process_exit:/usr/bin/true"] or \
        kinds == ["process_exec:/bin/echo", "process_exec:/bin/sh", "process_exec:/bin/true",
                  "process_exit:/bin/echo", "process_exit:/bin/true"], kinds
    execs = [d["process_exec"] for d in stream.docs if "process_exec" in d]
    assert all("parent" not in e and "cwd" not in e["process"] for e in execs)  # field filter applied
    assert all("parent" in d["process_exit"] for d in stream.docs if "process_exit" in d)  # not to exits


VICTIM_POLICY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  kprobes:
  - call: "sys_write"
    syscall: true
    args:
    - index: 0
      type: "int"
    selectors:
    - matchBinaries:
      - operator: "In"
        values: ["{victim}"]
      matchActions:
      - action: Sigkill
"""


def _policies(stub: Any) -> dict[str, Any]:
    return {p.name: p for p in stub.ListTracingPolicies(sensors_pb2.ListTracingPoliciesRequest()).policies}


def test_policies_add_kill_disable_delete(api: Any, tmp_path: Path) -> None:
    _, _, stub, _ = api
    name = f"grpc-kill-{uuid.uuid4().hex[:8]}"
    victim = tmp_path / f"victim-{name}"
    shutil.copy("/bin/echo", victim)
    assert name not in _policies(stub)
    stream = Stream(stub, events_pb2.GetEventsRequest(allow_list=[events_pb2.Filter(binary_regex=[f"{victim}$"])]))
    try:
        stub.AddTracingPolicy(sensors_pb2.AddTracingPolicyRequest(yaml=VICTIM_POLICY.format(name=name,
                                                                                             victim=victim)))
        st = _policies(stub)[name]
        assert (st.state, st.mode) == (sensors_pb2.TP_STATE_ENABLED, sensors_pb2.TP_MODE_ENFORCE)
        assert any("sys_write" in s for s in st.sensors)
        r = subprocess.run([str(victim), "hello"], capture_output=True, timeout=30)
        assert r.returncode == -9  # killed at its write (the syscall tracepoint: the signal lands on return)
        wait_until(lambda: any(d.get("process_exit", {}).get("signal") == "SIGKILL" for d in stream.docs)
                   and any("process_kprobe" in d for d in stream.docs), 30,
                   what="the kill (hook event and SIGKILL exit) on the stream")
        kp = [d["process_kprobe"] for d in stream.docs if "process_kprobe" in d]
        assert kp and kp[0]["policy_name"] == name and kp[0]["action"] == "KPROBE_ACTION_SIGKILL"

        stub.DisableTracingPolicy(sensors_pb2.DisableTracingPolicyRequest(name=name))
        assert _policies(stub)[name].state == sensors_pb2.TP_STATE_DISABLED
        assert subprocess.run([str(victim), "hello"], capture_output=True, timeout=30).returncode == 0
        stub.EnableTracingPolicy(sensors_pb2.EnableTracingPolicyRequest(name=name))
        assert _policies(stub)[name].state == sensors_pb2.TP_STATE_ENABLED
    finally:
        stream.close()
        stub.DeleteTracingPolicy(sensors_pb2.DeleteTracingPolicyRequest(name=name))
    assert name not in _policies(stub)
    assert subprocess.run([str(victim), "hello"], capture_output=True, timeout=30).returncode == 0
    with pytest.raises(grpc.RpcError) as e:
        stub.DeleteTracingPolicy(sensors_pb2.DeleteTracingPolicyRequest(name=name))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        stub.AddTracingPolicy(sensors_pb2.AddTracingPolicyRequest(
            yaml=VICTIM_POLICY.format(name=name, victim=victim).replace("Sigkill", "Sigkil")))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and 'unknown action "Sigkil"' in e.value.details()


def test_unprivileged_local_user_gets_health_only(api: Any) -> None:
    """Any local user can reach a loopback port: events (other users' arguments, written data) and
    policies (which can kill) are for root; health and version are for anyone."""
    _, address, _, _ = api
    code = ("import grpc\n"
            "from tetragon import events_pb2 as e, sensors_pb2 as s, sensors_pb2_grpc as g, tetragon_pb2 as t\n"
            f"stub = g.FineGuidanceSensorsStub(grpc.insecure_channel({address!r}))\n"
            "print(stub.GetHealth(t.GetHealthStatusRequest()).health_status[0].details)\n"
            "calls = [lambda: stub.DeleteTracingPolicy(s.DeleteTracingPolicyRequest(name='x')),\n"
            "         lambda: stub.AddTracingPolicy(s.AddTracingPolicyRequest(yaml='x')),\n"
            "         lambda: stub.ListTracingPolicies(s.ListTracingPoliciesRequest()),\n"
            "         lambda: next(iter(stub.GetEvents(e.GetEventsRequest())))]\n"
            "for c in calls:\n"
            "    try:\n"
            "        c()\n"
            "        print('SERVED')\n"
            "    except grpc.RpcError as err:\n"
            "        print(err.code().name, err.details())\n")
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=60, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    health, *refused = r.stdout.splitlines()
    assert health == "running"
    assert len(refused) == 4 and all(x.startswith("PERMISSION_DENIED") and "uid 65534" in x for x in refused), refused


def test_health_version_unimplemented_and_cli(api: Any) -> None:
    p, address, stub, channel = api
    h = stub.GetHealth(tetragon_pb2.GetHealthStatusRequest())
    assert [(s.status, s.details) for s in h.health_status] == [(tetragon_pb2.HEALTH_STATUS_RUNNING, "running")]
    assert stub.GetVersion(sensors_pb2.GetVersionRequest()).version.startswith("tetrapipe")
    checker = health_pb2_grpc.HealthStub(channel)
    for svc in ("", "tetragon.FineGuidanceSensors"):
        assert checker.Check(health_pb2.HealthCheckRequest(service=svc)).status == \
            health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as e:
        stub.ListSensors(sensors_pb2.ListSensorsRequest())
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED and "ListTracingPolicies" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:  # a filter it cannot serve is refused, not ignored
        next(iter(stub.GetEvents(events_pb2.GetEventsRequest(
            allow_list=[events_pb2.Filter(cel_expression=["true"])]))))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "CEL" in e.value.details()

    env = {**p.env(), "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "tetrapipe", "status", "--server-address", address],
                       capture_output=True, text=True, timeout=60, env=env)
    assert (r.returncode, r.stdout) == (0, "Health Status: running\n"), r.stderr
    marker = f"cli-{uuid.uuid4().hex[:8]}"
    ge = subprocess.Popen([sys.executable, "-m", "tetrapipe", "getevents", "--server-address", address, "-o",
                           "compact", "--process", "echo$", "--event-types", "PROCESS_EXIT", "--timeout", "20"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines: list[str] = []

        def seen() -> bool:
            subprocess.run(["/bin/echo", marker], stdout=subprocess.DEVNULL)  # again until the stream is on
            return False

        threading.Thread(target=lambda: lines.extend(ge.stdout or []), daemon=True).start()
        wait_until(lambda: seen() or any(marker in ln for ln in lines), 20, interval=0.5,
                   what="getevents --server-address lines")
    finally:
        ge.terminate()
        ge.wait(10)
    line = next(ln for ln in lines if marker in ln)
    assert line.startswith(f"💥 exit    {p.node_name} ") and line.rstrip("\n").split("🛑")[0].rstrip().endswith(
        f"{marker} 0"), line
    assert all(ln.startswith("💥 exit") and "echo" in ln for ln in lines)


TETRAGON_CLIENT = Path("/var/cache/tetrapipe-build/tetragon-client/bin/tetragon-client")


def _tetragon_client(address: str, *args: str) -> dict[str, Any]:
    """One unary call by Tetragon's own Go client; its JSON line."""
    if not TETRAGON_CLIENT.exists():
        skip_or_fail(f"{TETRAGON_CLIENT} not built: run scripts/setup-tetragon-client.sh")
    r = subprocess.run([str(TETRAGON_CLIENT), "-address", address, "-timeout", "30s", *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    assert out["unknown_fields"] == [] and "error" not in out, out
    return out["message"]


class GoStream:
    """``tetragon-client events``: GetEvents through Tetragon's generated Go client; ``lines``
    fills with its JSON lines as events arrive."""

    def __init__(self, address: str, request: dict[str, Any]) -> None:
        if not TETRAGON_CLIENT.exists():
            skip_or_fail(f"{TETRAGON_CLIENT} not built: run scripts/setup-tetragon-client.sh")
        self.proc = subprocess.Popen([str(TETRAGON_CLIENT), "-address", address, "-timeout", "90s",
                                      "-request", json.dumps(request), "events"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None and self.proc.stdout is not None
        first = self.proc.stderr.readline()  # after the server's headers: its position is fixed
        assert first == "streaming\n", first + self.proc.stderr.read()
        self.lines: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(json.loads(ln) for ln in self.proc.stdout),
                                       daemon=True)
        self.thread.start()

    def docs(self) -> list[dict[str, Any]]:
        """The events as our protojson dicts: Go's JSON → the protobuf message → to_doc."""
        return [grpc_api.to_doc(json_format.Parse(json.dumps(ln["message"]), events_pb2.GetEventsResponse()))
                for ln in list(self.lines) if "message" in ln]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.thread.join(5)


def test_tetragons_own_client_streams_and_manages_policies(api: Any, tmp_path: Path) -> None:
    """Tetragon's generated Go client (not one made from our .proto): health and version, a
    GetEvents stream with an allow_list equal to the JSON file's events (every field known to
    Tetragon's code), and AddTracingPolicy → the kill seen on its stream → DeleteTracingPolicy."""
    p, address, _, _ = api
    health = _tetragon_client(address, "health")
    assert health["health_status"] == [{"event": "HEALTH_STATUS_TYPE_STATUS", "status": "HEALTH_STATUS_RUNNING",
                                        "details": "running"}] or \
        health["health_status"] == [{"status": "HEALTH_STATUS_RUNNING", "details": "running"}], health
    assert _tetragon_client(address, "version")["version"].startswith("tetrapipe")

    marker = f"go-{uuid.uuid4().hex[:10]}"
    name = f"go-kill-{uuid.uuid4().hex[:8]}"
    victim = tmp_path / f"victim-{name}"
    shutil.copy("/bin/echo", victim)
    request = {"allow_list": [{"arguments_regex": [marker]}, {"binary_regex": [f"{victim}$"]}]}
    stream = GoStream(address, request)
    policy = tmp_path / "policy.yaml"
    policy.write_text(VICTIM_POLICY.format(name=name, victim=victim))
    try:
        subprocess.run(["/bin/sh", "-c", f"/bin/echo {marker}; /bin/true {marker}; exit 3"], check=False,
                       stdout=subprocess.DEVNULL)
        assert _tetragon_client(address, "add", str(policy)) == {}
        listed = {tp["name"]: tp for tp in _tetragon_client(address, "list")["policies"]}
        assert listed[name]["state"] == "TP_STATE_ENABLED" and listed[name]["mode"] == "TP_MODE_ENFORCE", listed
        assert subprocess.run([str(victim), marker], capture_output=True, timeout=30).returncode == -9
        wait_until(lambda: len(_exits(stream.docs(), marker)) >= 3, 30, what="exits on the Go client's stream")
        wait_until(lambda: any(d.get("process_exit", {}).get("signal") == "SIGKILL" for d in stream.docs())
                   and any("process_kprobe" in d for d in stream.docs()), 30,
                   what="the kill (hook event and SIGKILL exit) on the Go client's stream")
        wait_until(lambda: len(_exits(p.exported(), marker)) >= 4, 30, what="exits in the JSON file")
    finally:
        stream.close()
        deleted = _tetragon_client(address, "delete", name)
    assert deleted == {}
    assert name not in {tp["name"] for tp in _tetragon_client(address, "list").get("policies", [])}
    assert subprocess.run([str(victim), "hello"], capture_output=True, timeout=30).returncode == 0

    assert all(ln["unknown_fields"] == [] for ln in stream.lines), [ln for ln in stream.lines if ln["unknown_fields"]]

    def ours(d: dict[str, Any]) -> bool:
        # the victim ran with the marker too (its last run did not); the client's own request holds
        # the marker, and its exec may or may not reach the stream it opens
        return marker in json.dumps(d) and filters.process(d)["binary"] != str(TETRAGON_CLIENT)

    got = [d for d in stream.docs() if ours(d)]
    select = grpc_api.request_selector(json_format.ParseDict(request, events_pb2.GetEventsRequest()))
    expected = [d for d in (select(e) for e in p.exported()) if d is not None and ours(d)]
    assert got == expected
    kinds = sorted(filters.event_key(d) + ":" + os.path.basename(filters.process(d)["binary"]) for d in got)
    assert kinds == sorted(["process_exec:sh", "process_exec:echo", "process_exec:true", "process_exit:sh",
                            "process_exit:echo", "process_exit:true", f"process_exec:{victim.name}",
                            f"process_exit:{victim.name}", f"process_kprobe:{victim.name}"]), kinds
    kp = [d["process_kprobe"] for d in stream.docs() if "process_kprobe" in d]
    assert kp[0]["policy_name"] == name and kp[0]["action"] == "KPROBE_ACTION_SIGKILL"
