"""A consumer that fetches less often while its topics are idle.

A consumer keeps one fetch in flight per broker; an empty one is answered after
``fetch_max_wait_ms`` and sent again at once, so an idle consumer asks the broker
1000 / ``fetch_max_wait_ms`` times a second. The stages use 25 ms (a short hop while events
flow, tetrapipe/kafka.py): ~40 fetches/s from every idle consumer, CPU in it and in the broker
on a machine with nothing to report (and about a third of a TCG guest's CPU, NOTE.md).

``IdleFetchConsumer`` uses ``fetch_max_wait_ms`` while records come and ``idle_fetch_wait_ms``
once ``getmany`` has returned none for ``idle_after_s``; the first batch back restores the short
wait. Cost: the first event after an idle stretch may wait up to ``idle_fetch_wait_ms`` more on
a broker that holds a fetch its whole wait (the embedded broker does; Apache Kafka answers as
soon as data arrives). Events that follow it, and a steady stream (the latency target at 5k/s),
see the short wait.
"""

from __future__ import annotations

import time
from typing import Any

from aiokafka import AIOKafkaConsumer

IDLE_AFTER_S = 2.0          # no records for this long: the consumer counts as idle
IDLE_FETCH_WAIT_MS = 250    # its fetch wait then (4 fetches/s instead of 40)


class IdleFetchConsumer(AIOKafkaConsumer):  # type: ignore[misc]
    def __init__(self, *topics: str, idle_after_s: float = IDLE_AFTER_S,
                 idle_fetch_wait_ms: int = IDLE_FETCH_WAIT_MS, **settings: Any) -> None:
        super().__init__(*topics, **settings)
        self.busy_wait_ms = int(settings.get("fetch_max_wait_ms", 500))
        self.idle_wait_ms = max(int(idle_fetch_wait_ms), self.busy_wait_ms)
        self.idle_after_s = idle_after_s
        self._last_records = time.monotonic()

    @property
    def idle(self) -> bool:
        return self.fetch_wait_ms == self.idle_wait_ms != self.busy_wait_ms

    @property
    def fetch_wait_ms(self) -> int:
        """The wait the next fetch request asks the broker for."""
        fetcher = getattr(self, "_fetcher", None)
        return int(getattr(fetcher, "_fetch_max_wait_ms", self.busy_wait_ms))

    def _set_wait(self, ms: int) -> None:
        fetcher = getattr(self, "_fetcher", None)   # aiokafka's Fetcher reads it per request
        if fetcher is not None and getattr(fetcher, "_fetch_max_wait_ms", ms) != ms:
            fetcher._fetch_max_wait_ms = ms

    async def getmany(self, *partitions: Any, timeout_ms: int = 0,
                      max_records: int | None = None) -> dict[Any, list[Any]]:
        got = await super().getmany(*partitions, timeout_ms=timeout_ms, max_records=max_records)
        now = time.monotonic()
        if any(got.values()):
            self._last_records = now
            self._set_wait(self.busy_wait_ms)
        elif now - self._last_records >= self.idle_after_s:
            self._set_wait(self.idle_wait_ms)
        return got
