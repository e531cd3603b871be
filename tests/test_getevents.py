"""``tetrapipe getevents`` as a user runs it: from a JSON export file, stdin and the events topic
(single-object and Confluent framing), with tetra's filters and field selection, printing JSON or
the compact lines exactly as Tetragon prints them."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from fake_schema_registry import FakeSchemaRegistry
from json_events import exec_event, exit_event, kprobe_event, seed_doc

from exporters import compact, protojson
from schemas.registry import EventSerializer, RegistryClient
from tetrapipe import kafka
from tetrapipe.broker import EmbeddedBroker
from tetrapipe.config import Config

REPO = Path(__file__).resolve().parent.parent
COMPACT_SEED = REPO / "tests" / "data" / "seed" / "compact-example.txt"  # verbatim copy of the seed


def getevents(*argv: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith("TETRAPIPE_")}
    e["PYTHONPATH"] = str(REPO)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "tetrapipe", "getevents", *argv], input=stdin, env=e,
                          capture_output=True, text=True, timeout=60, cwd=REPO)


def vi_session() -> list[dict[str, Any]]:
    """The activity of the seed's compact example, as events."""
    vi = dict(binary="/usr/bin/vi", args="donotchange.me")
    close = kprobe_event(function="__x64_sys_close")
    close["process_kprobe"]["args"] = [{"int_arg": 3}]
    fd_install = kprobe_event(function="fd_install")
    fd_install["process_kprobe"]["args"] = [{"int_arg": 3}, {"file_arg": {"path": "/tmp/forbidden/donotchange.me"}}]
    for ev in (close, fd_install):
        ev["process_kprobe"]["process"]["arguments"] = "donotchange.me"
    write = kprobe_event(function="__x64_sys_write")
    write["process_kprobe"]["process"]["arguments"] = "donotchange.me"
    vi_exit = exit_event(binary="/usr/bin/vi")
    vi_exit["process_exit"]["process"]["arguments"] = "donotchange.me"
    vi_exit["process_exit"]["signal"] = "SIGKILL"
    return [exec_event(binary="/bin/bash"), exec_event(binary="/bin/ls", pid=2), exit_event(binary="/bin/ls", pid=2),
            exec_event(pid=3, binary=vi["binary"], args=vi["args"]), fd_install, close, fd_install, write, vi_exit]


def as_lines(events: list[dict[str, Any]]) -> str:
    return "".join(protojson.dumps(e) + "\n" for e in events)


def test_compact_lines_are_tetragons() -> None:
    # the seed's example lost the trailing space tetra prints after an empty field ("%s %s %s" with
    # empty arguments); the rest is byte for byte (tests/test_compact_tetra.py has tetra's own cases)
    expected = COMPACT_SEED.read_text().splitlines()
    got = [compact.render(protojson.to_protojson(e)) for e in vi_session()]
    assert [g.rstrip(" ") for g in got] == expected
    assert got[0] == "🚀 process default/xwing /bin/bash "
    assert got[2] == "💥 exit    default/xwing /bin/ls  0"
    assert got[7] == "📝 write   default/xwing /usr/bin/vi /tmp/forbidden/donotchange.me 32 bytes"
    # the other shapes of Tetragon's compact encoder
    ev = protojson.to_protojson(kprobe_event(function="__x64_sys_openat"))
    ev["process_kprobe"]["args"] = [{"int_arg": -100}, {"string_arg": "/etc/passwd"}]
    assert compact.render(ev) == "📬️ openat  default/xwing /usr/bin/vi /etc/passwd"
    ev["process_kprobe"]["function_name"] = "security_bprm_check"
    assert compact.render(ev) == "❓ syscall default/xwing /usr/bin/vi security_bprm_check"
    host = protojson.to_protojson(exec_event(namespace=None, args="-la"))
    assert compact.render(host) == f"🚀 process {host['node_name']} /bin/bash -la"


def test_file_and_stdin_with_filters(tmp_path: Path) -> None:
    events = vi_session() + [exec_event(pid=9, namespace="kube-system", pod="coredns-1", binary="/coredns")]
    f = tmp_path / "events.log"
    f.write_text(as_lines(events))

    r = getevents("--file", str(f), "-o", "compact")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 10

    r = getevents("--file", str(f), "-o", "compact", "--event-types", "PROCESS_EXIT,process_kprobe",
                  "--process", "vi$")
    assert [line.split()[1] for line in r.stdout.splitlines()] == ["open", "close", "open", "write", "exit"]

    r = getevents("--file", str(f), "-o", "compact", "-n", "kube-system")
    assert r.stdout.splitlines() == ["🚀 process kube-system/coredns-1 /coredns "]  # tetra keeps the space
    r = getevents("--file", str(f), "-o", "compact", "--pod", "^core", "--pod", "^nothing")
    assert len(r.stdout.splitlines()) == 1
    r = getevents("--file", str(f), "--policy-names", "fd-install", "-e", "PROCESS_KPROBE")
    assert len(r.stdout.splitlines()) == 4

    # -f / -F: field selection in JSON output, from stdin
    r = getevents("--file", "-", "-e", "PROCESS_EXEC", "-f", "process.binary,process.pid", stdin=as_lines(events))
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [d["process_exec"] for d in docs][:2] == [{"process": {"pid": 13604, "binary": "/bin/bash"}},
                                                    {"process": {"pid": 2, "binary": "/bin/ls"}}]
    assert all(set(d) == {"process_exec", "node_name", "time"} for d in docs)
    r = getevents("--file", "-", "-e", "PROCESS_EXEC", "-F", "parent,process.pod", stdin=as_lines(events[:1]))
    (doc,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert "parent" not in doc["process_exec"] and "pod" not in doc["process_exec"]["process"]
    assert doc["process_exec"]["process"]["exec_id"]

    # a pretty-printed file (the seed), a bad line reported and skipped, a bad flag refused
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(seed_doc(), indent=2) + "\nnot json\n" + json.dumps(seed_doc()) + "\n")
    r = getevents("--file", str(pretty), "-o", "compact")
    assert r.stdout.splitlines() == ["🚀 process default/xwing /bin/bash "] * 2
    assert "line 48 is not JSON" in r.stderr or "is not JSON" in r.stderr
    r = getevents("--file", str(f), "-e", "PROCESS_NOPE")
    assert r.returncode == 2 and "--event-types: unknown PROCESS_NOPE" in r.stderr
    r = getevents("--file", str(tmp_path / "missing.log"))
    assert r.returncode == 1 and "missing.log" in r.stderr


def test_reads_the_events_topic_in_both_framings(broker: EmbeddedBroker) -> None:
    topic = f"getevents-{os.getpid()}.events"
    with FakeSchemaRegistry() as reg:
        cfg = Config(kafka=broker.bootstrap, events_topic=topic, schema_registry_url=reg.url)
        plain = EventSerializer("event", topic)
        confluent = EventSerializer("event", topic, RegistryClient(reg.url))

        async def produce() -> None:
            await kafka.ensure_topics(cfg, [topic])
            p = await kafka.start_producer(cfg)
            try:
                for i, ev in enumerate(vi_session()):
                    ser = plain if i % 2 else confluent
                    await p.send_and_wait(topic, ser.encode(ev))
                await p.send_and_wait(topic, b"garbage")
            finally:
                await p.stop()

        asyncio.run(produce())
        env = {"TETRAPIPE_KAFKA": broker.bootstrap, "TETRAPIPE_EVENTS_TOPIC": topic,
               "TETRAPIPE_SCHEMA_REGISTRY_URL": reg.url}
        r = getevents("--from-start", "--timeout", "1.5", "-o", "compact", env=env)
        assert r.returncode == 0, r.stderr
        expected = [compact.render(protojson.to_protojson(copy.deepcopy(e))) for e in vi_session()]
        assert r.stdout.splitlines() == expected
        assert "skipping message" in r.stderr and "not an Avro message" in r.stderr
