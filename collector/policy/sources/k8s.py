"""TracingPolicy and TracingPolicyNamespaced custom resources (``cilium.io/v1alpha1``, as
Tetragon's) from the Kubernetes API server, applied to this node's PolicyManager.

For each kind: list, then watch from the list's resourceVersion; a watch that ends is resumed
from the last resourceVersion seen; 410 Gone (the version expired) lists again, and keys missing
from the new list are unloaded. When the server is away, back off (0.5 s doubling up to
``k8s_retry_max_ms``) and keep enforcing what is loaded. A resource's spec is rendered as JSON
and goes through the same parser as files (collector/policy/jsondoc.py); a changed spec replaces
the loaded version (new one first), a deleted resource unloads.

What happened on this node is written where kubectl users look:
- ``status.nodes[<node>]``: state (loaded | error | error_previous_acting), mode, mechanism (hook
  via what serves it), error with path, line and reason, observedGeneration; and the summary
  columns ``status.state``, ``status.loadedNodes``, ``status.refusedNodes``, ``status.error``,
  recomputed from every node's entry (read, modify, update with the resourceVersion: a conflict
  with another node's write reads again);
- a core/v1 Event on the resource (``PolicyLoaded`` Normal, ``PolicyRefused`` Warning), in the
  resource's namespace (``default`` for the cluster-wide kind, as client-go's recorder does).
Status writes happen only when this node's entry changed, so our own writes (which come back as
MODIFIED events with the same spec) end there.

The line in an error counts in the resource rendered as JSON with sorted keys (apiVersion, kind,
metadata with name and namespace, spec; 2-space indent); the path (``spec.kprobes[0]...``) is the
same as in the YAML the user applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from collector.policy.manager import PolicyManager
from collector.policy.sources.policyset import (
    SOURCE_ERRORS,
    SOURCE_LAST_SYNC,
    SOURCE_UP,
    Entry,
    PolicySet,
    count_states,
)
from tetrapipe.k8s.apiclient import api_client

log = logging.getLogger("tetrapipe.policy.k8s")

GROUP = "cilium.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
PLURALS = {"TracingPolicy": "tracingpolicies", "TracingPolicyNamespaced": "tracingpoliciesnamespaced"}
SOURCE = "kubernetes"
COMPONENT = "tetrapipe-collector"
WATCH_TIMEOUT_S = 300
BACKOFF_FIRST_S = 0.5
STATUS_RETRIES = 8


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def key_of(kind: str, obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace") or ""
    return f"{kind}/{ns}/{meta.get('name', '')}" if ns else f"{kind}/{meta.get('name', '')}"


def render(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    """(policy text, source name) of a custom resource: only what the parser reads."""
    meta = obj.get("metadata") or {}
    doc: dict[str, Any] = {"apiVersion": obj.get("apiVersion", API_VERSION), "kind": kind,
                           "metadata": {"name": meta.get("name", "")}, "spec": obj.get("spec")}
    if meta.get("namespace"):
        doc["metadata"]["namespace"] = meta["namespace"]
    ns = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return json.dumps(doc, indent=2, sort_keys=True), f"{kind.lower()}/{ns}{meta.get('name', '')}"


def node_status(entry: Entry, generation: int | None) -> dict[str, Any]:
    """This node's entry of ``status.nodes`` (without its time, compared to skip idle writes)."""
    st: dict[str, Any] = {"state": entry.state}
    if entry.info:
        info = entry.info[0]
        st["mode"] = info.get("mode", "")
        st["mechanism"] = "; ".join(f"{h['function_name']} via {h['serve']}" for h in info.get("hooks", [])) \
            or ("loader events" if info.get("loader") else "")
        if info.get("notices"):
            st["notices"] = list(info["notices"])[:8]
    if entry.error is not None:
        e = entry.error
        st["error"] = e.text()
        st["reason"] = e.reason
        if e.path:
            st["path"] = e.path
        if e.line:
            st["line"] = e.line
    if generation is not None:
        st["observedGeneration"] = generation
    return st


def summarize(status: dict[str, Any]) -> None:
    """The columns kubectl shows, from every node's entry."""
    nodes = status.get("nodes") or {}
    loaded = sum(1 for n in nodes.values() if isinstance(n, dict) and n.get("state") == "loaded")
    refused = sorted(k for k, n in nodes.items() if isinstance(n, dict) and n.get("state") != "loaded")
    status["loadedNodes"] = loaded
    status["refusedNodes"] = len(refused)
    status["state"] = "Refused" if refused and not loaded else "Partial" if refused else "Loaded"
    if refused:
        first = nodes[refused[0]]
        status["error"] = f"{refused[0]}: {first.get('error', first.get('state', ''))}"[:1024]
    else:
        status.pop("error", None)


class K8sPolicySource:
    def __init__(self, mgr: PolicyManager, node_name: str, kubeconfig: str = "",
                 backoff_max_s: float = 30.0, watch_timeout_s: int = WATCH_TIMEOUT_S) -> None:
        self.set = PolicySet(mgr, SOURCE)
        self.node = node_name
        self.kubeconfig = kubeconfig
        self.backoff_max_s = backoff_max_s
        self.watch_timeout_s = watch_timeout_s
        self.server = ""
        self.synced: dict[str, bool] = dict.fromkeys(PLURALS, False)

    async def _api_client(self) -> client.ApiClient:
        api, self.server = await api_client(self.kubeconfig)
        return api

    async def run(self, stop: asyncio.Event) -> None:
        """Watch both kinds until ``stop``; what is loaded stays loaded when this ends (the
        collector unloads everything at its own stop)."""
        work = asyncio.gather(*(self._run_kind(kind, stop) for kind in PLURALS))
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        work.cancel()  # a watch may wait for the server for minutes
        with contextlib.suppress(asyncio.CancelledError):
            await work

    async def _run_kind(self, kind: str, stop: asyncio.Event) -> None:
        delay = BACKOFF_FIRST_S
        while not stop.is_set():
            try:
                async with await self._api_client() as api:
                    objs = client.CustomObjectsApi(api)
                    rv = await self._list(api, objs, kind)
                    delay = BACKOFF_FIRST_S
                    while not stop.is_set():
                        rv = await self._watch(api, objs, kind, rv)
            except asyncio.CancelledError:
                raise
            except ApiException as exc:
                status = exc.status or 0
                reason = {0: "unreachable", 401: "unauthorized", 403: "forbidden", 404: "no_crd",
                          410: "expired"}.get(status, f"http_{status}")
                SOURCE_ERRORS.labels(source=SOURCE, reason=reason).inc()
                why = (f"the {kind} CRD is not installed (404): apply deploy/kubernetes/crds.yaml"
                       if status == 404 else
                       f"{kind} watch resourceVersion expired (410 Gone): listing again" if status == 410
                       else f"Kubernetes API {self.server} answered HTTP {status}: {exc.reason}")
                if status == 410:
                    delay = 0.0
                if status != 410:
                    self._down(kind)
                log.log(logging.INFO if status == 410 else logging.ERROR, "%s; loaded policies keep acting; "
                        "again in %.1fs", why, delay)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                SOURCE_ERRORS.labels(source=SOURCE, reason="unreachable").inc()
                self._down(kind)
                log.error("cannot reach the Kubernetes API %s for %s (%r); loaded policies keep acting; "
                          "again in %.1fs", self.server or "(unknown)", kind, exc, delay)
            except ConfigException as exc:
                SOURCE_ERRORS.labels(source=SOURCE, reason="config").inc()
                self._down(kind)
                log.error("no usable Kubernetes API configuration: %s; again in %.1fs", exc, delay)
            except Exception as exc:  # noqa: BLE001 - the source must never die
                SOURCE_ERRORS.labels(source=SOURCE, reason="other").inc()
                self._down(kind)
                log.exception("%s watch failed: %r; again in %.1fs", kind, exc, delay)
            await _sleep(stop, delay)
            delay = min(max(delay * 2, BACKOFF_FIRST_S), self.backoff_max_s)

    def _down(self, kind: str) -> None:
        self.synced[kind] = False
        SOURCE_UP.labels(source=SOURCE).set(0)

    async def _list(self, api: client.ApiClient, objs: client.CustomObjectsApi, kind: str) -> str:
        resp = await objs.list_cluster_custom_object(GROUP, VERSION, PLURALS[kind], _preload_content=False)
        try:
            data = await resp.read()
        finally:
            resp.release()
        if resp.status != 200:
            raise ApiException(status=resp.status, reason=data[:200].decode(errors="replace"))
        doc = json.loads(data)
        items = [o for o in doc.get("items") or [] if isinstance(o, dict)]
        prefix = f"{kind}/"
        present = {key_of(kind, o) for o in items}
        loop = asyncio.get_running_loop()
        for key in sorted(k for k in self.set.entries if k.startswith(prefix) and k not in present):
            await loop.run_in_executor(None, self.set.remove, key)  # deleted while we were away
        for o in items:
            await self._apply(api, kind, o)
        rv = str((doc.get("metadata") or {}).get("resourceVersion", ""))
        self.synced[kind] = True
        if all(self.synced.values()):
            SOURCE_UP.labels(source=SOURCE).set(1)
            SOURCE_LAST_SYNC.labels(source=SOURCE).set(time.time())
        log.info("Kubernetes API %s: %d %s (resourceVersion %s)", self.server, len(items), PLURALS[kind], rv)
        return rv

    async def _watch(self, api: client.ApiClient, objs: client.CustomObjectsApi, kind: str, rv: str) -> str:
        w = watch.Watch(return_type="object")
        try:
            stream = w.stream(objs.list_cluster_custom_object, GROUP, VERSION, PLURALS[kind],
                              resource_version=rv, timeout_seconds=self.watch_timeout_s,
                              allow_watch_bookmarks=True)
            async for ev in stream:
                obj = ev.get("raw_object") if isinstance(ev, dict) else None
                if not isinstance(obj, dict):
                    raise ValueError(f"{kind} watch sent something that is not an event: {str(ev)[:80]}")
                typ = ev.get("type", "")
                if typ in ("ADDED", "MODIFIED"):
                    await self._apply(api, kind, obj)
                elif typ == "DELETED":
                    await asyncio.get_running_loop().run_in_executor(None, self.set.remove, key_of(kind, obj))
                    count_states(SOURCE, self.set.entries)
        finally:
            await w.close()
        return str(w.resource_version or rv)

    async def _apply(self, api: client.ApiClient, kind: str, obj: dict[str, Any]) -> None:
        key = key_of(kind, obj)
        text, source = render(kind, obj)
        entry = await asyncio.get_running_loop().run_in_executor(None, self.set.apply, key, text, source)
        count_states(SOURCE, self.set.entries)
        meta = obj.get("metadata") or {}
        want = node_status(entry, meta.get("generation"))
        have = dict(((obj.get("status") or {}).get("nodes") or {}).get(self.node) or {})
        have.pop("lastTransitionTime", None)
        if have != want:
            try:
                await self._write_status(api, kind, meta, want)
            except ApiException as exc:
                if exc.status == 0 or exc.status is None:
                    raise
                SOURCE_ERRORS.labels(source=SOURCE, reason="status").inc()
                log.error("status of %s not written (HTTP %s: %s): grant update on %s/status", key,
                          exc.status, exc.reason, PLURALS[kind])
        if entry.changed:
            await self._event(api, kind, meta, entry)

    async def _write_status(self, api: client.ApiClient, kind: str, meta: dict[str, Any],
                            mine: dict[str, Any]) -> None:
        path = _object_path(kind, meta)
        for _ in range(STATUS_RETRIES):
            obj = await _call(api, "GET", path)
            if obj is None:
                return  # deleted meanwhile
            status = obj.get("status") if isinstance(obj.get("status"), dict) else {}
            nodes = status.get("nodes") if isinstance(status.get("nodes"), dict) else {}
            nodes[self.node] = dict(mine, lastTransitionTime=now_rfc3339())
            status["nodes"] = nodes
            summarize(status)
            obj["status"] = status
            try:
                await _call(api, "PUT", path + "/status", obj)
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise
                # another node wrote first: read again
        raise ApiException(status=409, reason=f"status conflict {STATUS_RETRIES} times in a row")

    async def _event(self, api: client.ApiClient, kind: str, meta: dict[str, Any], entry: Entry) -> None:
        ns = meta.get("namespace") or "default"
        if entry.error is None:
            etype, reason = "Normal", "PolicyLoaded"
            info = entry.info[0] if entry.info else {}
            msg = (f"node {self.node}: loaded ({info.get('mode', '')} mode): "
                   + "; ".join(f"{h['function_name']} via {h['serve']}" for h in info.get("hooks", [])))
        else:
            etype, reason = "Warning", "PolicyRefused"
            msg = f"node {self.node}: refused: {entry.error.text()}"
            if entry.names:
                msg += " (the previous version keeps acting)"
        ts = now_rfc3339()
        ref = {"apiVersion": API_VERSION, "kind": kind, "name": meta.get("name", ""),
               "uid": meta.get("uid", ""), "resourceVersion": meta.get("resourceVersion", "")}
        if meta.get("namespace"):
            ref["namespace"] = meta["namespace"]
        body = {"apiVersion": "v1", "kind": "Event",
                "metadata": {"generateName": f"{meta.get('name', 'tracingpolicy')}.", "namespace": ns},
                "involvedObject": ref, "reason": reason, "message": msg[:1024], "type": etype,
                "source": {"component": COMPONENT, "host": self.node}, "count": 1,
                "firstTimestamp": ts, "lastTimestamp": ts,
                "reportingComponent": COMPONENT, "reportingInstance": self.node}
        try:
            await _call(api, "POST", f"/api/v1/namespaces/{ns}/events", body)
        except ApiException as exc:
            if exc.status == 0 or exc.status is None:
                raise
            SOURCE_ERRORS.labels(source=SOURCE, reason="event").inc()
            log.error("event on %s not created (HTTP %s: %s): grant create on events", meta.get("name"),
                      exc.status, exc.reason)


def _object_path(kind: str, meta: dict[str, Any]) -> str:
    ns = meta.get("namespace")
    where = f"/namespaces/{ns}" if ns else ""
    return f"/apis/{GROUP}/{VERSION}{where}/{PLURALS[kind]}/{meta.get('name', '')}"


async def _call(api: client.ApiClient, method: str, path: str, body: Any = None) -> dict[str, Any] | None:
    """One JSON request through the client's configuration (auth, TLS); None for 404."""
    resp = await api.call_api(path, method, header_params={"Accept": "application/json",
                                                           "Content-Type": "application/json"},
                              body=body, auth_settings=["BearerToken"], _preload_content=False,
                              _return_http_data_only=True)
    try:
        data = await resp.read()
    finally:
        resp.release()
    if resp.status == 404 and method == "GET":
        return None
    if not 200 <= resp.status <= 299:
        try:
            doc = json.loads(data)
            reason = f"{doc.get('reason', '')}: {doc.get('message', '')}"
        except (ValueError, AttributeError):
            reason = data[:200].decode(errors="replace")
        raise ApiException(status=resp.status, reason=reason)
    return json.loads(data) if data else {}


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
