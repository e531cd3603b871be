"""The ``tetrapipe`` command line: the face that starts the stages. Nothing imports it.

Each command offers only the configuration keys it reads (``config.keys_for``), grouped by
section with their defaults; every key is also ``TETRAPIPE_<KEY>`` and a ``--config`` YAML key.
An expected failure (a directory that cannot be written, a port in use, a broker that cannot be
reached, not root, BPF refused, a full disk) ends a command with one line and exit status 1,
never a traceback (``--log-level debug`` shows the traceback too).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import sys
import time

from tetrapipe import config as config_mod
from tetrapipe import logs
from tetrapipe.config import Config, ConfigError

log = logging.getLogger("tetrapipe")

SINKS = {"json": "JSON export file (Tetragon's export format)",
         "fluentd": "fluentd forward protocol, acknowledged",
         "prometheus": "Tetragon-style event metrics on /metrics",
         "grpc": "Tetragon's gRPC API (FineGuidanceSensors) on --server-address"}
POLICY_ACTIONS = {"add": "load a TracingPolicy file", "delete": "unload a policy by name",
                  "enable": "re-enable a disabled policy", "disable": "stop a policy acting (stays loaded)",
                  "list": "the loaded policies"}
# what an expected failure is (by class name, so that this module imports no stage at start):
# its message is the whole story, the traceback would only hide it
EXPECTED = {"OSError", "ConfigError", "BrokerError", "KafkaError", "LoadError", "KernelHeadersError",
            "ControlError", "RegistryError", "FilterError", "TimeoutError"}


def _cfg(args: argparse.Namespace) -> Config:
    try:
        return config_mod.load(args)
    except ConfigError as exc:
        sys.exit(f"tetrapipe: {exc}")


def cmd_collector(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    if os.geteuid() != 0:
        sys.exit("tetrapipe collector: needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN) to load BPF")
    logs.setup(cfg.log_level, "collector")  # the compile below logs from its thread
    from collector import process_program

    process_program.start(cfg)  # bcc compiles while the stage imports and probes (its errors: below)
    from collector import service
    from tetrapipe.service import run_stage

    try:
        return run_stage(cfg, service.run, "collector")
    except service.CannotStart as exc:  # one line, and a status that says "do not retry"
        print(f"tetrapipe collector: cannot start: {exc}", file=sys.stderr, flush=True)
        return service.EX_CONFIG


def cmd_enricher(args: argparse.Namespace) -> int:
    from enricher import service
    from tetrapipe.service import run_stage

    return run_stage(_cfg(args), service.run, "enricher")


def cmd_export(args: argparse.Namespace) -> int:
    from exporters import sinks
    from tetrapipe.service import run_stage

    cfg = _cfg(args)
    return run_stage(cfg, sinks.stage_for(args.sink), f"export-{args.sink}")


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
    from tetrapipe import startup_report
    from tetrapipe.supervisor import Supervisor

    cfg = _cfg(args)
    logs.setup(cfg.log_level, "run")
    if cfg.log_level != "debug":  # the first lines say it (tetrapipe/startup_report.py)
        for name in ("tetrapipe.broker", "tetrapipe.kafka"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if os.geteuid() != 0:
        sys.exit("tetrapipe run: needs root to load BPF programs (the collector); "
                 "without root, run the enricher and exporters alone")
    exporters = [e for e in args.exporters.split(",") if e]
    unknown = [e for e in exporters if e not in SINKS]
    if unknown:
        sys.exit(f"tetrapipe run: --exporters: unknown {', '.join(unknown)} (json, fluentd, prometheus, grpc)")
    sup = Supervisor(cfg, exporters, log_dir=args.log_dir, user=args.user)
    started = time.monotonic()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(sig: int) -> None:
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        sup.start()
        features = await asyncio.to_thread(startup_report.kernel_features)
        for line in startup_report.lines(sup, features):
            print(line, flush=True)
        joined = asyncio.Event()
        tasks = [asyncio.create_task(sup.watch(stop))]
        if not args.quiet:
            tasks.append(asyncio.create_task(_live_view(cfg, stop, joined)))
        else:
            joined.set()
        tasks.append(asyncio.create_task(_say_ready(sup, joined, started, stop)))
        await stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    try:
        sup.prepare()
    except ValueError as exc:
        sys.exit(f"tetrapipe run: {exc}")
    from tetrapipe.service import run_async

    try:
        run_async(main())
    finally:
        sup.stop()
    print("tetrapipe run: stopped", flush=True)
    return 0


async def _say_ready(sup: object, joined: asyncio.Event, started: float, stop: asyncio.Event) -> None:
    from tetrapipe import startup_report

    ok = await startup_report.wait_healthy(sup, stop, timeout=180.0)
    await joined.wait()
    if ok:
        print(f"tetrapipe run: ready after {time.monotonic() - started:.1f} s: every service answers "
              "/healthz; live events follow", flush=True)
    else:
        print("tetrapipe run: not every service answered /healthz within 180 s; see their logs",
              flush=True)


async def _live_view(cfg: Config, stop: asyncio.Event, joined: asyncio.Event) -> None:
    """The compact view; a failure (Kafka unreachable) is one line, the services keep running."""
    try:
        await _view(cfg, stop, joined)
    except Exception as exc:  # noqa: BLE001 - expected failures become one line
        line = expected_failure(exc)
        if line is None:
            raise
        print(f"tetrapipe run: no live view: {line}", file=sys.stderr, flush=True)
    finally:
        joined.set()


async def _view(cfg: Config, stop: asyncio.Event, joined: asyncio.Event) -> None:
    from exporters import compact, protojson
    from schemas import codec, registry
    from tetrapipe import kafka

    decode = registry.decoder_for(cfg)
    await kafka.ensure_topics(cfg, [cfg.events_topic])
    consumer = kafka.make_consumer(cfg, None, [cfg.events_topic], auto_offset_reset="latest")  # type: ignore[arg-type]
    try:
        await consumer.start()
        while not consumer.assignment() and not stop.is_set():
            await consumer.getmany(timeout_ms=100)
        for tp in consumer.assignment():
            await consumer.position(tp)  # the view starts here: what happens from now on
        joined.set()
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
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # an unreachable broker: one line of ours
    return getevents.main(cfg, args)


def cmd_status(args: argparse.Namespace) -> int:
    from exporters import grpc_client

    return grpc_client.status(_cfg(args), args.timeout)


def cmd_tracingpolicy(args: argparse.Namespace) -> int:
    from tetrapipe import control_client

    cfg = _cfg(args)
    return control_client.main(cfg, args)


class _Help(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default where its help does not say it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default in (None, argparse.SUPPRESS, False, []) or not action.option_strings:
            return text
        return f"{text} (default: {action.default!r})".lstrip()


def _parser(sub: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:  # noqa: A002
    return sub.add_parser(name, help=help, description=help, formatter_class=_Help)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tetrapipe", description="eBPF security observability over Kafka",
        epilog="Every option of a service is also TETRAPIPE_<KEY> in the environment and <key>: in the "
               "--config YAML file. `tetrapipe <command> --help` lists that command's options.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = _parser(sub, "run", "everything on this host: embedded broker (unless --kafka), collector, enricher, "
                            "exporters, live compact view")
    g = s.add_argument_group("run options")
    g.add_argument("--exporters", default="json,prometheus,grpc",
                   help="comma list of json, fluentd, prometheus, grpc (Tetragon's gRPC API on "
                        "--server-address) (default: 'json,prometheus,grpc')")
    g.add_argument("--log-dir", default="/var/log/tetrapipe",
                   help="where each service logs, made when missing (default: '/var/log/tetrapipe')")
    g.add_argument("--quiet", action="store_true", help="no live compact view (default: off)")
    g.add_argument("--user", default=None, metavar="NAME",
                   help="run the enricher and exporters as this user with no capabilities "
                        "(only the collector keeps root) (default: the user running tetrapipe)")
    config_mod.add_arguments(s, "run")
    s.set_defaults(func=cmd_run)

    s = _parser(sub, "collector", "load the kernel programs, produce raw batches")
    config_mod.add_arguments(s, "collector")
    s.set_defaults(func=cmd_collector)

    s = _parser(sub, "enricher", "raw batches → enriched Avro events")
    config_mod.add_arguments(s, "enricher")
    s.set_defaults(func=cmd_enricher)

    s = _parser(sub, "export", "forward events to one sink")
    sinks = s.add_subparsers(dest="sink", required=True, metavar="SINK")
    for name, what in SINKS.items():
        e = _parser(sinks, name, what)
        config_mod.add_arguments(e, f"export-{name}")
        e.set_defaults(func=cmd_export, sink=name)

    s = _parser(sub, "getevents", "read events from Kafka, a JSON file or stdin")
    from exporters.getevents import add_arguments as getevents_args

    getevents_args(s.add_argument_group("getevents options"))  # type: ignore[arg-type]
    config_mod.add_arguments(s, "getevents")
    s.set_defaults(func=cmd_getevents)

    s = _parser(sub, "tracingpolicy", "manage the policies of a running collector")
    actions = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, what in POLICY_ACTIONS.items():
        a = _parser(actions, action, what)
        if action == "add":
            a.add_argument("target", metavar="FILE", help="TracingPolicy YAML file")
            a.add_argument("--mode", choices=["enforce", "monitor"],
                           help="policy mode at load (default: the policy's own, else enforce)")
        elif action != "list":
            a.add_argument("target", metavar="NAME", help="policy name (metadata.name)")
        config_mod.add_arguments(a, "tracingpolicy")
        a.set_defaults(func=cmd_tracingpolicy, mode=None, target=None)

    s = _parser(sub, "status", "health of the gRPC API server (as tetra status)")
    s.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server (default: 10.0)")
    config_mod.add_arguments(s, "status")
    s.set_defaults(func=cmd_status)

    s = _parser(sub, "broker", "start the embedded broker alone")
    s.add_argument("--port", type=int, default=9092, help="listen on 127.0.0.1:PORT (default: 9092)")
    s.set_defaults(func=cmd_broker)
    return p


def expected_failure(exc: BaseException) -> str | None:
    """The one line that says what went wrong, for a failure a user can meet and fix; None for a
    bug (which keeps its traceback)."""
    names = {k.__name__ for k in type(exc).__mro__}
    if not names & EXPECTED:
        return None
    if isinstance(exc, OSError) and exc.strerror and type(exc).__str__ is OSError.__str__:
        where = f" {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{':' if where else ''}{where}"
    text = str(exc) or type(exc).__name__
    if "KafkaConnectionError" in names:
        servers = ", ".join(f"{h}:{p}" for h, p in re.findall(r"\('([^']+)', (\d+)", text)) or "the broker"
        tail = text.rpartition("]")[2].lstrip(": ") if "]" in text else ""
        why = re.sub(r"^\w+Error: (\[Errno \d+\] )?", "", tail) or "no answer"
        text = f"cannot reach Kafka at {servers} ({why}): is the broker up? (--kafka HOST:PORT)"
    elif "KafkaError" in names and "KafkaAuthError" not in names:
        text = f"Kafka: {text}"
    return text.splitlines()[0] if text.strip() else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - expected failures become one line, bugs keep their traceback
        line = expected_failure(exc)
        if line is None or os.environ.get("TETRAPIPE_LOG_LEVEL", "").lower() == "debug" \
                or getattr(args, "log_level", None) == "debug":
            raise
        print(f"tetrapipe {args.command}{' ' + args.sink if getattr(args, 'sink', None) else ''}: {line}",
              file=sys.stderr, flush=True)
        return 1
