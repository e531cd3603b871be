"""What the kernel's selectors could not judge, counted per policy (issue #12; README
"Not caught, and why"). Each compiled program has a per-CPU array ``gaps`` (bpf/policy.h TP_GAP_*);
the collector reads it with the selector counts and turns each index into metrics:

- TP_GAP_NO_STATE: a matchNamespaceChanges/matchCapabilityChanges selector judged a process with
  no saved state (judged "no change"): state_lost{reason=no_state} and the uncaught road
  ``no saved namespace/capability state``;
- TP_GAP_STATE_FULL / TP_GAP_MARK_FULL: exec_state / pf_marks refused an entry at exec or fork:
  state_lost{reason=map_full}; a lost followForks mark is also the uncaught road
  ``followForks mark lost`` (the child is then followed only through the 64 ancestors the kernel walks);
- TP_GAP_TRUNC / TP_GAP_TRUNC_INODE / TP_GAP_TRUNC_MISS: a truncated path judged by a name filter
  (Equal/Prefix/In and their Not forms), never compared by name as whole:
  truncated_paths{matched=inode} (its inode matched), {matched=no} (its inode proves it another
  file: not the file, not below the directory), {matched=unknown} (no inode set to ask, or the
  Prefix directory not among the 64 ancestors walked): unknown is also the uncaught road
  ``path truncated at the judge``.
"""

from __future__ import annotations

import ctypes
import logging
import time
from typing import Any

from collector.policy.evasion import UNHOOKED_WRITES
from collector.policy.metrics import STATE_LOST, TRUNCATED_PATHS, UNJUDGED_ROADS
from collector.policy.uncaught import UNCAUGHT

log = logging.getLogger("tetrapipe.policy")

NO_STATE, STATE_FULL, MARK_FULL, TRUNC, TRUNC_MISS, TRUNC_INODE = range(6)   # bpf/policy.h TP_GAP_*
ROAD_NO_STATE = "no saved namespace/capability state"
ROAD_MARK_LOST = "followForks mark lost"
ROAD_TRUNC = "path truncated at the judge"
LOG_EVERY_S = 60.0   # a WARNING per policy and road at most this often (the counter moves at once)
_logged: dict[tuple[str, str], float] = {}


# load notices that name a road the policy cannot judge → the road's label (unjudged_roads gauge)
UNJUDGED = (("WARNING: ", "raw user path"),   # collector/policy/evasion.py
            ("are not judged: the hook needs the return value", "io_uring (return value)"),
            ("no io_uring:io_uring_file_get tracepoint", "io_uring (no tracepoint)"),
            ("are not judged (their arguments live in the request", "io_uring (arguments in the request)"),
            (UNHOOKED_WRITES, "write calls not hooked"))   # collector/policy/evasion.py


def unjudged(notices: list[str]) -> set[str]:
    """The roads the load notices say the policy cannot judge."""
    return {road for n in notices for needle, road in UNJUDGED if needle in n}


def set_unjudged(policy: str, roads: set[str]) -> None:
    for road in roads:
        UNJUDGED_ROADS.labels(policy=policy, road=road).set(1)


def clear_unjudged(policy: str, roads: set[str]) -> None:
    for road in roads:
        try:
            UNJUDGED_ROADS.remove(policy, road)
        except KeyError:
            pass


def read(bpf: Any) -> list[int]:
    """The totals of the program's gap counters (all CPUs)."""
    table = bpf["gaps"]
    return [int(sum(table[ctypes.c_int(i)])) for i in range(TRUNC_INODE + 1)]


def collect(policy: str, bpf: Any, seen: list[int]) -> None:
    """Count what moved since ``seen`` (updated in place)."""
    try:
        totals = read(bpf)
    except Exception:  # noqa: BLE001 - a program without the map (never: compiled in every policy)
        return
    d = [max(t - s, 0) for t, s in zip(totals, seen, strict=True)]
    seen[:] = totals
    if d[NO_STATE]:
        STATE_LOST.labels(policy=policy, state="exec_state", reason="no_state").inc(d[NO_STATE])
        _uncaught(policy, ROAD_NO_STATE, d[NO_STATE])
    if d[STATE_FULL]:
        STATE_LOST.labels(policy=policy, state="exec_state", reason="map_full").inc(d[STATE_FULL])
    if d[MARK_FULL]:
        STATE_LOST.labels(policy=policy, state="follow_forks", reason="map_full").inc(d[MARK_FULL])
        _uncaught(policy, ROAD_MARK_LOST, d[MARK_FULL])
    if d[TRUNC_INODE]:
        TRUNCATED_PATHS.labels(policy=policy, matched="inode").inc(d[TRUNC_INODE])
    if d[TRUNC] > d[TRUNC_INODE] + d[TRUNC_MISS]:   # its inode proves it another file
        TRUNCATED_PATHS.labels(policy=policy, matched="no").inc(d[TRUNC] - d[TRUNC_INODE] - d[TRUNC_MISS])
    if d[TRUNC_MISS]:
        TRUNCATED_PATHS.labels(policy=policy, matched="unknown").inc(d[TRUNC_MISS])
        _uncaught(policy, ROAD_TRUNC, d[TRUNC_MISS])


def _uncaught(policy: str, road: str, n: int) -> None:
    UNCAUGHT.labels(road=road, policy=policy).inc(n)
    now = time.monotonic()
    if now - _logged.get((policy, road), -LOG_EVERY_S) < LOG_EVERY_S:
        return
    _logged[(policy, road)] = now
    log.warning("enforcement: %s could not judge %d time(s): %s; counted in tetrapipe_enforcement_uncaught_total",
                policy, n, road)
