"""Which sink a ``tetrapipe export NAME`` runs: a stage function per sink name."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from exporters.worker import run_sink
from tetrapipe.config import Config

Stage = Callable[[Config, asyncio.Event], Awaitable[None]]


async def _json(cfg: Config, stop: asyncio.Event) -> None:
    from pathlib import Path

    from exporters.json_file import JsonFileSink
    from tetrapipe.dirs import ensure_dir

    try:
        sink = JsonFileSink.from_config(cfg)
    except ValueError as exc:  # a bad export option: refuse to start, say which and why
        raise SystemExit(f"tetrapipe export json: {exc}") from None
    # the export file's folder, made when missing; one line (DirError) when it cannot be written
    ensure_dir(Path(cfg.export_filename).parent, 0o755, "the JSON export file, --export-filename")
    await run_sink(cfg, sink, stop)


async def _fluentd(cfg: Config, stop: asyncio.Event) -> None:
    from exporters.fluentd import FluentdSink

    await run_sink(cfg, FluentdSink(cfg), stop)


async def _prometheus(cfg: Config, stop: asyncio.Event) -> None:
    from exporters.prometheus import PrometheusSink

    await run_sink(cfg, PrometheusSink(cfg), stop)


async def _grpc(cfg: Config, stop: asyncio.Event) -> None:
    from exporters.grpc_server import serve

    await serve(cfg, stop)


STAGES: dict[str, Stage] = {"json": _json, "fluentd": _fluentd, "prometheus": _prometheus, "grpc": _grpc}


def stage_for(name: str) -> Stage:
    return STAGES[name]
