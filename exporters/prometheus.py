"""Prometheus sink: Tetragon's event metrics, counted from the events topic and served on the
exporter's own /metrics port (tetrapipe/metrics.py), next to its health metrics.

- ``tetrapipe_events_total{type,namespace,workload,pod,binary,node_name}`` (type as Tetragon's
  EventType name: PROCESS_EXEC, PROCESS_KPROBE, ...)
- ``tetrapipe_policy_events_total{policy,hook,namespace,workload,pod,binary,node_name}`` for
  events a policy produced (hook ``kprobe:<function>``, ``tracepoint:<subsys>:<event>``,
  ``lsm:<hook>``)
- ``tetrapipe_policy_event_actions_total{policy,hook,action}`` the action each policy event
  reports (``KPROBE_ACTION_SIGKILL`` ...): what the dashboard shows as kills
- ``tetrapipe_syscalls_total{syscall,namespace,workload,pod,binary,node_name}`` for syscall hooks
  (``sys_*``/``__x64_sys_*`` kprobes, ``syscalls:sys_enter_*`` and ``raw_syscalls:sys_enter``)

``metrics_label_filter`` (as Tetragon's ``--metrics-label-filter``, default
``namespace,workload,pod,binary``) says which of the process labels are kept; the others are left
out of the metrics altogether, so a busy host does not grow one series per binary or pod.
"""

from __future__ import annotations

import logging
import re
from functools import cache
from typing import Any

from prometheus_client import Counter

from exporters import protojson
from tetrapipe.config import Config

log = logging.getLogger("tetrapipe.export.prometheus")

FILTERABLE = ("namespace", "workload", "pod", "binary")
_SYSCALL_FN = re.compile(r"^(?:__(?:x64|ia32|arm64|riscv|s390x)_)?sys_(\w+)$")


def parse_label_filter(text: str) -> tuple[str, ...]:
    """Kept labels, in Tetragon's order; unknown names are ignored with a warning, as Tetragon."""
    wanted = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in wanted if x not in FILTERABLE]
    if unknown:
        log.warning("metrics_label_filter: ignoring unknown labels %s (known: %s)",
                    ",".join(unknown), ",".join(FILTERABLE))
    return tuple(x for x in FILTERABLE if x in wanted)


@cache
def _metrics(kept: tuple[str, ...]) -> tuple[Counter, Counter, Counter, Counter]:
    events = Counter("tetrapipe_events", "Events by type and process labels",
                     ["type", *kept, "node_name"])
    policy = Counter("tetrapipe_policy_events", "Events produced by tracing policies",
                     ["policy", "hook", *kept, "node_name"])
    actions = Counter("tetrapipe_policy_event_actions", "Actions reported by policy events",
                      ["policy", "hook", "action"])
    syscalls = Counter("tetrapipe_syscalls", "System calls seen by syscall hooks",
                       ["syscall", *kept, "node_name"])
    return events, policy, actions, syscalls


def process_labels(body: dict[str, Any]) -> dict[str, str]:
    proc = body.get("process") or {}
    pod = proc.get("pod") or {}
    return {"namespace": pod.get("namespace") or "", "workload": pod.get("workload") or "",
            "pod": pod.get("name") or "", "binary": proc.get("binary") or ""}


def hook_of(kind: str, body: dict[str, Any]) -> str:
    if kind == "process_kprobe":
        return f"kprobe:{body.get('function_name', '')}"
    if kind == "process_tracepoint":
        return f"tracepoint:{body.get('subsys', '')}:{body.get('event', '')}"
    if kind == "process_lsm":
        return f"lsm:{body.get('function_name', '')}"
    if kind == "process_uprobe":
        return f"uprobe:{body.get('symbol', '')}"
    return kind


def syscall_of(kind: str, body: dict[str, Any]) -> str | None:
    if kind in ("process_kprobe", "process_lsm"):
        m = _SYSCALL_FN.match(body.get("function_name") or "")
        return m.group(1) if m else None
    if kind == "process_tracepoint":
        subsys, event = body.get("subsys") or "", body.get("event") or ""
        if subsys == "syscalls" and event.startswith("sys_enter_"):
            return event[len("sys_enter_"):]
        if subsys == "raw_syscalls" and event == "sys_enter":
            args = body.get("args") or []
            nr = next((a.get("long_arg") for a in args[:1] if a.get("long_arg") is not None), None)
            return f"syscall_{nr}" if nr is not None else "unknown"
    return None


class PrometheusSink:
    name = "prometheus"

    def __init__(self, cfg: Config) -> None:
        self.kept = parse_label_filter(cfg.metrics_label_filter)
        self.events, self.policy, self.actions, self.syscalls = _metrics(self.kept)
        # the child of each label tuple seen: Counter.labels() (lock, checks, str() per value)
        # cost more than the increment itself, once per event and counter
        self._children: dict[tuple[Counter, tuple[str, ...]], Any] = {}

    def _inc(self, counter: Counter, *labels: str) -> None:
        key = (counter, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = counter.labels(*labels)
        child.inc()

    async def start(self) -> None:
        log.info("event metrics with labels %s", ",".join(self.kept) or "(none)")

    async def write(self, events: list[dict[str, Any]]) -> int:
        for ev in events:
            self.count(ev)
        return 0

    def count(self, ev: dict[str, Any]) -> None:
        kind = protojson.event_type(ev)
        body = ev.get(kind) or {}
        node = ev.get("node_name") or ""
        plabels = process_labels(body)
        kept = [plabels[k] for k in self.kept]
        self._inc(self.events, kind.upper(), *kept, node)
        policy = body.get("policy_name")
        if policy:
            hook = hook_of(kind, body)
            self._inc(self.policy, policy, hook, *kept, node)
            action = body.get("action")
            if action:
                self._inc(self.actions, policy, hook, action)
        syscall = syscall_of(kind, body)
        if syscall:
            self._inc(self.syscalls, syscall, *kept, node)

    async def stop(self) -> None:
        return
