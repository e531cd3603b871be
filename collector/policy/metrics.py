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
STATE_SEED_FAILURES = Counter(
    "tetrapipe_tracingpolicy_state_seed_failures",
    "Processes older than a policy whose state (namespace/capability exec state, followForks mark) "
    "could not be seeded from /proc at load, by reason (exited, unreadable, map_full, changed)",
    ["policy", "state", "reason"],
)
STATE_LOST = Counter(
    "tetrapipe_tracingpolicy_state_lost",
    "Per-process state the kernel could not keep or find: a full map at exec/fork (map_full), a "
    "matchNamespaceChanges/matchCapabilityChanges selector judging a process without state (no_state)",
    ["policy", "state", "reason"],
)
TRUNCATED_PATHS = Counter(
    "tetrapipe_tracingpolicy_truncated_paths",
    "Truncated values (a path deeper than 32 components or longer than 4096 bytes) a name filter "
    "judged: never compared by name as if whole; matched=inode (its inode matched), no (its inode "
    "proves it another file), unknown (nothing could tell: also an uncaught road)",
    ["policy", "matched"],
)
UNJUDGED_ROADS = Gauge(
    "tetrapipe_tracingpolicy_unjudged_roads",
    "Roads around a loaded policy it says at load it cannot judge (1 per policy and road): raw user "
    "path comparisons, io_uring requests of hooks that need the return value or whose arguments live "
    "in the request; how often they are taken is not known",
    ["policy", "road"],
)
