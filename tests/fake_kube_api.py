"""A stand-in Kubernetes API server on loopback for tests (a real one is used where
scripts/setup-kube-apiserver.sh built it): list and watch of pods (``/api/v1/pods`` with
``fieldSelector``, ``watch``, ``resourceVersion``, ``timeoutSeconds``; chunked JSON lines as the
real API server streams them), ``/api/v1/nodes/<name>``, bearer-token auth, and switchable
misbehaviour: ``mode`` = ok | unauthorized | garbage | close.

Custom resources of the TracingPolicy CRDs (tests/fake_kube_crds.py): list, watch (410 Gone for a
resourceVersion older than ``compacted_rv``), get, status update with optimistic concurrency
(409 on a stale resourceVersion), generation bumped on spec changes; core/v1 Events created.

``make_pod`` builds Pod JSON as the API server returns it (metadata with ownerReferences, spec
with probes, status with containerStatuses)."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

TOKEN = "fake-token-for-tests"


def make_pod(name: str, uid: str, node: str, container_id: str, *, namespace: str = "default",
             container: str = "app", image: str = "docker.io/library/busybox:1.36",
             labels: dict[str, str] | None = None, owner: tuple[str, str] | None = None,
             probe: list[str] | None = None, runtime: str = "containerd",
             annotations: dict[str, str] | None = None, privileged: bool = False) -> dict[str, Any]:
    digest = "sha256:" + (container_id * 2)[:64]
    meta: dict[str, Any] = {
        "name": name, "namespace": namespace, "uid": uid, "resourceVersion": "1",
        "creationTimestamp": "2026-11-28T09:00:00Z", "labels": dict(labels or {}),
        "annotations": dict(annotations or {"kubectl.kubernetes.io/restartedAt": "2026-11-28T08:59:00Z"}),
    }
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1" if owner[0] != "Job" else "batch/v1",
                                    "kind": owner[0], "name": owner[1], "uid": uid[::-1],
                                    "controller": True, "blockOwnerDeletion": True}]
    spec_c: dict[str, Any] = {
        "name": container, "image": image, "command": ["/bin/sleep", "3600"],
        "resources": {}, "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent",
    }
    if probe:
        spec_c["livenessProbe"] = {"exec": {"command": probe}, "initialDelaySeconds": 5,
                                   "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1,
                                   "failureThreshold": 3}
        spec_c["readinessProbe"] = {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"},
                                    "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1,
                                    "failureThreshold": 3}
    if privileged:
        spec_c["securityContext"] = {"privileged": True}
    return {
        "kind": "Pod", "apiVersion": "v1", "metadata": meta,
        "spec": {"volumes": [], "containers": [spec_c], "restartPolicy": "Always",
                 "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
                 "serviceAccountName": "default", "serviceAccount": "default", "nodeName": node,
                 "securityContext": {}, "schedulerName": "default-scheduler", "priority": 0,
                 "enableServiceLinks": True, "preemptionPolicy": "PreemptLowerPriority"},
        "status": {
            "phase": "Running", "hostIP": "10.0.0.5", "podIP": "10.244.1.7",
            "podIPs": [{"ip": "10.244.1.7"}], "startTime": "2026-11-28T09:00:01Z", "qosClass": "BestEffort",
            "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": None,
                            "lastTransitionTime": "2026-11-28T09:00:05Z"}],
            "containerStatuses": [{
                "name": container, "state": {"running": {"startedAt": "2026-11-28T09:00:03Z"}},
                "lastState": {}, "ready": True, "restartCount": 0, "image": image,
                "imageID": image.rsplit(":", 1)[0] + "@" + digest,
                "containerID": f"{runtime}://{container_id}", "started": True,
            }],
        },
    }


class FakeKubeAPI:
    def __init__(self, node: str, node_labels: dict[str, str] | None = None) -> None:
        self.node = node
        self.node_labels = dict(node_labels or {"kubernetes.io/hostname": node, "topology.kubernetes.io/zone": "z1"})
        self.mode = "ok"
        self.rv = 100
        self.history: list[tuple[int, str, dict[str, Any]]] = []
        self.pods: dict[str, dict[str, Any]] = {}
        self.cond = threading.Condition()
        self.requests: list[str] = []
        self.closed = False
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                api.requests.append(self.path)
                if self.path.startswith("/apis/"):
                    return api.crds.handle(self, "GET")
                api.handle(self)

            def do_PUT(self) -> None:  # noqa: N802
                api.requests.append("PUT " + self.path)
                api.crds.handle(self, "PUT")

            def do_POST(self) -> None:  # noqa: N802
                api.requests.append("POST " + self.path)
                api.crds.handle(self, "POST")

        from tests.fake_kube_crds import FakeCRDs

        self.crds = FakeCRDs(self)
        self.handler = Handler
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # ---- test side -------------------------------------------------------------------------
    def start(self) -> FakeKubeAPI:
        self.thread.start()
        return self

    def stop(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()

    def go_away(self) -> None:
        """The API server goes away: the port is closed, open watches end."""
        self.stop()

    def come_back(self) -> None:
        """The API server is back on the same port, with the state it had."""
        self.closed = False
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_kubeconfig(self, path: Path) -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {"token": TOKEN}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        }))
        return path

    def put_pod(self, pod: dict[str, Any]) -> None:
        with self.cond:
            self.rv += 1
            pod = json.loads(json.dumps(pod))
            pod["metadata"]["resourceVersion"] = str(self.rv)
            uid = pod["metadata"]["uid"]
            kind = "MODIFIED" if uid in self.pods else "ADDED"
            self.pods[uid] = pod
            self.history.append((self.rv, kind, pod))
            self.cond.notify_all()

    def delete_pod(self, uid: str) -> None:
        with self.cond:
            pod = self.pods.pop(uid)
            self.rv += 1
            self.history.append((self.rv, "DELETED", pod))
            self.cond.notify_all()

    def watches(self) -> int:
        return sum(1 for r in self.requests if "watch=true" in r)

    # ---- server side -----------------------------------------------------------------------
    def _send(self, h: BaseHTTPRequestHandler, code: int, body: bytes,
              ctype: str = "application/json") -> None:
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _status(self, h: BaseHTTPRequestHandler, code: int, reason: str, message: str) -> None:
        self._send(h, code, json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                        "status": "Failure", "message": message, "reason": reason,
                                        "code": code}).encode())

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(h.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        if self.mode == "unauthorized" or h.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._status(h, 401, "Unauthorized", "Unauthorized")
        if url.path == f"/api/v1/nodes/{self.node}":
            node = {"kind": "Node", "apiVersion": "v1",
                    "metadata": {"name": self.node, "uid": "node-uid", "labels": self.node_labels}}
            return self._send(h, 200, json.dumps(node).encode())
        if url.path != "/api/v1/pods":
            return self._status(h, 404, "NotFound", f"{url.path} not found")
        selector = q.get("fieldSelector", "")
        node = selector.split("=", 1)[1] if selector.startswith("spec.nodeName=") else None
        if self.mode == "garbage":
            return self._send(h, 200, b"<html><body>502 Bad Gateway</body></html>\n", "text/html")
        if q.get("watch", "").lower() not in ("true", "1"):
            with self.cond:
                items = [p for p in self.pods.values() if node is None or p["spec"]["nodeName"] == node]
                doc = {"kind": "PodList", "apiVersion": "v1",
                       "metadata": {"resourceVersion": str(self.rv)}, "items": items}
            return self._send(h, 200, json.dumps(doc).encode())
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        if self.mode == "close":
            h.wfile.write(b"0\r\n\r\n")
            return None
        since = int(q.get("resourceVersion") or 0)
        deadline = time.monotonic() + float(q.get("timeoutSeconds") or 300)
        try:
            while time.monotonic() < deadline and not self.closed and self.mode == "ok":
                with self.cond:
                    new = [e for e in self.history if e[0] > since]
                    if not new:
                        self.cond.wait(0.2)
                        continue
                for rv, kind, pod in new:
                    since = rv
                    if node is not None and pod["spec"]["nodeName"] != node:
                        continue
                    line = json.dumps({"type": kind, "object": pod}).encode() + b"\n"
                    h.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    h.wfile.flush()
            h.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        return None
