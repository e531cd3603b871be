"""Built-in sensors beyond process lifecycle, switched on by configuration (and the loader sensor
also by a TracingPolicy with ``spec.loader: true``, see ``standalone_text``).

Each sensor is a C file in ``bpf/`` appended to ``process.c``'s text, so all of them share one
BPF object: one ring buffer (records stay in kernel order with exec/exit, which the enricher
needs to attach the process), one drop counter and the header helpers. If the sensors do not
compile or load, the collector logs why and runs with process events only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector.sensors import loader, network, udp
from tetrapipe.config import Config

BPF_DIR = Path(__file__).resolve().parent.parent.parent / "bpf"
TRACEFS = Path("/sys/kernel/tracing")
log = logging.getLogger("tetrapipe.collector")


@dataclass(frozen=True)
class Sensor:
    name: str
    source: str                              # file name in bpf/
    enabled: Callable[[Config], bool]
    mechanism: str                           # said in the collector log at start
    setup: Callable[[Any], None] | None = None  # after load: fill maps from Python
    tracepoints: tuple[str, ...] = ()        # "category/event" the C attaches to

    def missing(self, tracefs: Path = TRACEFS) -> list[str]:
        """Tracepoints this kernel does not have (e.g. sock:sock_send_length before 6.3)."""
        return [tp for tp in self.tracepoints if not (tracefs / "events" / tp).is_dir()]


SENSORS: tuple[Sensor, ...] = (
    Sensor("network", network.SOURCE, network.enabled, network.MECHANISM),
    Sensor("loader", loader.SOURCE, loader.enabled, loader.MECHANISM, loader.setup),
    Sensor("udp", udp.SOURCE, udp.enabled, udp.MECHANISM, udp.setup, tracepoints=("sock/sock_send_length",)),
)


def enabled(cfg: Config, tracefs: Path = TRACEFS) -> list[Sensor]:
    """The sensors the configuration asks for that this kernel can serve; the others are named
    in the log with the tracepoints they miss (the collector runs without them)."""
    out = []
    for s in SENSORS:
        if not s.enabled(cfg):
            continue
        missing = s.missing(tracefs)
        if missing:
            log.error("sensor %s not loaded: this kernel has no tracepoint %s", s.name,
                      ", ".join(t.replace("/", ":") for t in missing))
            continue
        out.append(s)
    return out


def program_text(base: str, sensors: list[Sensor]) -> str:
    """The process program's text with the sensors' C appended."""
    parts = [base]
    if sensors:
        parts.append("\n/* ---- sensors: bpf/sensor_common.c ---- */\n")
        parts.append((BPF_DIR / "sensor_common.c").read_text())
    for s in sensors:
        parts.append(f"\n/* ---- sensor {s.name}: bpf/{s.source} ---- */\n")
        parts.append((BPF_DIR / s.source).read_text())
    return "".join(parts)


def setup(bpf: Any, sensors: list[Sensor]) -> None:
    for s in sensors:
        if s.setup is not None:
            s.setup(bpf)


def by_name(name: str) -> Sensor:
    return next(s for s in SENSORS if s.name == name)


def standalone_text(sensor: Sensor) -> str:
    """A sensor as a program of its own (bpf/sensor_base.c: ring buffer, drops, helpers), for
    turning it on and off while the process program runs (policies with ``spec.loader``). Its
    records reach the enricher through their own ring buffer; the enricher orders each batch by
    kernel time, as it does for the policies' records."""
    return program_text((BPF_DIR / "sensor_base.c").read_text(), [sensor])
