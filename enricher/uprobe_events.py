"""Uprobe hook records → Tetragon ``process_uprobe`` events.

A uprobe hook record is a REC_HOOK record like every policy hook's (bpf/records.h struct tp_hook
and its struct tp_arg arguments); the hook's catalog entry (collector/uprobes.py ``catalog_hook``:
``kind: uprobe``, ``path``, ``symbol``, ``offset``, ``args``) names what fired. For hooks of kind
``uprobe`` the policy events builder (enricher/policy_events.py) uses :func:`event_body`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bpf import records as r
from enricher.policy_events import ACTION_NAMES, typed_arg

if TYPE_CHECKING:
    from enricher.event_builder import EventBuilder


def event_body(hook: dict[str, Any], policy_name: str, body: r.HookBody,
               process: dict[str, Any], parent: dict[str, Any] | None) -> dict[str, Any]:
    """The ``process_uprobe`` body of one hit of a catalogued uprobe hook."""
    specs = hook.get("args") or []
    out: dict[str, Any] = {
        "process": process,
        "path": hook.get("path", ""),
        "symbol": hook.get("symbol", ""),
        "offset": int(hook.get("offset", 0)),
        "args": [typed_arg(a, specs[i].get("label", "") if i < len(specs) else "")
                 for i, a in enumerate(body.args)],
        "action": ACTION_NAMES.get(body.action, ""),
        "policy_name": policy_name,
        "message": hook.get("message", ""),
        "tags": list(hook.get("tags") or []),
    }
    if parent is not None:
        out["parent"] = parent
    return out


def build(builder: EventBuilder, rec: r.HookRecord, hook: dict[str, Any], policy_name: str,
          node: str, boot_ns: int) -> dict[str, Any]:
    """A full event (envelope with ``process_uprobe``) for a uprobe hook record."""
    body = r.decode_hook(rec)
    h = rec.header
    entry = builder.process_for(h.pid)
    parent = None
    if entry is not None:
        process = dict(entry.process)
        pe = builder.cache.get(entry.parent_exec_id)
        parent = dict(pe.process) if pe is not None else None
    else:
        process = {"pid": h.pid, "tid": h.tid, "flags": "miss"}
    process["tid"] = h.tid
    return builder.envelope(node, boot_ns + h.ktime,
                            process_uprobe=event_body(hook, policy_name, body, process, parent))
