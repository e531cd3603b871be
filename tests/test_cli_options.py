"""The command line as a user meets it: each command's options are the keys its code reads (and
only those), `--help` groups them with defaults, every command line of the README parses as
written, and expected failures end in one line, not a traceback. No broker, no BPF: fast."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from config_reads import keys_read

from tetrapipe import cli, config

REPO = Path(__file__).resolve().parent.parent
FIELDS = set(config.FIELDS)

# command → the modules it runs (their imports inside the repo are followed)
ENTRIES = {
    "collector": ["collector.service", "tetrapipe.service"],
    "enricher": ["enricher.service", "tetrapipe.service"],
    "export-json": ["exporters.json_file", "exporters.worker", "tetrapipe.service"],
    "export-fluentd": ["exporters.fluentd", "exporters.worker", "tetrapipe.service"],
    "export-prometheus": ["exporters.prometheus", "exporters.worker", "tetrapipe.service"],
    "export-grpc": ["exporters.grpc_server", "tetrapipe.service"],
    "getevents": ["exporters.getevents"],
    "tracingpolicy": ["tetrapipe.control_client"],
    "status": ["exporters.grpc_client"],
}
# keys a shared module reads in a function this command never calls (module-level import
# following cannot tell); each with the reason
NOT_READ = {
    # getevents only consumes: tetrapipe/kafka.py's dead-letter producer and topic creation
    "getevents": {"deadletter_topic", "topic_partitions", "topic_replication_factor", "topic_min_insync_replicas",
                  "kafka_max_message_bytes"},
}
PARSERS = {  # command → argv that reaches its parser
    "run": ["run"], "collector": ["collector"], "enricher": ["enricher"],
    "export-json": ["export", "json"], "export-fluentd": ["export", "fluentd"],
    "export-prometheus": ["export", "prometheus"], "export-grpc": ["export", "grpc"], "getevents": ["getevents"],
    "tracingpolicy": ["tracingpolicy", "list"], "status": ["status"],
}
OWN_FLAGS = {  # options a command has besides configuration keys
    "run": {"exporters", "log_dir", "quiet", "user"},
    "getevents": {"output", "file", "event_types", "namespace", "pod", "process", "policy_names",
                  "include_fields", "exclude_fields", "allowlist", "denylist", "follow", "from_start", "timeout",
                  "color", "host", "timestamps", "stack_traces", "ima_hash"},
    "status": {"timeout"},
}


def _subparser(argv: list[str]) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = cli.build_parser()
    for word in argv:
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        p = sub.choices[word]
    return p


def _options(p: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in p._actions if a.option_strings and a.dest not in ("help", "config")}


@pytest.mark.parametrize("command", sorted(ENTRIES))
def test_each_command_offers_exactly_the_keys_it_reads(command: str) -> None:
    read = keys_read(ENTRIES[command], FIELDS, frozenset({"exporters.sinks"})) - NOT_READ.get(command, set())
    offered = _options(_subparser(PARSERS[command])) - OWN_FLAGS.get(command, set())
    if command == "tracingpolicy":
        offered -= {"mode"}
    assert offered - read == set(), f"{command} offers options it never reads"
    assert read - offered == set(), f"{command} reads keys it does not offer as options"


def test_run_offers_every_service_key_and_no_other() -> None:
    services = set()
    for command in ("collector", "enricher", "export-json", "export-fluentd", "export-prometheus", "export-grpc"):
        services |= keys_read(ENTRIES[command], FIELDS, frozenset({"exporters.sinks"}))
    assert _options(_subparser(["run"])) - OWN_FLAGS["run"] == services


def test_every_key_declares_its_readers_and_section() -> None:
    for name, f in config.FIELDS.items():
        assert f.metadata.get("used_by"), f"{name}: declare used_by (tetrapipe/config.py's docstring)"
        assert set(f.metadata["used_by"]) <= set(config.COMMANDS), name
        assert f.metadata.get("section") in config.SECTIONS, name


def test_help_is_grouped_with_defaults_and_lists_only_own_options() -> None:
    text = _subparser(["getevents"]).format_help()
    assert "getevents options:" in text and "Kafka options:" in text
    for foreign in ("--ringbuf-pages", "--spool-max-mb", "--export-file-max-size-mb", "--fluentd-address"):
        assert foreign not in text
    text = _subparser(["export", "json"]).format_help()
    assert "JSON export options:" in text
    assert "(default: '/var/log/tetrapipe/events.log')" in text.replace("\n", " ").replace("  ", " ") \
        or "/var/log/tetrapipe/events.log" in text
    assert "--ringbuf-pages" not in text and "--fluentd-address" not in text
    text = _subparser(["collector"]).format_help()
    assert "(default: 4096)" in " ".join(text.split())  # ringbuf pages
    assert "--export-filename" not in text


def test_one_key_same_name_in_flag_environment_and_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("export-file-max-backups: 3\nspool_max_mb: 7\n")
    args = cli.build_parser().parse_args(["export", "json", "--config", str(f)])
    cfg = config.load(args, environ={"TETRAPIPE_EXPORT_FILE_MAX_BACKUPS": "4"})
    assert (cfg.export_file_max_backups, cfg.spool_max_mb) == (4, 7)  # env over file; a key of another service is fine
    args = cli.build_parser().parse_args(["export", "json", "--config", str(f), "--export-file-max-backups", "9"])
    assert config.load(args, environ={"TETRAPIPE_EXPORT_FILE_MAX_BACKUPS": "4"}).export_file_max_backups == 9


def test_count_uncaught_and_inode_root_keys(tmp_path: Path) -> None:
    """#12: the uncaught-road counter's switch is a key (flag, YAML, TETRAPIPE_COUNT_UNCAUGHT as
    before); the inode root too."""
    f = tmp_path / "c.yaml"
    f.write_text("count_uncaught: false\npolicy-inode-root: /proc/1/root\n")
    parse = cli.build_parser().parse_args
    assert config.load(parse(["run"]), environ={}).count_uncaught is True
    cfg = config.load(parse(["run", "--config", str(f)]), environ={})
    assert (cfg.count_uncaught, cfg.policy_inode_root) == (False, "/proc/1/root")
    assert config.load(parse(["run"]), environ={"TETRAPIPE_COUNT_UNCAUGHT": "0"}).count_uncaught is False
    assert config.load(parse(["run", "--config", str(f), "--count-uncaught"]), environ={}).count_uncaught is True


def readme_commands() -> list[tuple[int, str]]:
    """(line, command) of every command line in the README's code blocks (fenced or indented)
    that runs `tetrapipe` or a `./scripts/` script; continuation lines joined."""
    out: list[tuple[int, str]] = []
    fenced = shell = False
    pending = ""
    for n, line in enumerate((REPO / "README.md").read_text().splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
            shell = fenced and line[3:].strip() in ("", "sh", "bash", "shell", "console")
            continue
        if not ((fenced and shell) or (not fenced and line.startswith("    "))):
            continue  # prose, or a block of output/YAML/JSON (```text, ```yaml)
        text = pending + " " + line.strip() if pending else line.strip()
        if text.endswith("\\"):
            pending = text[:-1]
            continue
        pending = ""
        words = shlex.split(text, comments=True) if text else []
        if any(_runs_ours(seg) for seg in _segments(words)):
            out.append((n, text))
    return out


def _segments(words: list[str]) -> list[list[str]]:
    """The simple commands of a shell line (split at |, &&, || and ;)."""
    segs: list[list[str]] = [[]]
    for w in words:
        if w in ("|", "&&", "||", ";"):
            segs.append([])
        else:
            segs[-1].append(w)
    return [s for s in segs if s]


def _runs_ours(seg: list[str]) -> bool:
    """A simple command that runs `tetrapipe` or one of our scripts (not e.g. `kubectl -n tetrapipe`)."""
    return seg[0] == "tetrapipe" or seg[0].startswith("./scripts/")


def test_readme_command_lines_parse_as_written() -> None:
    cmds = readme_commands()
    assert any("tracingpolicy add --mode monitor" in c for _, c in cmds)  # the one #13 names
    assert len(cmds) >= 8
    for n, text in cmds:
        words = next(seg for seg in _segments(shlex.split(text, comments=True)) if _runs_ours(seg))
        if words[0] == "tetrapipe":
            argv = words[1:]
            try:
                cli.build_parser().parse_args(argv)
            except SystemExit as exc:
                pytest.fail(f"README.md:{n}: `{text}` does not parse (exit {exc.code})")
        else:
            script = REPO / next(w for w in words if w.startswith("./scripts/"))
            assert script.is_file() and os.access(script, os.X_OK), f"README.md:{n}: {script}"
            assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, f"README.md:{n}"


def _tetrapipe(*argv: str, timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETRAPIPE_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "tetrapipe", *argv], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, **kw)  # type: ignore[call-overload]


def _one_line(r: subprocess.CompletedProcess[str], expect: str) -> None:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert re.search(expect, last), r.stderr


def test_expected_failures_are_one_line(tmp_path: Path) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead = closed.getsockname()[1]  # bound, never listening: connections are refused
    with _port_with_free_neighbours() as taken:
        port = taken.getsockname()[1]
        # port taken
        _one_line(_tetrapipe("export", "prometheus", "--kafka", f"127.0.0.1:{dead}",
                             "--metrics-address", f"127.0.0.1:{port}"),
                  rf"export prometheus: metrics address 127.0.0.1:{port} .*Address already in use")
    # broker unreachable: a service and getevents
    _one_line(_tetrapipe("getevents", "--kafka", f"127.0.0.1:{dead}"),
              rf"getevents: cannot reach Kafka at 127.0.0.1:{dead}")
    _one_line(_tetrapipe("enricher", "--kafka", f"127.0.0.1:{dead}", "--metrics-address", ""),
              rf"enricher: cannot reach Kafka at 127.0.0.1:{dead} \(Connection refused\)")
    closed.close()
    # an export folder that cannot be made (under a file)
    blocker = tmp_path / "file"
    blocker.write_text("")
    _one_line(_tetrapipe("export", "json", "--kafka", f"127.0.0.1:{dead}", "--metrics-address", "",
                         "--export-filename", str(blocker / "sub" / "events.log")),
              r"export json: .*(Not a directory|cannot).*" + re.escape(str(blocker)))
    # no collector on the control socket
    _one_line(_tetrapipe("tracingpolicy", "list", "--control-socket", str(tmp_path / "none.sock")),
              r"cannot reach the collector's control socket")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to nobody")
def test_not_root_bpf_refused_and_unwritable_directory_are_one_line(tmp_path: Path) -> None:
    drop = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETRAPIPE_")}
    env["PYTHONPATH"] = str(REPO)
    for command, expect in (("collector", r"collector: needs root"), ("run", r"run: needs root")):
        r = subprocess.run([*drop, sys.executable, "-m", "tetrapipe", command], env=env, cwd="/",
                           capture_output=True, text=True, timeout=60)
        _one_line(r, expect)
    # root without the BPF capabilities: the kernel refuses the programs
    r = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-bpf,-perfmon,-sys_admin", sys.executable,
                        "-m", "tetrapipe", "collector", "--kafka", "127.0.0.1:1", "--metrics-address", "",
                        "--state-dir", str(tmp_path / "st"), "--control-socket", str(tmp_path / "c.sock")],
                       env=env, cwd="/", capture_output=True, text=True, timeout=180)
    _one_line(r, r"^tetrapipe collector: cannot start: the process program does not load on this kernel: "
                 r"process\.c: bcc could not compile or load it")
    assert r.returncode == 78  # EX_CONFIG: `run` does not restart it forever
    # run, as root, with a log folder that cannot be made: one line before anything starts
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = _tetrapipe("run", "--log-dir", str(blocker / "logs"), "--state-dir", str(tmp_path / "st"),
                   "--cache-dir", str(tmp_path / "cache"), "--control-socket", str(tmp_path / "s.sock"),
                   "--export-filename", str(tmp_path / "events.log"))
    _one_line(r, rf"run: cannot use {re.escape(str(blocker))}/logs \(service logs, --log-dir\): Not a directory")


def _port_with_free_neighbours() -> socket.socket:
    """A listening socket on a port P whose neighbours P-1..P+5 (the other services' metrics
    ports when the base is P-1) are free right now: another process holding one of them would
    add it to the refusal and make the one-line check fail for a reason that is not ours."""
    for _ in range(50):
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        if all(_free(p) for p in range(port - 1, port + 6) if p != port):
            taken.listen()
            return taken
        taken.close()
    raise AssertionError("no port with six free neighbours found in 50 tries")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_run_refuses_taken_metrics_ports_before_starting(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("run needs root before it checks anything else")
    with _port_with_free_neighbours() as taken:
        port = taken.getsockname()[1]
        r = _tetrapipe("run", "--metrics-address", f"127.0.0.1:{port - 1}", "--log-dir", str(tmp_path / "log"),
                       "--state-dir", str(tmp_path / "st"), "--cache-dir", str(tmp_path / "cache"),
                       "--control-socket", str(tmp_path / "s.sock"),
                       "--export-filename", str(tmp_path / "events.log"))
    _one_line(r, rf"run: metrics port {port} \(enricher\) in use by another process")
    assert not (tmp_path / "log" / "broker.log").exists()  # nothing started


def test_compose_and_deploy_config_parse() -> None:
    """docker-compose.yml's tetrapipe commands parse, and the shared YAML file loads for each."""
    import yaml

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    commands = [svc["command"] for svc in compose["services"].values()
                if isinstance(svc.get("command"), list) and svc["command"][0] in
                ("collector", "enricher", "export")]
    assert len(commands) == 5
    for argv in commands:
        argv = [a.replace("/etc/tetrapipe/tetrapipe.yaml", str(REPO / "deploy/tetrapipe/tetrapipe.yaml"))
                for a in argv]
        config.load(cli.build_parser().parse_args(argv), environ={})
