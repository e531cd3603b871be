"""Issue 5.5: Tetragon's redaction filters apply to every output. The enricher redacts each process
entry once, so the events topic (and so the JSON file, fluentd and getevents) and the state topic
never carry the secret: a real process run with ``--password=hunter2`` is exported redacted as
process, parent and ancestor; ``binary_regex`` limits a filter to its binaries; a bad filter stops
the enricher (and ``tetrapipe run``) at start with one clear line."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import skip_or_fail
from fluent_receiver import FluentReceiver
from harness import REPO, Pipeline, body, wait_until
from identity_helpers import RawProducer, exec_record, exit_record, fork_record, one

from bpf import records
from collector.batcher import Batcher
from enricher import state
from enricher.raw_decoder import decode_batch
from enricher.service import Enricher
from exporters import protojson
from schemas import codec
from tetrapipe import kafka
from tetrapipe.config import Config
from tetrapipe.filter_json import FilterError
from tetrapipe.redaction import parse_redaction_filters, redact_process

SECRET = "hunter2"
# the option's text (JSON lines): --password anywhere; --user only in /true (binary_regex)
FILTERS_TEXT = ('{"redact":["--password[= ](\\\\S+)"]}\n'
                '{"binary_regex":["/true$"],"redact":["--user[= ](\\\\S+)"]}')


def _procs(ev: dict[str, Any]) -> list[dict[str, Any]]:
    b = body(ev)
    return [p for p in (b.get("process"), b.get("parent"), *(b.get("ancestors") or [])) if p]


# ---- the enricher, Kafka-free ------------------------------------------------------------------

def _enrich(enr: Enricher, *recs: bytes) -> list[dict[str, Any]]:
    frame = Batcher("n1", records.layout_id()).frame(list(recs))
    events, bad = enr.handle_batch(decode_batch(frame))
    assert not bad
    return events


def test_enricher_redacts_process_parent_ancestors_clone_and_exit() -> None:
    enr = Enricher(Config(node_name="n1", redaction_filters=FILTERS_TEXT, enable_ancestors="base"))
    evs = _enrich(enr,
                  exec_record(7000, 1, "/usr/bin/mysqld", ["--password=hunter2", "--user=root"]),
                  exec_record(7001, 7000, "/bin/sh", ["-c", "x", "--password", SECRET]),
                  fork_record(7002, 7001),
                  exec_record(7003, 7002, "/usr/bin/true", ["--user=bob", "--password=hunter2"]),
                  exit_record(7003, 7002, 0),
                  records.encode_sock(7002, 7002, time.monotonic_ns(), records.SOCK_CONNECT, 2, 2, 40000, 443,
                                      bytes([127, 0, 0, 1]), bytes([192, 0, 2, 7]), 1),
                  exit_record(7001, 7000, 0))
    by = {(k, b["process"]["pid"]): ev for ev in evs for k, b in ev.items() if k.startswith("process_")}
    mysqld = by[("process_exec", 7000)]["process_exec"]["process"]
    assert mysqld["arguments"] == "--password=***** --user=root"  # --user: only for /true
    sh = by[("process_exec", 7001)]["process_exec"]
    assert sh["process"]["arguments"] == '-c x --password *****'
    assert sh["parent"]["arguments"] == "--password=***** --user=root"
    true_exec = by[("process_exec", 7003)]["process_exec"]
    assert true_exec["process"]["arguments"] == "--user=***** --password=*****"
    assert true_exec["parent"]["pid"] == 7002 and true_exec["parent"]["arguments"] == '-c x --password *****'
    assert [a["pid"] for a in true_exec["ancestors"]] == [7001, 7000]
    assert true_exec["ancestors"][1]["arguments"] == "--password=***** --user=root"
    assert by[("process_exit", 7003)]["process_exit"]["process"]["arguments"] == "--user=***** --password=*****"
    connect = by[("process_kprobe", 7002)]["process_kprobe"]  # another event type, from the same entries
    assert connect["function_name"] == "tcp_connect"
    assert connect["process"]["arguments"] == '-c x --password *****'
    assert connect["parent"]["pid"] == 7001 and connect["parent"]["arguments"] == '-c x --password *****'
    for ev in evs:  # and on the wire: the Avro bytes of every event
        assert SECRET.encode() not in codec.encode("event", {k: v for k, v in ev.items() if not k.startswith("_")})
    # once per entry: the cache holds the redacted text, an event copies it
    assert enr.builder.cache.current(7000).process["arguments"] == "--password=***** --user=root"


def test_no_filter_leaves_arguments_and_costs_no_call(monkeypatch: pytest.MonkeyPatch) -> None:
    enr = Enricher(Config(node_name="n1"))
    called = []
    monkeypatch.setattr("enricher.event_builder.redact_process", lambda *a: called.append(a))
    evs = _enrich(enr, exec_record(7100, 1, "/usr/bin/mysql", ["--password=hunter2"]))
    assert evs[0]["process_exec"]["process"]["arguments"] == "--password=hunter2"
    assert called == []


def test_environment_variables_and_protojson_form() -> None:
    filters = parse_redaction_filters('{"redact":["^AWS_SECRET_ACCESS_KEY=(.*)$", "--password=(\\\\S+)"]}')
    proc = {"binary": "/usr/bin/aws", "arguments": "s3 ls --password=x",
            "environment_variables": [{"Key": "AWS_SECRET_ACCESS_KEY", "Value": "abc"}, {"Key": "HOME", "Value": "/"}]}
    assert redact_process(filters, proc)
    assert proc["arguments"] == "s3 ls --password=*****"
    assert proc["environment_variables"] == [{"Key": "AWS_SECRET_ACCESS_KEY", "Value": "*****"},
                                             {"Key": "HOME", "Value": "/"}]
    assert not redact_process(filters, proc)  # redacting again changes nothing


def test_bad_filter_refused_by_enricher_class() -> None:
    with pytest.raises(FilterError, match=r"redaction_filters: line 2: redact: bad regex '\(unclosed'"):
        Enricher(Config(redaction_filters='{"redact":["x(y)"]}\n{"redact":["(unclosed"]}'))
    with pytest.raises(FilterError, match="redaction_filters: line 1: unknown redaction filter field"):
        Enricher(Config(redaction_filters='{"match":{"binary_regex":["x"]},"redact":["(y)"]}'))


# ---- the services ------------------------------------------------------------------------------

def test_bad_filter_refuses_enricher_start_with_one_line(pipeline: Pipeline) -> None:
    pipeline.settings["redaction_filters"] = '{"redact":["--password=(\\\\S+)"]}\n{"redact":["(unclosed"]}'
    svc = pipeline.start("enricher", "enricher", wait=False)
    assert svc.proc is not None and svc.proc.wait(30) != 0
    log = svc.log()
    assert "tetrapipe enricher: redaction_filters: line 2: redact: bad regex '(unclosed'" in log
    assert "Traceback" not in log and sum("redaction_filters" in line for line in log.splitlines()) == 1


def test_bad_filter_refuses_tetrapipe_run(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        skip_or_fail("tetrapipe run checks for root before its options")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETRAPIPE_")}
    env.update(PYTHONPATH=str(REPO), TETRAPIPE_REDACTION_FILTERS='{"redact": "--password"}')
    p = subprocess.run([sys.executable, "-m", "tetrapipe", "run", "--log-dir", str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.returncode != 0
    assert 'tetrapipe run: redaction_filters: line 1: redact: expected a list, got "--password"' in p.stderr
    assert not list(tmp_path.iterdir())  # nothing was started


def _topic_values(cfg: Config, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """(key, value) of every message of a topic, from the start."""
    async def run() -> list[tuple[bytes | None, bytes | None]]:
        c = kafka.make_consumer(cfg, f"redaction-test-{uuid.uuid4().hex[:8]}", [topic])
        await c.start()
        out = []
        try:
            end = sum((await c.end_offsets(list(c.assignment()))).values()) if c.assignment() else 0
            while not c.assignment() or len(out) < end:
                got = await c.getmany(timeout_ms=500)
                out += [(m.key, m.value) for ms in got.values() for m in ms]
                if not end and c.assignment():
                    end = sum((await c.end_offsets(list(c.assignment()))).values())
        finally:
            await c.stop()
        return out

    return asyncio.run(asyncio.wait_for(run(), 30))


def test_state_replayed_from_before_the_filter_is_redacted(pipeline: Pipeline) -> None:
    """An entry journaled by an enricher without filters comes back redacted in a restarted
    enricher that has them (and is journaled again, redacted)."""
    first = pipeline.start("enricher", "enricher")
    pipeline.start("export-json", "export", "json")
    raw = RawProducer(pipeline)
    raw.send(exec_record(6001, 1, "/usr/bin/mysqld", ["--password=hunter2"]))
    wait_until(lambda: one(pipeline, "process_exec", 6001), what="exec before the filter")
    wait_until(lambda: first.metric("tetrapipe_state_writes_total", kind="entry") >= 1, what="state written")
    first.stop()
    second = pipeline.start("enricher-2", "enricher", extra={"redaction_filters": FILTERS_TEXT})
    raw.send(exec_record(6002, 6001, "/usr/bin/true", ["--user=bob"]))
    child = wait_until(lambda: one(pipeline, "process_exec", 6002), timeout=40, what="child exec after restart")
    assert child["parent"]["arguments"] == "--password=*****"
    assert child["process"]["arguments"] == "--user=*****"
    assert second.metric("tetrapipe_enricher_redacted_processes_total") == 2
    cfg = Config(kafka=pipeline.base["kafka"])
    eid = child["parent"]["exec_id"]

    def latest_state() -> dict[str, Any] | None:
        mine = [v for k, v in _topic_values(cfg, pipeline.base["state_topic"]) if k == eid.encode() and v]
        return state.entry_from_json(mine[-1]).process if mine else None

    wait_until(lambda: (latest_state() or {}).get("arguments") == "--password=*****", timeout=20,
               what="the state entry journaled again, redacted")


@pytest.mark.kernel
def test_real_process_secret_in_no_output(bpf_ok: None, pipeline: Pipeline) -> None:
    """collector → enricher → events topic → JSON file and fluentd: a real process tree run with
    a password on its command lines; the secret is in the raw records, and in no output."""
    rx = FluentReceiver().start()
    pipeline.settings.update(redaction_filters=FILTERS_TEXT, enable_ancestors="base",
                             fluentd_address=rx.address)
    shared = Path(tempfile.mkdtemp(prefix="tetrapipe-redact-"))
    try:
        pipeline.start_all(exporters=("json", "fluentd"))
        os.chmod(shared, 0o755)
        outer, inner = shared / "outer.sh", shared / "inner.sh"
        outer.write_text(f"/bin/sh {inner} --password {SECRET}\n")
        inner.write_text(f"/bin/true --user=bob --password={SECRET}\n/bin/echo --user=carol >/dev/null\n")
        proc = subprocess.run(["/bin/sh", str(outer), f"--password={SECRET}", "--user=alice"], timeout=20)
        assert proc.returncode == 0
        _check_outputs(pipeline, rx, shared)
    finally:
        rx.stop()
        shutil.rmtree(shared, ignore_errors=True)


def _ours(docs: list[dict[str, Any]], shared: Path) -> list[tuple[str, dict[str, Any]]]:
    """(event type, body) of the exec and exit events of our process tree, once each."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for d in docs:
        for k, b in d.items():
            if k in ("process_exec", "process_exit") and str(shared) in repr(_procs(d)):
                out[(k, b["process"]["exec_id"])] = b
    return [(k, b) for (k, _), b in out.items()]


def _check_tree(evs: list[tuple[str, dict[str, Any]]], shared: Path, where: str) -> None:
    execs = [b for t, b in evs if t == "process_exec"]

    def exec_of(pred: Any) -> dict[str, Any]:
        found = [b for b in execs if pred(b["process"])]
        assert len(found) == 1, (where, found)
        return found[0]

    sh_outer = exec_of(lambda p: "outer.sh" in p["arguments"])
    sh_inner = exec_of(lambda p: "inner.sh" in p["arguments"])
    true = exec_of(lambda p: p["binary"].endswith("/true"))
    echo = exec_of(lambda p: p["binary"].endswith("/echo"))
    assert sh_outer["process"]["arguments"] == f"{shared}/outer.sh --password=***** --user=alice", where
    assert sh_inner["process"]["arguments"] == f"{shared}/inner.sh --password *****", where
    assert sh_inner["parent"]["exec_id"] == sh_outer["process"]["exec_id"]
    assert sh_inner["parent"]["arguments"] == sh_outer["process"]["arguments"]
    assert true["process"]["arguments"] == "--user=***** --password=*****", where
    assert true["parent"]["arguments"] == sh_inner["process"]["arguments"]
    assert true["ancestors"][0]["arguments"] == sh_outer["process"]["arguments"]
    assert echo["process"]["arguments"] == "--user=carol", where  # binary_regex: not /true
    exits = {b["process"]["exec_id"]: b["process"]["arguments"] for t, b in evs if t == "process_exit"}
    assert exits == {b["process"]["exec_id"]: b["process"]["arguments"] for b in (sh_outer, sh_inner, true, echo)}


def _check_outputs(pipeline: Pipeline, rx: FluentReceiver, shared: Path) -> None:
    want = 4 * 2  # outer sh, inner sh, true, echo: exec and exit each
    json_evs = wait_until(lambda: (lambda o: o if len(o) == want else None)(_ours(pipeline.exported(), shared)),
                          timeout=60, what="8 events of our tree in the JSON file")
    fluent_evs = wait_until(
        lambda: (lambda o: o if len(o) == want else None)(_ours([r.record for r in rx.snapshot()], shared)),
        timeout=60, what="8 events of our tree at fluentd")
    cfg = Config(kafka=pipeline.base["kafka"])
    topic = [v for _, v in _topic_values(cfg, pipeline.base["events_topic"]) if v]
    kafka_evs = _ours([protojson.to_protojson(codec.decode("event", v)) for v in topic], shared)
    for evs, where in ((json_evs, "json file"), (fluent_evs, "fluentd"), (kafka_evs, "events topic")):
        assert len(evs) == want, where
        _check_tree(evs, shared, where)
    # the secret reached the pipeline (the collector's raw records hold it) ...
    raw_args = [rec.args for _, v in _topic_values(cfg, pipeline.base["raw_topic"]) if v
                for rec in map(records.decode, decode_batch(v).raw_records)
                if isinstance(rec, records.ExecRecord) and str(shared).encode() in rec.args]
    assert len(raw_args) == 2 and all(SECRET.encode() in a for a in raw_args)
    # ... and is in no output: not the events topic, not the state topic, not the file, not fluentd
    assert not [v for v in topic if SECRET.encode() in v]
    assert not [v for _, v in _topic_values(cfg, pipeline.base["state_topic"]) if v and SECRET.encode() in v]
    assert SECRET not in pipeline.export_text()
    assert not [r for r in rx.snapshot() if SECRET in repr(r.record)]
