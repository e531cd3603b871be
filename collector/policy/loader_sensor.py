"""spec.loader for the policy manager: the loader sensor runs as a program of its own while an
enabled loaded policy asks for it, unless the collector runs it already (--enable-loader-events:
``loader_builtin``); its drops are kept until the manager reports them. A mixin of PolicyManager."""

from __future__ import annotations

import logging
import time
from typing import Any

from collector import loader, sensors
from collector.drain import RecordQueue, RingBufferDrain
from collector.policy.model import Policy

log = logging.getLogger("tetrapipe.policy")


class LoaderSensor:
    loaded: dict[str, Any]
    queue: RecordQueue
    order_after: RingBufferDrain | None
    loader_builtin: bool
    loader_sensor: tuple[Any, RingBufferDrain] | None
    loader_ringbuf_pages: int
    _loader_lost: int

    def _loader_wanted_by(self, p: Policy) -> None:
        """Turn the loader sensor on for ``p`` (loaded or being loaded); LoadError if it cannot be."""
        if self.loader_builtin:
            notice = ("spec.loader: loader events are on for the whole collector already "
                      "(--enable-loader-events); they stay on when this policy is deleted")
            if notice not in p.notices:
                p.notices.append(notice)
            return
        if self.loader_sensor is not None:
            return
        sensor = sensors.by_name("loader")
        t0 = time.monotonic()
        bpf = loader.load_program("loader sensor (spec.loader)", {"TP_RINGBUF_PAGES": self.loader_ringbuf_pages},
                                  text=sensors.standalone_text(sensor))
        try:
            sensors.setup(bpf, [sensor])
            # its records wait for the process program's exec records of the same time: the
            # enricher attaches the process from them (one ring buffer would keep that order)
            drain = RingBufferDrain(bpf, self.queue, order_after=self.order_after)
        except Exception:
            bpf.cleanup()
            raise
        drain.start()
        self.loader_sensor = (bpf, drain)
        log.info("loader sensor on for policy %s in %.2fs: %s", p.name, time.monotonic() - t0, sensor.mechanism)

    def _sync_loader(self) -> None:
        """Turn the loader sensor off when no enabled loaded policy asks for it any more."""
        if self.loader_sensor is None:
            return
        if any(lp.policy.loader and lp.enabled for lp in self.loaded.values()):
            return
        bpf, drain = self.loader_sensor
        self.loader_sensor = None
        self._loader_lost += drain.kernel_lost_delta()
        drain.stop()
        bpf.cleanup()
        log.info("loader sensor off: no loaded policy asks for loader events")
