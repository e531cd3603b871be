"""Selector match counts of a loaded policy (its `sel_counts` map, per CPU) → the selector-action
metric, and GetUrl/DnsLookup submitted for the new matches; each call counts what is new since the
last (``Loaded.counts_seen``)."""

from __future__ import annotations

import ctypes

from collector.policy import compiler
from collector.policy.loaded import Loaded
from collector.policy.metrics import SELECTOR_ACTIONS
from collector.policy.tetragon_actions import UserActions


def collect(lp: Loaded, user_actions: UserActions) -> None:
    if lp.bpf is None:
        return
    try:
        table = lp.bpf["sel_counts"]
    except Exception:  # noqa: BLE001
        return
    monitor = lp.policy.mode == "monitor"
    for ch in lp.compiled.hooks:
        for s in range(compiler.SEL_SLOTS):
            idx = ch.hook_id * compiler.SEL_SLOTS + s
            total = int(sum(table[ctypes.c_int(idx)]))
            delta = total - lp.counts_seen.get(idx, 0)
            if delta <= 0:
                continue
            lp.counts_seen[idx] = total
            if s < len(ch.hook.selectors):
                for a in ch.hook.selectors[s].match_actions:
                    if a.arg_url or a.arg_fqdn:
                        user_actions.submit(a.action, a.arg_url or a.arg_fqdn, lp.name, delta)
                names = ch.hook.selectors[s].action_names() or ["Post"]
                action = min(names, key=lambda n: compiler.ACTION_RANK.index(n)).lower()
            else:
                action = "post"
            if monitor and action in ("sigkill", "signal", "override", "notifyenforcer"):
                action = f"monitor_{action}"
            SELECTOR_ACTIONS.labels(action=action, hook=ch.function_name, hook_index=str(ch.hook_id),
                                    policy=lp.name, policy_namespace=lp.policy.namespace,
                                    selector_index=str(s if s < len(ch.hook.selectors) else -1)).inc(delta)
