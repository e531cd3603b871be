"""Watch the pods of this node on the Kubernetes API (field selector ``spec.nodeName``) with the
kubernetes_asyncio client, and keep the PodIndex current: list, then watch from the list's
resourceVersion; on any failure log what went wrong in words, back off (0.5 s doubling to 30 s)
and list again. Nothing here ever blocks event flow: the enricher builds events with what the
index has, and the pending queue bounds how long an event waits for its pod; the collector's pod
scope (collector/policy/pod_scope.py) recomputes its cgroup sets when the index changes.

Configuration: ``k8s_kubeconfig`` (a kubeconfig file), else in-cluster (service account) when
``KUBERNETES_SERVICE_HOST`` is set, else the default kubeconfig ($KUBECONFIG, ~/.kube/config).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException
from prometheus_client import Counter, Gauge

from tetrapipe.k8s.apiclient import api_client
from tetrapipe.k8s.pods import PodIndex

log = logging.getLogger("tetrapipe.k8s")

K8S_ERRORS = Counter("tetrapipe_k8s_api_errors", "Failed Kubernetes API calls, by reason", ["reason"])
K8S_EVENTS = Counter("tetrapipe_k8s_watch_events", "Pod watch events applied", ["type"])
K8S_PODS = Gauge("tetrapipe_k8s_pods", "Pods of this node in the pod index")
K8S_SYNCED = Gauge("tetrapipe_k8s_synced", "1 while the pod index follows a live watch")

WATCH_TIMEOUT_S = 300
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0


class MalformedResponse(Exception):
    """The API server answered something that is not the JSON we asked for."""


class PodWatcher:
    def __init__(self, index: PodIndex, node_name: str, kubeconfig: str = "",
                 on_node_labels: Callable[[dict[str, str]], None] | None = None,
                 backoff_max_s: float = BACKOFF_MAX_S) -> None:
        self.index = index
        self.backoff_max_s = backoff_max_s
        self.node_name = node_name
        self.kubeconfig = kubeconfig
        self.on_node_labels = on_node_labels
        # no node name: the pods of every node (an enricher run as a Deployment serves all nodes)
        self.selector = f"spec.nodeName={node_name}" if node_name else ""
        self.server = ""

    async def _api_client(self) -> client.ApiClient:
        api, self.server = await api_client(self.kubeconfig)
        return api

    async def run(self, stop: asyncio.Event) -> None:
        delay = BACKOFF_FIRST_S
        while not stop.is_set():
            try:
                async with await self._api_client() as api:
                    v1 = client.CoreV1Api(api)
                    await self._node_labels(v1)
                    rv = await self._list(v1)
                    while not stop.is_set():
                        rv, healthy = await self._watch(v1, rv)
                        if healthy:
                            delay = BACKOFF_FIRST_S
                            continue
                        K8S_ERRORS.labels(reason="watch_closed").inc()
                        log.warning("Kubernetes API %s closed the pod watch at once without an event; "
                                    "watching again in %.1fs", self.server, delay)
                        await _sleep(stop, delay)
                        delay = min(delay * 2, self.backoff_max_s)
                    continue
            except asyncio.CancelledError:
                raise
            except ApiException as exc:
                reason = self._explain_api_error(exc)
                if exc.status == 410:
                    delay = BACKOFF_FIRST_S
            except MalformedResponse as exc:
                K8S_ERRORS.labels(reason="malformed").inc()
                reason = f"malformed answer from the Kubernetes API {self.server}: {exc}"
            except (TimeoutError, aiohttp.ClientError) as exc:
                K8S_ERRORS.labels(reason="unreachable").inc()
                reason = f"cannot reach the Kubernetes API {self.server or '(unknown)'}: {exc!r}"
            except (ConfigException, OSError) as exc:
                K8S_ERRORS.labels(reason="config").inc()
                reason = f"no usable Kubernetes API configuration: {exc}"
            except Exception as exc:  # the watcher must never die: events keep flowing without it
                if "Malformed JSON" in str(exc):  # kubernetes_asyncio's words for a bad watch line
                    K8S_ERRORS.labels(reason="malformed").inc()
                    reason = f"malformed answer from the Kubernetes API {self.server}: {str(exc)[:200]}"
                else:
                    K8S_ERRORS.labels(reason="other").inc()
                    reason = f"pod watch failed: {exc!r}"
            K8S_SYNCED.set(0)
            log.error("%s; pod metadata may be missing or stale, retrying in %.1fs", reason, delay)
            await _sleep(stop, delay)
            delay = min(delay * 2, self.backoff_max_s)

    def _explain_api_error(self, exc: ApiException) -> str:
        status = exc.status or 0
        if status == 401:
            K8S_ERRORS.labels(reason="unauthorized").inc()
            return (f"Kubernetes API {self.server} refused our credentials (401 Unauthorized): "
                    "check the token or client certificate of the kubeconfig/service account")
        if status == 403:
            K8S_ERRORS.labels(reason="forbidden").inc()
            return (f"Kubernetes API {self.server} forbids listing pods (403): grant get/list/watch "
                    "on pods and get on nodes to this identity")
        if status == 410:
            K8S_ERRORS.labels(reason="expired").inc()
            return "pod watch resourceVersion expired (410 Gone): listing again"
        if status == 0:
            K8S_ERRORS.labels(reason="unreachable").inc()
            return f"cannot reach the Kubernetes API {self.server}: {exc.reason}"
        K8S_ERRORS.labels(reason=f"http_{status}").inc()
        return f"Kubernetes API {self.server} answered HTTP {status}: {exc.reason}"

    async def _get_json(self, call: Any, what: str, **kw: Any) -> dict[str, Any]:
        resp = await call(_preload_content=False, **kw)
        try:
            data = await resp.read()
        finally:
            resp.release()
        if not 200 <= resp.status <= 299:
            raise ApiException(status=resp.status, reason=_status_message(data) or resp.reason)
        try:
            doc = json.loads(data)
        except ValueError:
            raise MalformedResponse(f"{what} is not JSON: {data[:80]!r}") from None
        if not isinstance(doc, dict):
            raise MalformedResponse(f"{what} is not a JSON object: {data[:80]!r}")
        return doc

    async def _node_labels(self, v1: client.CoreV1Api) -> None:
        if self.on_node_labels is None or not self.node_name:
            return
        try:
            node = await self._get_json(v1.read_node, "node", name=self.node_name)
        except ApiException as exc:
            if exc.status == 404:
                log.warning("node %s is not known to the Kubernetes API: no node labels", self.node_name)
                return
            raise
        self.on_node_labels(dict((node.get("metadata") or {}).get("labels") or {}))

    async def _list(self, v1: client.CoreV1Api) -> str:
        doc = await self._get_json(v1.list_pod_for_all_namespaces, "pod list", field_selector=self.selector)
        items = doc.get("items")
        if not isinstance(items, list):
            raise MalformedResponse(f"pod list without items: {str(doc)[:80]}")
        self.index.replace_all([p for p in items if isinstance(p, dict)])
        K8S_PODS.set(len(self.index))
        K8S_SYNCED.set(1)
        rv = str((doc.get("metadata") or {}).get("resourceVersion", ""))
        log.info("Kubernetes API %s: %d pods on node %s (resourceVersion %s)", self.server,
                 len(self.index), self.node_name, rv)
        return rv

    async def _watch(self, v1: client.CoreV1Api, rv: str) -> tuple[str, bool]:
        """Apply watch events until the server ends the watch: (resourceVersion to go on from,
        whether the watch lived normally)."""
        w = watch.Watch(return_type="object")
        started = time.monotonic()
        n = 0
        try:
            stream = w.stream(v1.list_pod_for_all_namespaces, field_selector=self.selector,
                              resource_version=rv, timeout_seconds=WATCH_TIMEOUT_S,
                              allow_watch_bookmarks=True)
            async for ev in stream:
                if not isinstance(ev, dict):
                    raise MalformedResponse(f"pod watch sent a line that is not JSON: {str(ev)[:80]!r}")
                typ = ev.get("type", "")
                pod = ev.get("raw_object")
                if not isinstance(pod, dict):
                    raise MalformedResponse(f"pod watch event without an object: {str(ev)[:80]}")
                n += 1
                K8S_EVENTS.labels(type=typ).inc()
                if typ in ("ADDED", "MODIFIED"):
                    self.index.upsert(pod)
                elif typ == "DELETED":
                    self.index.delete((pod.get("metadata") or {}).get("uid", ""))
                K8S_PODS.set(len(self.index))
        finally:
            await w.close()
        new_rv = w.resource_version or rv
        healthy = n > 0 or time.monotonic() - started > 1.0
        if healthy:
            log.info("pod watch ended after %d events; watching again from resourceVersion %s", n, new_rv)
        return str(new_rv), healthy


def _status_message(data: bytes) -> str:
    try:
        doc = json.loads(data)
        return f"{doc.get('reason', '')}: {doc.get('message', '')}"
    except (ValueError, AttributeError):
        return ""


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
