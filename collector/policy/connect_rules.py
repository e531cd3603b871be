"""Override on tcp_connect for the policy manager: the Override selectors of every loaded
enforce-mode policy become the rules of the shared cgroup/connect4+6 programs
(collector/connect_deny.py), their refusal records drained into the queue and their refusal
counts reported as the policies' Override actions. A mixin of PolicyManager."""

from __future__ import annotations

import logging
from typing import Any

from collector import connect_deny, loader
from collector.drain import RecordQueue, RingBufferDrain
from collector.policy.metrics import SELECTOR_ACTIONS

log = logging.getLogger("tetrapipe.policy")


class ConnectRules:
    loaded: dict[str, Any]
    queue: RecordQueue
    order_after: Any
    connect_deny: connect_deny.ConnectDeny | None
    _connect_drain: RingBufferDrain | None
    _connect_owners: list[tuple[str, str]]
    _connect_seen: list[int]

    def _close_connect_deny(self) -> None:
        if self._connect_drain is not None:
            self._connect_drain.stop()   # the refusals' last records into the queue
            self.queue.wake()
            self._connect_drain = None
        if self.connect_deny is not None:
            self.connect_deny.close()
            self.connect_deny = None

    def _update_connect_rules(self) -> None:
        """Override selectors of tcp_connect hooks of every loaded enforce-mode policy → the
        cgroup/connect4+6 programs, attached to the cgroup v2 root when first needed."""
        rules = [r for lp in self.loaded.values() if lp.policy.mode != "monitor"
                 for r in lp.compiled.connect_rules]
        if self.connect_deny is None:
            if not rules:
                return
            root = connect_deny.cgroup2_root()
            if root is None:
                raise loader.LoadError("no cgroup v2 hierarchy mounted: connects cannot be refused")
            self.connect_deny = connect_deny.ConnectDeny()
            self._connect_drain = RingBufferDrain(self.connect_deny.bpf, self.queue,
                                                  connect_deny.EVENTS_MAP, connect_deny.DROPS_MAP,
                                                  order_after=self.order_after)
            self._connect_drain.start()
            self.connect_deny.attach(root)
            log.info("connect enforcement attached to %s (cgroup/connect4, connect6)", root)
        self._collect_connect_denied()  # set_rules restarts the kernel's counts
        self.connect_deny.set_rules(rules)
        self._connect_owners = [(lp.name, lp.policy.namespace) for lp in self.loaded.values()
                                if lp.policy.mode != "monitor" for _ in lp.compiled.connect_rules]
        self._connect_seen = [0] * len(rules)

    def _collect_connect_denied(self) -> None:
        """Connects the cgroup programs refused, counted as the policy's Override actions."""
        if self.connect_deny is None or not self._connect_owners:
            return
        counts = self.connect_deny.denied()
        for i, total in enumerate(counts[: len(self._connect_owners)]):
            delta = total - self._connect_seen[i]
            if delta > 0:
                name, namespace = self._connect_owners[i]
                SELECTOR_ACTIONS.labels(action="override", hook="tcp_connect", hook_index="", policy=name,
                                        policy_namespace=namespace, selector_index="").inc(delta)
                self._connect_seen[i] = total
