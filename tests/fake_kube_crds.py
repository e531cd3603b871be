"""The TracingPolicy custom resources of the stand-in API server (tests/fake_kube_api.py), served
as a real API server serves a CRD with a status subresource:

- ``GET /apis/cilium.io/v1alpha1/{plural}``: list (all namespaces) or, with ``watch=true``, a
  chunked stream of ADDED/MODIFIED/DELETED events after ``resourceVersion``; a resourceVersion
  older than ``compacted_rv`` gets an ERROR event with a 410 Status, as etcd compaction causes.
- ``GET .../{plural}/{name}`` (cluster) and ``.../namespaces/{ns}/{plural}/{name}``;
- ``PUT .../{name}/status``: only ``status`` changes; the body's resourceVersion must be the
  current one (409 Conflict otherwise); the object's resourceVersion is bumped.
- ``POST /api/v1/namespaces/{ns}/events``: Events are kept in ``events``.
Objects are created/updated/deleted by the test (``apply``/``delete``: what kubectl does),
spec changes bump ``metadata.generation``.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fake_kube_api import TOKEN

GROUP_PATH = "/apis/cilium.io/v1alpha1"
PLURALS = {"tracingpolicies": "TracingPolicy", "tracingpoliciesnamespaced": "TracingPolicyNamespaced"}
KIND_PLURAL = {v: k for k, v in PLURALS.items()}


class FakeCRDs:
    def __init__(self, api: Any) -> None:
        self.api = api                           # FakeKubeAPI: its lock (cond) and resourceVersion
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (plural, ns, name) → object
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []  # (rv, plural, type, object)
        self.events: list[dict[str, Any]] = []
        self.compacted_rv = 0
        self.status_conflicts = 0                # how many status PUTs got 409

    # ---- test side (kubectl) ------------------------------------------------------------------
    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or update (spec) a TracingPolicy/TracingPolicyNamespaced."""
        obj = json.loads(json.dumps(obj))
        plural = KIND_PLURAL[obj["kind"]]
        meta = obj.setdefault("metadata", {})
        ns = meta.get("namespace", "") if plural == "tracingpoliciesnamespaced" else ""
        if plural == "tracingpoliciesnamespaced" and not ns:
            ns = meta["namespace"] = "default"
        key = (plural, ns, meta["name"])
        with self.api.cond:
            self.api.rv += 1
            old = self.objects.get(key)
            if old is None:
                meta.update(uid=str(uuid.uuid4()), generation=1, creationTimestamp="2026-12-04T13:00:00Z")
                typ = "ADDED"
            else:
                meta.update(uid=old["metadata"]["uid"], creationTimestamp=old["metadata"]["creationTimestamp"],
                            generation=old["metadata"]["generation"] + (obj.get("spec") != old.get("spec")))
                if "status" in old:
                    obj["status"] = old["status"]
                typ = "MODIFIED"
            meta["resourceVersion"] = str(self.api.rv)
            self.objects[key] = obj
            self.history.append((self.api.rv, plural, typ, json.loads(json.dumps(obj))))
            self.api.cond.notify_all()
        return obj

    def delete(self, kind: str, name: str, namespace: str = "") -> None:
        plural = KIND_PLURAL[kind]
        with self.api.cond:
            obj = self.objects.pop((plural, namespace, name))
            self.api.rv += 1
            obj["metadata"]["resourceVersion"] = str(self.api.rv)
            self.history.append((self.api.rv, plural, "DELETED", obj))
            self.api.cond.notify_all()

    def get(self, kind: str, name: str, namespace: str = "") -> dict[str, Any] | None:
        with self.api.cond:
            obj = self.objects.get((KIND_PLURAL[kind], namespace, name))
            return json.loads(json.dumps(obj)) if obj else None

    def compact(self) -> None:
        """Forget the history so far: watches from older versions get 410 Gone."""
        with self.api.cond:
            self.compacted_rv = self.api.rv
            self.history = []
            self.api.cond.notify_all()

    # ---- server side ----------------------------------------------------------------------------
    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        api = self.api
        if h.headers.get("Authorization") != f"Bearer {TOKEN}":
            return api._status(h, 401, "Unauthorized", "Unauthorized")
        url = urllib.parse.urlsplit(h.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        body = None
        if method in ("PUT", "POST"):
            n = int(h.headers.get("Content-Length") or 0)
            try:
                body = json.loads(h.rfile.read(n))
            except ValueError:
                return api._status(h, 400, "BadRequest", "body is not JSON")
        if method == "POST":
            parts = url.path.strip("/").split("/")
            if len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "events":
                body.setdefault("metadata", {})["name"] = body["metadata"].get("generateName", "e.") + "x"
                body["metadata"]["namespace"] = parts[3]
                with api.cond:
                    self.events.append(body)
                return api._send(h, 201, json.dumps(body).encode())
            return api._status(h, 404, "NotFound", f"{url.path} not found")
        if not url.path.startswith(GROUP_PATH + "/"):
            return api._status(h, 404, "NotFound", f"{url.path} not found")
        parts = url.path[len(GROUP_PATH) + 1:].split("/")
        ns = ""
        if parts[0] == "namespaces" and len(parts) >= 3:
            ns, parts = parts[1], parts[2:]
        plural = parts[0]
        if plural not in PLURALS:
            return api._status(h, 404, "NotFound", "the server could not find the requested resource")
        if len(parts) == 1 and method == "GET":
            if q.get("watch", "").lower() in ("true", "1"):
                return self._watch(h, plural, q)
            with api.cond:
                items = [o for (p, _, _), o in self.objects.items() if p == plural]
                doc = {"apiVersion": "cilium.io/v1alpha1", "kind": PLURALS[plural] + "List",
                       "metadata": {"resourceVersion": str(api.rv)}, "items": items}
            return api._send(h, 200, json.dumps(doc).encode())
        key = (plural, ns, parts[1] if len(parts) > 1 else "")
        with api.cond:
            obj = self.objects.get(key)
            if obj is None:
                return api._status(h, 404, "NotFound", f'{plural}.cilium.io "{key[2]}" not found')
            if len(parts) == 2 and method == "GET":
                return api._send(h, 200, json.dumps(obj).encode())
            if len(parts) == 3 and parts[2] == "status" and method == "PUT":
                if (body.get("metadata") or {}).get("resourceVersion") != obj["metadata"]["resourceVersion"]:
                    self.status_conflicts += 1
                    return api._status(h, 409, "Conflict", "Operation cannot be fulfilled: the object has "
                                                           "been modified; please apply your changes to the "
                                                           "latest version and try again")
                api.rv += 1
                obj["status"] = body.get("status")
                obj["metadata"]["resourceVersion"] = str(api.rv)
                self.history.append((api.rv, plural, "MODIFIED", json.loads(json.dumps(obj))))
                api.cond.notify_all()
                return api._send(h, 200, json.dumps(obj).encode())
        return api._status(h, 405, "MethodNotAllowed", f"{method} {url.path}")

    def _watch(self, h: BaseHTTPRequestHandler, plural: str, q: dict[str, str]) -> None:
        api = self.api
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def send(doc: dict[str, Any]) -> None:
            line = json.dumps(doc).encode() + b"\n"
            h.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            h.wfile.flush()

        since = int(q.get("resourceVersion") or 0)
        deadline = time.monotonic() + float(q.get("timeoutSeconds") or 300)
        try:
            if since and since < self.compacted_rv:
                send({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                  "message": f"too old resource version: {since} "
                                                             f"({self.compacted_rv})",
                                                  "reason": "Expired", "code": 410}})
                h.wfile.write(b"0\r\n\r\n")
                return
            while time.monotonic() < deadline and not api.closed:
                with api.cond:
                    new = [e for e in self.history if e[0] > since]
                    if not new:
                        api.cond.wait(0.2)
                        continue
                for rv, p, typ, obj in new:
                    since = rv
                    if p == plural:
                        send({"type": typ, "object": obj})
            h.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, ValueError, OSError):
            pass
