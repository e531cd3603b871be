"""A policy set from an Open Policy Agent server: the document at ``opa_policy_path`` of OPA's Data
API (``GET <opa_url>/v1/data/<path>``, e.g. ``tetrapipe/policies`` = ``data.tetrapipe.policies``),
produced by Rego from whatever data the security team keeps in OPA, polled every
``opa_poll_interval_ms``.

The document is a list of TracingPolicy / TracingPolicyNamespaced objects (a Rego set or array),
or an object whose values are such objects. It is applied as a set (policyset.py): new policies
load, changed ones replace their loaded version (new one first), missing ones unload. Each policy
goes through the same parser as files, with the same errors (path, line in the policy rendered as
JSON with sorted keys, 2-space indent). One refused policy leaves the others acting.

OPA unreachable, an HTTP error, a document that is undefined (no Rego or data at the path) or not
a list/object of objects: the last good set keeps acting, and it is said in the log and the
metrics (``tetrapipe_policy_source_up{source="opa"}``, ``..._errors_total{source="opa",reason}``,
``..._policies{source="opa",state}``, ``..._last_sync_timestamp_seconds``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import aiohttp

from collector.policy.manager import PolicyManager
from collector.policy.sources.policyset import (
    SOURCE_ERRORS,
    SOURCE_LAST_SYNC,
    SOURCE_UP,
    Entry,
    PolicySet,
    count_states,
)

log = logging.getLogger("tetrapipe.policy.opa")
SOURCE = "opa"
MAX_DOCUMENT = 16 * 1024 * 1024


class BadDocument(ValueError):
    """The document at the path is not a policy set: the last good set stays."""


def data_url(base: str, path: str) -> str:
    clean = path.strip().removeprefix("data.").replace(".", "/").strip("/")
    return f"{base.rstrip('/')}/v1/data/{clean}"


def wanted_set(result: Any, where: str) -> dict[str, tuple[str, str]]:
    """key → (policy text, source name) of every policy in the document."""
    if isinstance(result, dict):
        items = [(f"{where}.{k}", v) for k, v in sorted(result.items())]
    elif isinstance(result, list):
        items = [(f"{where}[{i}]", v) for i, v in enumerate(result)]
    else:
        raise BadDocument(f"{where} is {type(result).__name__}, not a list of TracingPolicy objects")
    out: dict[str, tuple[str, str]] = {}
    for source, item in items:
        if not isinstance(item, dict):
            raise BadDocument(f"{source} is {type(item).__name__}, not a TracingPolicy object")
        meta = item.get("metadata") if isinstance(item.get("metadata"), dict) else {}
        name = meta.get("name")
        key = f"{item.get('kind')}/{meta.get('namespace') or ''}/{name}" if isinstance(name, str) else source
        if key in out:
            key = source  # the same name twice: the second is refused by the manager, by name
        out[key] = (json.dumps(item, indent=2, sort_keys=True), source)
    return out


class OpaPolicySource:
    def __init__(self, mgr: PolicyManager, url: str, path: str = "tetrapipe/policies",
                 interval_s: float = 10.0, timeout_s: float = 5.0, token: str = "") -> None:
        self.set = PolicySet(mgr, SOURCE)
        self.url = data_url(url, path)
        self.where = "data." + path.strip().removeprefix("data.").replace("/", ".").strip(".")
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.token = token
        self.last_error = ""
        self.polls = 0

    async def run(self, stop: asyncio.Event) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as http:
            while not stop.is_set():
                await self.poll(http)
                try:
                    await asyncio.wait_for(stop.wait(), self.interval_s)
                except TimeoutError:
                    pass

    async def poll(self, http: aiohttp.ClientSession) -> dict[str, Entry] | None:
        """One read and apply; None when the document could not be had (last set kept)."""
        self.polls += 1
        try:
            wanted = wanted_set(await self._fetch(http), self.where)
        except BadDocument as exc:
            return self._failed("invalid", f"OPA {self.url}: {exc}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return self._failed("unreachable", f"cannot reach OPA at {self.url}: {exc!r}")
        entries = await asyncio.get_running_loop().run_in_executor(None, self.set.sync, wanted)
        count_states(SOURCE, self.set.entries)
        SOURCE_UP.labels(source=SOURCE).set(1)
        SOURCE_LAST_SYNC.labels(source=SOURCE).set(time.time())
        if self.last_error:
            log.info("OPA %s answers again: %d policies in the set", self.url, len(wanted))
        self.last_error = ""
        return entries

    async def _fetch(self, http: aiohttp.ClientSession) -> Any:
        async with http.get(self.url) as resp:
            body = await resp.content.read(MAX_DOCUMENT + 1)
            if len(body) > MAX_DOCUMENT:
                raise BadDocument(f"document larger than {MAX_DOCUMENT} bytes")
            if resp.status != 200:
                raise BadDocument(f"HTTP {resp.status}: {body[:200].decode(errors='replace')}")
        try:
            doc = json.loads(body)
        except ValueError:
            raise BadDocument(f"answer is not JSON: {body[:80]!r}") from None
        if not isinstance(doc, dict) or "result" not in doc:
            raise BadDocument(f"{self.where} is undefined (no Rego rule or data at that path)")
        return doc["result"]

    def _failed(self, reason: str, message: str) -> None:
        SOURCE_ERRORS.labels(source=SOURCE, reason=reason).inc()
        SOURCE_UP.labels(source=SOURCE).set(0)
        if message != self.last_error:
            log.error("%s; the last good policy set (%d policies) keeps acting", message,
                      sum(len(e.names) for e in self.set.entries.values()))
        self.last_error = message
        return None
