"""The policy engine's own metrics (load states, refusals, kernel selector actions)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

LOADED = Gauge("tetrapipe_tracingpolicy_loaded", "Tracing policies by state", ["state"])
SELECTOR_ACTIONS = Counter(
    "tetrapipe_tracingpolicy_selector_actions",
    "Selector matches in the kernel, by the action taken (monitor_* in monitor mode)",
    ["action", "hook", "hook_index", "policy", "policy_namespace", "selector_index"],
)
LOAD_ERRORS = Counter("tetrapipe_tracingpolicy_load_errors", "Policies refused at load", ["reason"])
SIGNAL_FALLBACKS = Counter(
    "tetrapipe_tracingpolicy_signal_fallbacks",
    "Sigkill/Signal actions bpf_send_signal could not send in the kernel (-EBUSY, -EPERM), sent by the "
    "collector instead (late: the operation may have taken effect)",
    ["policy", "signal"],
)
