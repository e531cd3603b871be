"""The metrics and health server every service runs, and the metrics more than one stage uses.

Each stage defines its own metrics in its own package; all carry the ``tetrapipe_`` prefix and
Tetragon's names after it where Tetragon has one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, generate_latest

log = logging.getLogger("tetrapipe.metrics")

DEAD_LETTERS = Counter(
    "tetrapipe_deadletter_messages", "Messages sent to the dead-letter topic", ["stage"]
)
SEQUENCE_GAPS = Counter(
    "tetrapipe_sequence_gaps", "Raw batches missing from a collector's sequence", ["stage", "source"]
)
SEQUENCE_DUPLICATES = Counter(
    "tetrapipe_sequence_duplicates",
    "Raw batches seen again (at-least-once redelivery) and skipped",
    ["stage", "source"],
)
SEQUENCE_LATE = Counter(
    "tetrapipe_sequence_late",
    "Batches or events that arrived after a later one and filled a gap",
    ["stage", "source"],
)
SEQUENCE_MISSING = Gauge(
    "tetrapipe_sequence_missing",
    "Batches or events counted as gaps and not (yet) arrived: the loss",
    ["stage", "source"],
)
COMMIT_FAILURES = Counter(
    "tetrapipe_commit_failures",
    "Offset commits the broker refused (the messages are read again: duplicates, not loss)",
    ["group"],
)
PUBLISH_RETRIES = Counter(
    "tetrapipe_publish_retries",
    "Messages sent again because the broker did not acknowledge them",
    ["stage"],
)
CONSUMER_LAG = Gauge(
    "tetrapipe_consumer_lag_messages", "Messages behind the end of the topic", ["group", "topic"]
)

_health_checks: dict[str, Callable[[], bool]] = {}
_ready = {"ready": False}


def add_health_check(name: str, check: Callable[[], bool]) -> None:
    _health_checks[name] = check


def set_ready(ready: bool = True) -> None:
    """A stage calls this once it is fully started; /healthz answers 503 "starting" until then."""
    _ready["ready"] = ready


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.startswith("/metrics"):
            body = generate_latest(REGISTRY)
            self._reply(200, body, CONTENT_TYPE_LATEST)
        elif self.path.startswith("/healthz"):
            bad = [n for n, c in _health_checks.items() if not c()]
            if not _ready["ready"]:
                bad.insert(0, "starting")
            self._reply(503 if bad else 200, ("unhealthy: " + ",".join(bad) if bad else "ok").encode())
        else:
            self._reply(404, b"not found")

    def _reply(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def serve(host_port: tuple[str, int] | None) -> ThreadingHTTPServer | None:
    """Start /metrics and /healthz in a thread; None when metrics are off."""
    if host_port is None:
        return None
    server = ThreadingHTTPServer(host_port, _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics", *server.server_address[:2])
    return server
