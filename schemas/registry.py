"""Confluent schema registry client (its REST API) and the event serializer/decoder every stage
uses on the events topic.

Without a registry URL: Avro single-object encoding (``C3 01`` + CRC-64-AVRO fingerprint).
With one: Confluent framing (``00`` + 4-byte big-endian schema id) after registering the schema
under the subject ``<topic>-value`` (TopicNameStrategy, Confluent's default). Decoders accept both
framings, so a topic can switch from one to the other without breaking its consumers.

Ids and schemas are cached: the registry is asked once per schema id and once per registration.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import struct
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import fastavro

from schemas import codec

log = logging.getLogger("tetrapipe.schemas")

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryError(RuntimeError):
    """The registry refused a request or could not be reached."""

    def __init__(self, message: str, status: int = 0, error_code: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code

    @property
    def unreachable(self) -> bool:
        return self.status == 0 or self.status >= 500


def subject_for(topic: str) -> str:
    return f"{topic}-value"


class RegistryClient:
    def __init__(self, url: str, timeout: float = 5.0) -> None:
        parts = urllib.parse.urlsplit(url)
        self.auth = ""
        if parts.username is not None:  # http://key:secret@host:8081 (Confluent Cloud style)
            cred = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            self.auth = "Basic " + base64.b64encode(cred.encode()).decode()
            netloc = parts.hostname or ""
            if parts.port:
                netloc += f":{parts.port}"
            parts = parts._replace(netloc=netloc)
        self.url = urllib.parse.urlunsplit(parts).rstrip("/")
        self.timeout = timeout
        self._by_id: dict[int, Any] = {}        # id → parsed fastavro schema
        self._raw_by_id: dict[int, dict[str, Any]] = {}
        self._ids: dict[tuple[str, str], int] = {}  # (subject, canonical schema) → id
        self._lock = threading.Lock()

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": CONTENT_TYPE, "Accept": CONTENT_TYPE}
        if self.auth:
            headers["Authorization"] = self.auth
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            try:
                err = json.loads(e.read() or b"{}")
            except ValueError:
                err = {}
            raise RegistryError(f"schema registry {method} {path}: HTTP {e.code}: "
                                f"{err.get('message', e.reason)}", e.code, int(err.get("error_code", 0))) from None
        except (OSError, ValueError) as e:
            raise RegistryError(f"schema registry {self.url} unreachable: {e}") from None

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        """Register ``schema`` under ``subject`` (idempotent) and return its global id."""
        text = json.dumps(schema, separators=(",", ":"))
        key = (subject, text)
        with self._lock:
            if key in self._ids:
                return self._ids[key]
        resp = self._request("POST", f"/subjects/{urllib.parse.quote(subject, safe='')}/versions",
                             {"schema": text, "schemaType": "AVRO"})
        sid = int(resp["id"])
        with self._lock:
            self._ids[key] = sid
            self._raw_by_id.setdefault(sid, schema)
        return sid

    def schema_by_id(self, schema_id: int) -> Any:
        """The parsed writer schema of ``schema_id`` (cached)."""
        with self._lock:
            if schema_id in self._by_id:
                return self._by_id[schema_id]
        raw = self._raw_by_id.get(schema_id)
        if raw is None:
            resp = self._request("GET", f"/schemas/ids/{schema_id}")
            if resp.get("schemaType", "AVRO") != "AVRO":
                raise RegistryError(f"schema id {schema_id} is {resp.get('schemaType')}, not AVRO")
            raw = json.loads(resp["schema"])
        parsed = fastavro.parse_schema(raw, _force=True)
        with self._lock:
            self._by_id[schema_id] = parsed
            self._raw_by_id[schema_id] = raw
        return parsed

    def latest(self, subject: str) -> dict[str, Any]:
        """``{"subject", "version", "id", "schema"}`` of the subject's latest version."""
        return self._request("GET", f"/subjects/{urllib.parse.quote(subject, safe='')}/versions/latest")


class EventSerializer:
    """Encodes records of schema ``name`` for ``topic``: single-object, or Confluent framing when a
    registry client is given (after :meth:`ready` registered the schema)."""

    def __init__(self, name: str, topic: str, registry: RegistryClient | None = None) -> None:
        self.name = name
        self.topic = topic
        self.registry = registry
        self.schema_id: int | None = None
        self._prefix = b""

    @property
    def framing(self) -> str:
        return "confluent" if self.registry is not None else "single-object"

    def register(self) -> None:
        if self.registry is None:
            return
        self.schema_id = self.registry.register(subject_for(self.topic), codec.schema(self.name).raw)
        self._prefix = codec.CONFLUENT_MAGIC + struct.pack(">I", self.schema_id)
        log.info("schema %s registered as subject %s, id %d", self.name, subject_for(self.topic),
                 self.schema_id)

    async def ready(self, stop: asyncio.Event | None = None, max_backoff: float = 10.0) -> bool:
        """Register, retrying while the registry is unreachable; False if stopped first.
        A refusal (e.g. an incompatible schema, HTTP 409) raises RegistryError."""
        backoff = 0.5
        while True:
            try:
                await asyncio.to_thread(self.register)
                return True
            except RegistryError as exc:
                if not exc.unreachable:
                    raise
                log.warning("%s; retrying in %.1fs", exc, backoff)
            if stop is not None:
                try:
                    await asyncio.wait_for(stop.wait(), backoff)
                    return False
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)

    def encode(self, record: dict[str, Any]) -> bytes:
        if self.registry is None:
            return codec.encode(self.name, record)
        if self.schema_id is None:
            self.register()
        return self._prefix + codec.encode_body(self.name, record)


def client_for(url: str) -> RegistryClient | None:
    return RegistryClient(url) if url else None


def serializer_for(cfg: Any, name: str = "event") -> EventSerializer:
    """The serializer of the events topic for a stage's configuration."""
    return EventSerializer(name, cfg.events_topic, client_for(cfg.schema_registry_url))


def decoder_for(cfg: Any, name: str = "event") -> Callable[[bytes], dict[str, Any]]:
    """``decode(bytes) -> record`` accepting single-object and (with a registry) Confluent framing.
    An id the registry does not know is a codec.CodecError (the message is bad); any other
    registry failure (unreachable, 401/403, 5xx) raises RegistryError: retry, the message is fine."""
    client = client_for(getattr(cfg, "schema_registry_url", ""))
    if client is None:
        return lambda data: codec.decode(name, data)

    def lookup(schema_id: int) -> Any:
        try:
            return client.schema_by_id(schema_id)
        except RegistryError as exc:
            if exc.status in (404, 422):  # an id the registry does not have: the message is bad
                raise codec.CodecError(str(exc)) from exc
            raise  # unreachable, unauthorized, overloaded: the message is fine, retry later

    return lambda data: codec.decode(name, data, registry_lookup=lookup)
