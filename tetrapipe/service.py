"""Runs one stage as a process: logging, uvloop, the metrics server, SIGTERM/SIGINT → a clean
stop (flush, commit), exit code 0."""

from __future__ import annotations

import asyncio
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
        await stage(cfg, stop)

    try:
        run_async(main())
    except KafkaAuthError as exc:  # a wrong credential: say so in one line and stop
        logging.getLogger(f"tetrapipe.{name}").error("%s", exc)
        return 2
    return 0


def run_async(coro: Awaitable[None]) -> None:
    """Run on uvloop where it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]
        return
    uvloop.run(coro)  # type: ignore[arg-type]
