"""The JSON exporter service with Tetragon's export options set through TETRAPIPE_* settings, on
real files: allow/deny lists, redaction, field filters, rate limit with its rate_limit_info line
and metric, file mode and rotation with gzip; and a bad option refused at start with its reason."""

from __future__ import annotations

import asyncio
import gzip
import json
import stat

from harness import Pipeline, wait_until
from json_events import exec_event, kprobe_event

from schemas import codec
from tetrapipe import kafka
from tetrapipe.config import Config


async def produce(cfg: Config, events: list[dict]) -> None:
    await kafka.ensure_topics(cfg, [cfg.events_topic])
    p = await kafka.start_producer(cfg)
    try:
        futs = [await p.send(cfg.events_topic, codec.encode("event", ev)) for ev in events]
        await asyncio.gather(*futs)
    finally:
        await p.stop()


def test_export_options_end_to_end(pipeline: Pipeline) -> None:
    pipeline.settings.update(
        export_allowlist='{"event_set":["PROCESS_EXEC"],"namespace":["default"]}\n{"policy_names":["fd-install"]}',
        export_denylist='{"binary_regex":["^/usr/bin/denied$"]}',
        redaction_filters='{"redact":["--token[= ](\\\\S+)"]}',
        field_filters='{"event_set":["PROCESS_KPROBE"],"fields":"parent","action":"EXCLUDE"}',
        export_rate_limit="20", export_rate_limit_report_interval="1s",
        export_file_perm="640", export_file_max_size_mb="1", export_file_compress="true",
        export_file_max_backups="2")
    cfg = Config(kafka=pipeline.base["kafka"], events_topic=pipeline.base["events_topic"])
    events = [exec_event(pid=i, args=f"--token=secret{i} " + "z" * 100) for i in range(10)]
    events += [exec_event(pid=100, namespace="other"), exec_event(pid=101, binary="/usr/bin/denied")]
    events += [kprobe_event(pid=200)]
    events += [exec_event(pid=1000 + i) for i in range(30)]  # 10 + 1 + 30 = 41 pass the lists; 20 fit
    asyncio.run(produce(cfg, events))
    svc = pipeline.start("export-json", "export", "json")

    def exported() -> list[dict]:
        return pipeline.exported()

    def accounted() -> int:  # events written + events reported dropped
        docs = exported()
        return sum(int(d["rate_limit_info"]["number_of_dropped_process_events"]) if "rate_limit_info" in d
                   else 1 for d in docs)

    wait_until(lambda: accounted() == 41, timeout=30, what="every event written or reported dropped")
    docs = exported()
    body = [d for d in docs if "rate_limit_info" not in d]
    # 20 tokens at start; one more refills every 3 s (20/min) should a batch come later
    assert 20 <= len(body) <= 21
    dropped = 41 - len(body)
    pids = [next(iter(d.values()))["process"]["pid"] for d in body]
    assert pids[:11] == [*range(10), 200]  # other namespace and denied binary filtered out
    assert all(d["process_exec"]["process"]["arguments"].startswith("--token=***** ") for d in body[:10])
    assert "parent" not in body[10]["process_kprobe"] and body[10]["process_kprobe"]["policy_name"] == "fd-install"
    assert "parent" in body[0]["process_exec"]
    infos = [d for d in docs if "rate_limit_info" in d]
    assert sum(int(i["rate_limit_info"]["number_of_dropped_process_events"]) for i in infos) == dropped
    assert all(i["node_name"] == pipeline.node_name and i["time"].endswith("Z") for i in infos)
    assert svc.metric("tetrapipe_export_ratelimit_events_dropped_total") == dropped
    assert stat.S_IMODE(pipeline.export_file.stat().st_mode) == 0o640
    svc.stop()


def test_rotation_with_gzip_end_to_end(pipeline: Pipeline) -> None:
    pipeline.settings.update(export_file_max_size_mb="1", export_file_compress="true",
                             export_file_max_backups="2", export_file_perm="600")
    cfg = Config(kafka=pipeline.base["kafka"], events_topic=pipeline.base["events_topic"])
    asyncio.run(produce(cfg, [exec_event(pid=i, args="w" * 20_000) for i in range(200)]))  # ~4.3 MB
    pipeline.start("export-json", "export", "json")
    out = pipeline.export_file.parent

    def last_line_pid() -> int:
        try:
            lines = pipeline.export_file.read_text().splitlines()
            return json.loads(lines[-1])["process_exec"]["process"]["pid"] if lines else -1
        except (FileNotFoundError, ValueError):
            return -1

    wait_until(lambda: last_line_pid() == 199, timeout=60, what="all events written")
    wait_until(lambda: not list(out.glob("events-*.log")), timeout=10, what="backups compressed")
    backups = sorted(out.glob("events-*.log.gz"))
    assert len(backups) == 2  # max backups
    for b in backups:
        assert b.stat().st_size < 200_000  # compressed
        lines = gzip.decompress(b.read_bytes()).decode().splitlines()
        assert all(json.loads(line)["process_exec"]["process"]["pid"] >= 0 for line in lines)
        assert stat.S_IMODE(b.stat().st_mode) == 0o600
    assert pipeline.export_file.stat().st_size <= 1024 * 1024


def test_bad_option_refused_at_start(pipeline: Pipeline) -> None:
    pipeline.settings["export_allowlist"] = '{"namespace":["default"]}\n{"binary_regex":["(unclosed"]}'
    svc = pipeline.start("export-json", "export", "json", wait=False)
    assert svc.proc is not None
    assert svc.proc.wait(30) != 0
    assert "export_allowlist: line 2: binary_regex: bad regex '(unclosed'" in svc.log()
