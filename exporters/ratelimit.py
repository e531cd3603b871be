"""Export rate limit, as Tetragon's ``--export-rate-limit``: at most N events per minute reach the
JSON file (a token bucket of N tokens refilled over a minute; -1 = no limit, 0 = export nothing).
Dropped events are counted in ``tetrapipe_export_ratelimit_events_dropped_total`` and reported in
the file itself by a ``rate_limit_info`` event carrying the drop count since the last report."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter

DROPPED = Counter("tetrapipe_export_ratelimit_events_dropped",
                  "Events the export rate limit kept out of the JSON file")


class RateLimiter:
    def __init__(self, per_minute: int, report_interval_s: float = 60.0,
                 clock: Any = time.monotonic) -> None:
        self.per_minute = per_minute
        self.report_interval_s = report_interval_s
        self.clock = clock
        self.tokens = float(max(per_minute, 0))
        self.last = clock()
        self.last_report = self.last
        self.dropped = 0  # since the last report

    @property
    def enabled(self) -> bool:
        return self.per_minute >= 0

    def allow(self) -> bool:
        if self.per_minute < 0:
            return True
        now = self.clock()
        if self.per_minute > 0:
            self.tokens = min(float(self.per_minute), self.tokens + (now - self.last) * self.per_minute / 60.0)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.dropped += 1
        DROPPED.inc()
        return False

    def due_report(self, force: bool = False) -> int:
        """The drop count to report now (0 = nothing to report), resetting it."""
        if not self.dropped:
            return 0
        now = self.clock()
        if not force and now - self.last_report < self.report_interval_s:
            return 0
        self.last_report = now
        n, self.dropped = self.dropped, 0
        return n


def rate_limit_info(dropped: int, node_name: str, cluster_name: str = "") -> dict[str, Any]:
    """A ``rate_limit_info`` event (Avro dict form) reporting ``dropped`` events."""
    return {"rate_limit_info": {"number_of_dropped_process_events": dropped}, "node_name": node_name,
            "time": time.time_ns(), "cluster_name": cluster_name}
