"""The ``tetrapipe`` command line: the face that starts the stages. Nothing imports it."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from tetrapipe import config as config_mod
from tetrapipe import logs
from tetrapipe.config import Config, ConfigError
from tetrapipe.service import run_async, run_stage

log = logging.getLogger("tetrapipe")


def _cfg(args: argparse.Namespace) -> Config:
    try:
        return config_mod.load(args)
    except ConfigError as exc:
        sys.exit(f"tetrapipe: {exc}")


def cmd_collector(args: argparse.Namespace) -> int:
    from collector import service

    cfg = _cfg(args)
    if os.geteuid() != 0:
        sys.exit("tetrapipe collector: needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN) to load BPF")
    try:
        return run_stage(cfg, service.run, "collector")
    except service.CannotStart as exc:  # one line, and a status that says "do not retry"
        print(f"tetrapipe collector: cannot start: {exc}", file=sys.stderr, flush=True)
        return service.EX_CONFIG


def cmd_enricher(args: argparse.Namespace) -> int:
    from enricher import service

    return run_stage(_cfg(args), service.run, "enricher")


def cmd_export(args: argparse.Namespace) -> int:
    from exporters import sinks

    cfg = _cfg(args)
    try:
        stage = sinks.stage_for(args.sink)
    except KeyError:
        sys.exit(f"tetrapipe export: unknown sink {args.sink!r} (json, fluentd, prometheus)")
    return run_stage(cfg, stage, f"export-{args.sink}")


def cmd_broker(args: argparse.Namespace) -> int:
    from tetrapipe.broker import EmbeddedBroker

    logs.setup("info", "broker")
    b = EmbeddedBroker(port=args.port).start()
    print(f"embedded broker on {b.bootstrap} (memory only); Ctrl-C stops it", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        b.stop()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from tetrapipe.supervisor import Supervisor

    cfg = _cfg(args)
    logs.setup(cfg.log_level, "run")
    if os.geteuid() != 0:
        sys.exit("tetrapipe run: needs root to load BPF programs")
    exporters = [e for e in args.exporters.split(",") if e]
    sup = Supervisor(cfg, exporters, log_dir=args.log_dir, user=args.user)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        sup.start()
        print(f"tetrapipe: broker {cfg.kafka}; collector, enricher, exporters {','.join(exporters)}"
              f" started (logs in {args.log_dir}); live events follow. Ctrl-C stops.", flush=True)
        tasks = [asyncio.create_task(sup.watch(stop))]
        if not args.quiet:
            tasks.append(asyncio.create_task(_live_view(cfg, stop)))
        await stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    try:
        sup.prepare()
    except ValueError as exc:
        sys.exit(f"tetrapipe run: {exc}")
    try:
        run_async(main())
    finally:
        sup.stop()
    return 0


async def _live_view(cfg: Config, stop: asyncio.Event) -> None:
    from exporters import compact, protojson
    from schemas import codec, registry
    from tetrapipe import kafka

    decode = registry.decoder_for(cfg)
    await kafka.ensure_topics(cfg, [cfg.events_topic])
    consumer = kafka.make_consumer(cfg, None, [cfg.events_topic], auto_offset_reset="latest")  # type: ignore[arg-type]
    await consumer.start()
    try:
        while not stop.is_set():
            got = await consumer.getmany(timeout_ms=200)
            for msgs in got.values():
                for m in msgs:
                    try:
                        line = compact.render(protojson.to_protojson(decode(m.value)))
                    except (codec.CodecError, registry.RegistryError):
                        continue
                    if line:
                        print(line, flush=True)
    finally:
        await consumer.stop()


def cmd_getevents(args: argparse.Namespace) -> int:
    from exporters import getevents

    cfg = _cfg(args)
    return getevents.main(cfg, args)


def cmd_tracingpolicy(args: argparse.Namespace) -> int:
    from tetrapipe import control_client

    cfg = _cfg(args)
    return control_client.main(cfg, args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tetrapipe", description="eBPF security observability over Kafka")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("run", help="everything on this host, with the embedded broker unless --kafka")
    config_mod.add_arguments(s)
    s.add_argument("--exporters", default="json", help="comma list of json, fluentd, prometheus")
    s.add_argument("--log-dir", default="/var/log/tetrapipe", help="where each service logs")
    s.add_argument("--quiet", action="store_true", help="no live compact view")
    s.add_argument("--user", default=None, metavar="NAME",
                   help="run the enricher and exporters as this user with no capabilities "
                        "(only the collector keeps root)")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("collector", help="load the kernel programs, produce raw batches")
    config_mod.add_arguments(s)
    s.set_defaults(func=cmd_collector)

    s = sub.add_parser("enricher", help="raw batches → enriched Avro events")
    config_mod.add_arguments(s)
    s.set_defaults(func=cmd_enricher)

    s = sub.add_parser("export", help="forward events to one sink")
    s.add_argument("sink", help="json, fluentd or prometheus")
    config_mod.add_arguments(s)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("getevents", help="read events from Kafka, a JSON file or stdin")
    config_mod.add_arguments(s)
    from exporters.getevents import add_arguments as getevents_args

    getevents_args(s)
    s.set_defaults(func=cmd_getevents)

    s = sub.add_parser("tracingpolicy", help="manage the policies of a running collector")
    config_mod.add_arguments(s, ["control_socket", "log_level"])
    s.add_argument("action", choices=["add", "delete", "list", "enable", "disable"])
    s.add_argument("target", nargs="?", help="policy file (add) or name (delete)")
    s.add_argument("--mode", choices=["enforce", "monitor"], help="policy mode at load")
    s.set_defaults(func=cmd_tracingpolicy)

    s = sub.add_parser("broker", help="start the embedded broker alone")
    s.add_argument("--port", type=int, default=9092)
    s.set_defaults(func=cmd_broker)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)

