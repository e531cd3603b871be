"""A minimal Confluent-compatible schema registry on loopback for tests: the REST calls tetrapipe
and ordinary Confluent clients make, with the same JSON bodies, status and error codes.

POST /subjects/{s}/versions, GET /schemas/ids/{id}, GET /subjects/{s}/versions/latest,
GET /subjects, GET /subjects/{s}/versions. With ``compatibility="BACKWARD"`` a new version whose
records add a field without a default is refused with 409 (error_code 409), as Confluent does.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tetrapipe.broker import free_port


def _records(schema: Any, out: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    if isinstance(schema, list):
        for s in schema:
            _records(s, out)
    elif isinstance(schema, dict):
        t = schema.get("type")
        if t == "record":
            out[schema["name"]] = schema
            for f in schema["fields"]:
                _records(f["type"], out)
        elif t == "array":
            _records(schema["items"], out)
        elif t == "map":
            _records(schema["values"], out)
        elif isinstance(t, (dict, list)):
            _records(t, out)
    return out


def backward_problems(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Reasons a reader with ``new`` could not read data written with ``old`` (field-level rule:
    a field the old record lacks needs a default)."""
    problems = []
    old_recs, new_recs = _records(old, {}), _records(new, {})
    for name, rec in new_recs.items():
        if name not in old_recs:
            continue
        old_fields = {f["name"] for f in old_recs[name]["fields"]}
        for f in rec["fields"]:
            if f["name"] not in old_fields and "default" not in f:
                problems.append(f"{name}.{f['name']} added without a default")
    return problems


class FakeSchemaRegistry:
    def __init__(self, compatibility: str = "BACKWARD", basic_auth: str = "") -> None:
        self.compatibility = compatibility
        self.basic_auth = basic_auth  # "user:password" → every request must carry it
        self.schemas: dict[int, str] = {}            # id → schema text
        self.subjects: dict[str, list[int]] = {}     # subject → ids by version
        self.requests: list[tuple[str, str]] = []
        self.up = True
        self._lock = threading.Lock()
        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeSchemaRegistry:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeSchemaRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _register(self, subject: str, text: str) -> tuple[int, dict[str, Any]]:
        try:
            schema = json.loads(text)
        except ValueError as e:
            return 422, {"error_code": 42201, "message": f"Invalid schema: {e}"}
        canon = json.dumps(schema, sort_keys=True)
        with self._lock:
            for sid, known in self.schemas.items():
                if json.dumps(json.loads(known), sort_keys=True) == canon:
                    if sid not in self.subjects.setdefault(subject, []):
                        self.subjects[subject].append(sid)
                    return 200, {"id": sid}
            versions = self.subjects.get(subject, [])
            if versions and self.compatibility.startswith("BACKWARD"):
                problems = backward_problems(json.loads(self.schemas[versions[-1]]), schema)
                if problems:
                    return 409, {"error_code": 409, "message": "Schema being registered is incompatible with "
                                 f"an earlier schema for subject \"{subject}\": {'; '.join(problems)}"}
            sid = len(self.schemas) + 1
            self.schemas[sid] = text
            self.subjects.setdefault(subject, []).append(sid)
            return 200, {"id": sid}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        reg = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self, method: str) -> None:
                reg.requests.append((method, self.path))
                if not reg.up:
                    self._send(503, {"error_code": 50003, "message": "unavailable"})
                    return
                if reg.basic_auth:
                    import base64

                    want = "Basic " + base64.b64encode(reg.basic_auth.encode()).decode()
                    if self.headers.get("Authorization") != want:
                        self._send(401, {"error_code": 401, "message": "Unauthorized"})
                        return
                parts = [urllib.parse.unquote(p) for p in self.path.split("?")[0].strip("/").split("/")]
                if method == "POST" and len(parts) == 3 and parts[0] == "subjects" and parts[2] == "versions":
                    n = int(self.headers.get("Content-Length", 0))
                    body = json.loads(self.rfile.read(n) or b"{}")
                    if body.get("schemaType", "AVRO") != "AVRO":
                        self._send(422, {"error_code": 42201, "message": "only AVRO here"})
                        return
                    self._send(*reg._register(parts[1], body.get("schema", "")))
                elif method == "GET" and len(parts) == 3 and parts[:2] == ["schemas", "ids"]:
                    text = reg.schemas.get(int(parts[2]))
                    if text is None:
                        self._send(404, {"error_code": 40403, "message": "Schema not found"})
                    else:
                        self._send(200, {"schema": text})
                elif method == "GET" and parts == ["subjects"]:
                    self._send(200, sorted(reg.subjects))
                elif method == "GET" and len(parts) >= 3 and parts[0] == "subjects" and parts[2] == "versions":
                    ids = reg.subjects.get(parts[1])
                    if not ids:
                        self._send(404, {"error_code": 40401, "message": f"Subject '{parts[1]}' not found."})
                    elif len(parts) == 3:
                        self._send(200, list(range(1, len(ids) + 1)))
                    else:
                        v = len(ids) if parts[3] == "latest" else int(parts[3])
                        sid = ids[v - 1]
                        self._send(200, {"subject": parts[1], "version": v, "id": sid, "schema": reg.schemas[sid]})
                else:
                    self._send(404, {"error_code": 404, "message": "HTTP 404 Not Found"})

            def do_GET(self) -> None:  # noqa: N802
                self._route("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._route("POST")

        return Handler
