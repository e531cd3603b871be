"""A loaded policy as the policy manager keeps it: the parsed policy, its compiled program and
bcc object, its drain, and what `tracingpolicy list` and the enricher's catalog (REC_POLICY) say
of it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from collector.drain import RingBufferDrain
from collector.policy import compiler, gaps
from collector.policy.model import Policy


@dataclass
class Loaded:
    policy: Policy
    compiled: compiler.Compiled
    policy_id: int
    bpf: Any                          # None for a policy that only asks for loader events
    drain: RingBufferDrain | None
    loaded_at: float = field(default_factory=time.time)
    enabled: bool = True
    counts_seen: dict[int, int] = field(default_factory=dict)
    gaps_seen: list[int] = field(default_factory=lambda: [0] * (gaps.TRUNC_INODE + 1))
    lost_seen: int = 0
    link_fds: list[int] = field(default_factory=list)   # fmod_ret attachments (closed at unload)

    @property
    def name(self) -> str:
        return self.policy.name

    def info(self) -> dict[str, Any]:
        p = self.policy
        return {
            "name": p.name, "namespace": p.namespace, "kind": p.kind, "mode": p.mode,
            "state": "enabled" if self.enabled else "disabled",
            "id": self.policy_id, "source": p.source,
            "hooks": [{"function_name": h.function_name, "serve": h.serve, "mechanism": h.mechanism}
                      for h in self.compiled.hooks],
            "loader": p.loader,
            "notices": p.notices + self.compiled.notices,
        }

    def catalog(self, state: str = "loaded") -> dict[str, Any]:
        p = self.policy
        hooks = []
        for ch in self.compiled.hooks:
            h = ch.hook
            hooks.append({
                "id": ch.hook_id, "kind": h.kind, "function_name": ch.function_name,
                "subsys": h.subsystem, "event": h.event, "return": h.return_,
                "args": [{"index": a.index, "type": a.type, "label": a.label,
                          "return_copy": a.return_copy} for a in h.args + h.data],
                "return_arg": ({"type": h.return_arg.type, "label": h.return_arg.label}
                               if h.return_arg else None),
                "message": h.message, "tags": h.tags,
                "selectors": [[a.action for a in s.match_actions] or ["Post"] for s in h.selectors],
            })
            if ch.uprobe is not None:
                hooks[-1].update(path=ch.uprobe.path, symbol=ch.uprobe.symbol, offset=ch.uprobe.offset)
        return {"policy_id": self.policy_id, "name": p.name, "namespace": p.namespace, "mode": p.mode,
                "state": state, "hooks": hooks}
