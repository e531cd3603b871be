"""The collector's base program (``bpf/process.c`` with the enabled sensors): include tree ready,
compiled, loaded and attached, started in a thread from the collector's first moment.

bcc's compile is most of the collector's start (about 1 s of LLVM on the build machine) and
holds no Python lock (ctypes releases the GIL), while the rest of the start is Python holding
it: the stage's imports, the event loop, the hook-mechanism probe (collector/kernel_features.py
walks the kernel's BTF), the broker connection. ``start(cfg)`` begins the compile before those;
``Collector`` takes the result with ``take(cfg)`` (or loads in its own thread when nothing was
started, e.g. a test building a Collector directly). "Ready" means what it meant: the service
reports ready only after this program is attached and the producer is connected.

Failures are raised where they were: ``CannotStart`` from ``Collector``'s construction.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collector import loader, sensors
from collector.kernel_headers import KernelHeadersError, KernelTree
from tetrapipe.config import Config

log = logging.getLogger("tetrapipe.collector")


class CannotStart(RuntimeError):
    """The collector cannot run on this kernel/host (no BTF, base program refused...): one line."""


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(exc).__name__


@dataclass
class Loaded:
    tree: KernelTree
    bpf: Any
    sensors_on: list[str] = field(default_factory=list)


def load(cfg: Config) -> Loaded:
    """Include tree (built or reused), then process.c with the enabled sensors (collector/sensors/),
    or process events only when the sensors do not load."""
    try:
        tree = loader.prepare(Path(cfg.cache_dir) / "kernel-headers")
    except (KernelHeadersError, OSError) as exc:
        raise CannotStart(f"no kernel include tree for bcc: {_one_line(exc)}") from exc
    log.info("kernel include tree %s (%s)", tree.path, "generated" if tree.generated else "cached")
    defines = {"TP_RINGBUF_PAGES": cfg.ringbuf_pages}
    try:
        enabled = sensors.enabled(cfg)
        if enabled:
            base = (loader.BPF_DIR / "process.c").read_text()
            try:
                bpf = loader.load_program("process.c", defines, text=sensors.program_text(base, enabled))
                sensors.setup(bpf, enabled)
                for s in enabled:
                    log.info("sensor %s on: %s", s.name, s.mechanism)
                return Loaded(tree, bpf, [s.name for s in enabled])
            except loader.LoadError as exc:
                log.error("sensors %s did not load, running with process events only: %s",
                          ",".join(s.name for s in enabled), exc)
        return Loaded(tree, loader.load_program("process.c", defines))
    except loader.LoadError as exc:  # the compiler's own lines went to stderr before this
        raise CannotStart(f"the process program does not load on this kernel: {_one_line(exc)}") from exc


class Pending:
    """``load(cfg)`` running in a thread; ``result()`` waits and returns it or raises its error."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._out: Loaded | None = None
        self._err: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bpf-compile", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._out = load(self.cfg)
        except BaseException as exc:  # noqa: BLE001 - raised again in the collector's thread
            self._err = exc

    def result(self) -> Loaded:
        self._thread.join()
        if self._err is not None:
            raise self._err
        assert self._out is not None
        return self._out


_started: Pending | None = None


def start(cfg: Config) -> Pending:
    """Begin loading for ``cfg`` now (the collector command calls this before its imports)."""
    global _started
    _started = Pending(cfg)
    return _started


def take(cfg: Config) -> Pending:
    """The load started for this very configuration, or one started now."""
    global _started
    pending, _started = _started, None
    if pending is not None and pending.cfg is cfg:
        return pending
    if pending is not None:   # started for another configuration: its result is not ours
        try:
            pending.result().bpf.cleanup()
        except BaseException:  # noqa: BLE001 - its failure is not this collector's
            pass
    return Pending(cfg)
