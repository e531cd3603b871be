"""The policies one source owns, by the source's key (a custom resource, an OPA document entry),
applied to the PolicyManager as a set: a new key loads, a changed one replaces (the new version
is loaded before the old one goes; refused, the old one keeps acting), a missing one unloads.
Unchanged text is not touched, so a source may hand over its whole set on every poll.

Every method blocks (loading compiles a BPF program, about 1.5 s): call it off the event loop.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge

from collector.policy.manager import PolicyManager
from collector.policy.model import PolicyError

log = logging.getLogger("tetrapipe.policy")


@dataclass
class Entry:
    digest: str
    names: list[str] = field(default_factory=list)       # loaded policies of this key
    error: PolicyError | None = None                     # the last refusal (None: text loaded)
    info: list[dict[str, Any]] = field(default_factory=list)  # Loaded.info() of what acts
    changed: bool = True                                 # the last apply did something

    @property
    def state(self) -> str:
        if self.error is None:
            return "loaded"
        return "error" if not self.names else "error_previous_acting"


class PolicySet:
    def __init__(self, mgr: PolicyManager, what: str) -> None:
        self.mgr = mgr
        self.what = what
        self.entries: dict[str, Entry] = {}
        self._lock = threading.Lock()

    def apply(self, key: str, text: str, source: str) -> Entry:
        """Load or replace the policy of ``key``; its Entry says what acts and why not."""
        digest = hashlib.sha256(text.encode()).hexdigest()
        with self._lock:
            cur = self.entries.get(key)
            if cur is not None and cur.digest == digest:
                cur.changed = False
                return cur
            names = list(cur.names) if cur else []
            names = [n for n in names if n in self.mgr.loaded]  # deleted through the control socket
            try:
                if len(names) == 1:
                    loaded = self.mgr.replace_text(names[0], text, source)
                else:
                    loaded = self.mgr.load_text(text, source)
            except PolicyError as exc:
                log.error("%s: policy %s refused%s: %s", self.what, key,
                          "; its previous version keeps acting" if names else "", exc)
                entry = Entry(digest, names, exc, [i for i in (cur.info if cur else []) if i["name"] in names])
                self.entries[key] = entry
                return entry
            entry = Entry(digest, [lp.name for lp in loaded], None, [lp.info() for lp in loaded])
            self.entries[key] = entry
            log.info("%s: policy %s %s", self.what, key, "replaced" if names else "loaded")
            return entry

    def remove(self, key: str) -> None:
        with self._lock:
            entry = self.entries.pop(key, None)
            for name in entry.names if entry else []:
                try:
                    self.mgr.delete(name)
                    log.info("%s: policy %s deleted", self.what, key)
                except PolicyError:
                    pass  # deleted through the control socket already

    def sync(self, wanted: dict[str, tuple[str, str]]) -> dict[str, Entry]:
        """Make the set exactly ``wanted`` (key → (text, source)): removed keys first, then the
        rest in key order."""
        for key in sorted(set(self.entries) - set(wanted)):
            self.remove(key)
        return {key: self.apply(key, text, source) for key, (text, source) in sorted(wanted.items())}

    def clear(self) -> None:
        for key in list(self.entries):
            self.remove(key)


# ---- metrics of every source ----------------------------------------------------------------------
SOURCE_UP = Gauge("tetrapipe_policy_source_up",
                  "1 while the policy source answers and its last document was applied", ["source"])
SOURCE_ERRORS = Counter("tetrapipe_policy_source_errors",
                        "Failed reads of a policy source, by reason (the last good set keeps acting)",
                        ["source", "reason"])
SOURCE_POLICIES = Gauge("tetrapipe_policy_source_policies", "Policies of a source by state",
                        ["source", "state"])
SOURCE_LAST_SYNC = Gauge("tetrapipe_policy_source_last_sync_timestamp_seconds",
                         "When a policy source's set was last applied whole", ["source"])


def count_states(source: str, entries: dict[str, Entry]) -> None:
    counts = {"loaded": 0, "error": 0, "error_previous_acting": 0}
    for e in entries.values():
        counts[e.state] += 1
    for state, n in counts.items():
        SOURCE_POLICIES.labels(source=source, state=state).set(n)
