"""Runs one stage as a process: logging, uvloop, the metrics server, SIGTERM/SIGINT → a clean
stop (flush, commit), exit code 0."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable

from tetrapipe import logs, metrics
from tetrapipe.config import Config
from tetrapipe.kafka import KafkaAuthError

Stage = Callable[[Config, asyncio.Event], Awaitable[None]]


def run_stage(cfg: Config, stage: Stage, name: str) -> int:
    logs.setup(cfg.log_level, name)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            metrics.serve(cfg.metrics_host_port)
        except OSError as exc:  # port taken, bad address: one line (tetrapipe/cli.py prints it)
            host, port = cfg.metrics_host_port or ("", 0)
            raise OSError(exc.errno, f"metrics address {host}:{port} (--metrics-address): {exc.strerror}") from None
        tune_gc()
        await stage(cfg, stop)

    try:
        run_async(main())
    except KafkaAuthError as exc:  # a wrong credential: say so in one line and stop
        logging.getLogger(f"tetrapipe.{name}").error("%s", exc)
        return 2
    return 0


GC_THRESHOLDS = (20000, 20, 20)  # Python's default (700, 10, 10)


def tune_gc() -> None:
    """Fewer cyclic collections in a stage's hot loop: each event makes a few dozen dicts and
    lists that reference counting frees; at Python's default, a young collection ran every ~25
    events (≈10 % of the enricher's CPU, `python -m bench.enricher_kafka`). What was loaded at
    start (modules, schemas, compiled writers) is frozen out of every later collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_async(coro: Awaitable[None]) -> None:
    """Run on uvloop where it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]
        return
    uvloop.run(coro)  # type: ignore[arg-type]
