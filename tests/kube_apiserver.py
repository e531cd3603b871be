"""A real Kubernetes API server for the tests, where scripts/setup-kube-apiserver.sh built it:
``k8s.io/apiextensions-apiserver`` (the API server library serving CRDs and custom resources,
from the Go module proxy) on Debian's etcd, both on loopback ports, data in a temp dir.

It serves CustomResourceDefinitions and custom resources with Kubernetes' own validation
(structural schemas, strict field validation, status subresource, resourceVersion conflicts,
watch with 410 Gone after compaction), and not core/v1 (pods, nodes, Events). Authentication and
authorization are delegated, as for every aggregated API server, to a TokenReview and
SubjectAccessReview webhook: here a stand-in (``_AuthWebhook``) that knows one token and allows
it everything.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CACHE = Path("/var/cache/tetrapipe-build/kube-apiserver")
APISERVER = CACHE / "bin" / "apiextensions-apiserver"
TOKEN = "real-apiserver-test-token"
LIST_KINDS = {"services": "ServiceList", "namespaces": "NamespaceList", "endpoints": "EndpointsList",
              "flowschemas": "FlowSchemaList", "prioritylevelconfigurations": "PriorityLevelConfigurationList"}


def available() -> str | None:
    """None when a real API server can be started, else why not."""
    if not APISERVER.exists():
        return f"no {APISERVER}: run scripts/setup-kube-apiserver.sh"
    if not shutil.which("etcd"):
        return "no etcd (Debian etcd-server): run scripts/setup-kube-apiserver.sh"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _AuthWebhook:
    """Stand-in for the core API server's TokenReview and SubjectAccessReview."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the server's informers on the core API: empty
                url = urllib.parse.urlsplit(self.path)
                parts = url.path.strip("/").split("/")
                api_version = "v1" if parts[0] == "api" else "/".join(parts[1:3])
                kind = LIST_KINDS.get(parts[-1], "List")
                if "watch=true" in url.query:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    if "sendInitialEvents=true" in url.query:  # a streaming list: "no items, that was all"
                        mark = json.dumps({"type": "BOOKMARK", "object": {
                            "kind": kind.removesuffix("List"), "apiVersion": api_version, "metadata": {
                                "resourceVersion": "1", "annotations": {"k8s.io/initial-events-end": "true"}}}})
                        line = mark.encode() + b"\n"
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                        self.wfile.flush()
                    time.sleep(20)
                    self.wfile.write(b"0\r\n\r\n")
                    return
                out = json.dumps({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": "1"},
                                  "items": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if self.path.startswith("/apis/authentication.k8s.io/v1/tokenreviews"):
                    ok = (body.get("spec") or {}).get("token") == TOKEN
                    body["status"] = {"authenticated": ok, "user": {"username": "test-admin",
                                                                    "groups": ["system:masters",
                                                                               "system:authenticated"]}}
                elif self.path.startswith("/apis/authorization.k8s.io/v1/subjectaccessreviews"):
                    ok = (body.get("spec") or {}).get("user") == "test-admin"
                    body["status"] = {"allowed": ok}
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                out = json.dumps(body).encode()
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _kubeconfig(path: Path, server: str, token: str, insecure: bool = False) -> Path:
    cluster: dict[str, Any] = {"server": server}
    if insecure:
        cluster["insecure-skip-tls-verify"] = True
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": cluster}], "users": [{"name": "t", "user": {"token": token}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}]}))
    return path


class KubeAPIServer:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.etcd: subprocess.Popen | None = None
        self.api: subprocess.Popen | None = None
        self.webhook = _AuthWebhook()
        self.etcd_port = _free_port()
        self.port = _free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE   # its self-signed serving certificate

    def start(self) -> KubeAPIServer:
        if self.etcd is None:
            peer = _free_port()
            with open(self.tmp / "etcd.log", "ab") as log:
                self.etcd = subprocess.Popen([
                    "etcd", "--data-dir", str(self.tmp / "etcd"), "--name", "t",
                    "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
                    "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
                    "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-cluster", f"t=http://127.0.0.1:{peer}"], stdout=log, stderr=log)
        hook = _kubeconfig(self.tmp / "webhook.kubeconfig", f"http://127.0.0.1:{self.webhook.port}", "x")
        with open(self.tmp / "apiserver.log", "ab") as log:
            self.api = subprocess.Popen([
                str(APISERVER), "--etcd-servers", f"http://127.0.0.1:{self.etcd_port}",
                "--secure-port", str(self.port), "--bind-address", "127.0.0.1",
                "--cert-dir", str(self.tmp / "certs"),
                "--authentication-kubeconfig", str(hook), "--authorization-kubeconfig", str(hook),
                "--authentication-skip-lookup", "-v", "1",
                # no core API here: the admission plugins that read it are off, as the webhook's
                # kubeconfig stands for the core API only in name
                "--kubeconfig", str(hook), "--enable-priority-and-fairness=false", "--disable-admission-plugins",
                "NamespaceLifecycle,MutatingAdmissionPolicy,MutatingAdmissionWebhook,"
                "ValidatingAdmissionPolicy,ValidatingAdmissionWebhook"],
                stdout=log, stderr=log, env=dict(os.environ, KUBERNETES_SERVICE_HOST=""))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.api.poll() is not None:
                raise RuntimeError("apiextensions-apiserver exited: " + self.log()[-3000:])
            try:
                if self.request("GET", "/readyz")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop_apiserver()
        raise RuntimeError("apiextensions-apiserver not ready in 90 s: " + self.log()[-3000:])

    def log(self) -> str:
        return (self.tmp / "apiserver.log").read_text(errors="replace")

    def kubeconfig(self, path: Path) -> Path:
        return _kubeconfig(path, self.url, TOKEN, insecure=True)

    def request(self, method: str, path: str, body: Any = None, ctype: str = "application/json",
                ) -> tuple[int, Any]:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": ctype,
                                              "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10, context=self.ctx) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw.startswith(b"{") else raw.decode()
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, json.loads(raw) if raw.startswith(b"{") else raw.decode()

    def stop_apiserver(self) -> None:
        if self.api is not None:
            self.api.terminate()
            try:
                self.api.wait(15)
            except subprocess.TimeoutExpired:
                self.api.kill()
                self.api.wait(5)
            self.api = None

    def stop(self) -> None:
        self.stop_apiserver()
        if self.etcd is not None:
            self.etcd.terminate()
            try:
                self.etcd.wait(10)
            except subprocess.TimeoutExpired:
                self.etcd.kill()
            self.etcd = None
        self.webhook.stop()
