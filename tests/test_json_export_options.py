"""JSON export options on real files, driving JsonFileSink with real event dicts: rotation by size
and interval, backups kept, gzip of rotated files, file mode, allow/deny lists, field filters,
redaction and the export rate limit."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from json_events import exec_event, exit_event, kprobe_event

from exporters.filters import ExportFilters, FilterError
from exporters.json_file import JsonFileSink, RotationPolicy, parse_duration, repair_tail
from exporters.ratelimit import DROPPED, RateLimiter
from tetrapipe.config import Config


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def lines_of(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    assert text == "" or text.endswith("\n"), f"{path} ends with a partial line"
    return [json.loads(line) for line in text.splitlines()]


async def write_all(sink: JsonFileSink, batches: list[list[dict[str, Any]]], pause: float = 0.0) -> None:
    await sink.start()
    try:
        for b in batches:
            await sink.write(b)
            if pause:
                await asyncio.sleep(pause)
    finally:
        await sink.stop()


def pids_in(docs: list[dict[str, Any]]) -> list[int]:
    out = []
    for d in docs:
        body = next(v for k, v in d.items() if k.startswith("process_"))
        out.append(body["process"]["pid"])
    return out


# ---- rotation, backups, compression, mode --------------------------------------------------

def test_rotation_by_size_keeps_max_backups_and_every_line(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    sink = JsonFileSink(path, 0o600, RotationPolicy(max_size_bytes=20_000, max_backups=3))
    events = [exec_event(pid=1000 + i, args="x" * 200) for i in range(200)]  # ~2.2 kB a line
    run(write_all(sink, [events[i:i + 7] for i in range(0, 200, 7)]))
    backups = sink.backups()
    assert len(backups) == 3, [p.name for p in backups]
    assert sink.rotations > 3
    for p in [*backups, path]:
        assert p.stat().st_size <= 20_000
        assert p.name.startswith("events-") or p == path
    # the newest lines are all there, in order, across the kept backups and the live file
    kept = [pid for p in [*backups, path] for pid in pids_in(lines_of(p))]
    assert kept == list(range(1000 + 200 - len(kept), 1200))
    assert len(kept) > 30


def test_rotation_compresses_backups_with_gzip_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "tetragon.log"
    sink = JsonFileSink(path, 0o640, RotationPolicy(max_size_bytes=10_000, max_backups=0, compress=True))
    events = [exec_event(pid=i, args="y" * 300) for i in range(60)]
    run(write_all(sink, [events[i:i + 5] for i in range(0, 60, 5)]))
    backups = sink.backups()
    assert len(backups) >= 5 and all(p.name.endswith(".log.gz") for p in backups), backups
    assert not list(tmp_path.glob("*.tmp"))
    got = [pid for p in [*backups, path] for pid in pids_in(lines_of(p))]
    assert got == list(range(60))  # max_backups 0 keeps all: nothing lost
    for p in [*backups, path]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, p


def test_interrupted_compression_is_finished_at_start(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    plain = tmp_path / "events-2026-01-01T00-00-00.000.log"
    plain.write_text(json.dumps({"process_exec": {"process": {"pid": 7}}}) + "\n")
    (tmp_path / "events-2026-01-01T00-00-00.000.log.gz.tmp").write_bytes(b"\x1f\x8bpartial")
    sink = JsonFileSink(path, 0o600, RotationPolicy(compress=True))
    run(write_all(sink, []))
    assert not plain.exists()
    assert [p.name for p in sink.backups()] == ["events-2026-01-01T00-00-00.000.log.gz"]
    assert pids_in(lines_of(sink.backups()[0])) == [7]
    assert not list(tmp_path.glob("*.tmp"))


def test_rotation_by_interval(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    sink = JsonFileSink(path, 0o600, RotationPolicy(max_size_bytes=0, interval_s=0.4, max_backups=10))

    async def go() -> None:
        await sink.start()
        try:
            await sink.write([exec_event(pid=1)])
            await asyncio.sleep(1.3)  # rotated by the timer, with no write coming
            assert len(sink.backups()) == 1
            await sink.write([exec_event(pid=2)])
            await sink.write([exec_event(pid=3)])
        finally:
            await sink.stop()

    run(go())
    backups = sink.backups()
    assert [pids_in(lines_of(p)) for p in backups] == [[1]]
    assert pids_in(lines_of(path)) == [2, 3]
    assert parse_duration("1h30m") == 5400 and parse_duration("0") == 0 and parse_duration("500ms") == 0.5
    with pytest.raises(ValueError):
        parse_duration("ten minutes")


def test_file_mode_is_applied_despite_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        path = tmp_path / "events.log"
        run(write_all(JsonFileSink(path, 0o644), [[exec_event()]]))
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    finally:
        os.umask(old)


def test_torn_last_line_is_cut_at_start(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    good = json.dumps({"process_exec": {"process": {"pid": 1}}})
    path.write_text(good + "\n" + good[:25])
    assert repair_tail(path) == 25
    path.write_text(good + "\n" + good[:25])
    run(write_all(JsonFileSink(path), [[exec_event(pid=2)]]))
    assert pids_in(lines_of(path)) == [1, 2]


def test_from_config_reads_every_option(tmp_path: Path) -> None:
    cfg = Config(export_filename=str(tmp_path / "x.log"), export_file_max_size_mb=3,
                 export_file_rotation_interval="1h", export_file_max_backups=2, export_file_compress=True,
                 export_file_perm="640", export_rate_limit=100,
                 export_denylist='{"health_check":true}\n{"namespace":["kube-system"]}')
    sink = JsonFileSink.from_config(cfg)
    assert sink.rotation == RotationPolicy(3 * 1024 * 1024, 3600.0, 2, True)
    assert sink.mode == 0o640 and sink.rate_limiter is not None and sink.rate_limiter.per_minute == 100
    assert sink.filters is not None and len(sink.filters.events.deny) == 2
    with pytest.raises(ValueError, match="export_file_perm"):
        JsonFileSink.from_config(Config(export_file_perm="rw-r--r--"))
    with pytest.raises(FilterError, match=r"export_allowlist: line 2: unknown filter field 'binary'"):
        JsonFileSink.from_config(Config(export_allowlist='{"namespace":["a"]}\n{"binary":["x"]}'))


# ---- filters, field filters, redaction through the sink ------------------------------------

def test_allow_and_deny_lists_on_file(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    filters = ExportFilters.parse(
        allowlist='{"event_set":["PROCESS_EXEC","PROCESS_EXIT"],"namespace":["default"]}\n'
                  '{"binary_regex":["^/usr/bin/vi$"]}',
        denylist='{"pod_regex":["^deathstar"]}\n{"arguments_regex":["--health"]}')
    events = [
        exec_event(pid=1),                                        # allowed by line 1
        exit_event(pid=2),                                        # allowed by line 1
        exec_event(pid=3, namespace="kube-system"),               # neither line
        kprobe_event(pid=4),                                      # allowed by line 2 (vi)
        kprobe_event(pid=5, binary="/bin/cat"),                   # kprobe not in line 1 event_set
        exec_event(pid=6, pod="deathstar-1"),                     # denied
        exec_event(pid=7, args="--health ping"),                  # denied
        exec_event(pid=8, binary="/usr/bin/vi", namespace="x"),   # allowed by line 2
    ]
    run(write_all(JsonFileSink(path, filters=filters), [events]))
    assert pids_in(lines_of(path)) == [1, 2, 4, 8]


def test_field_filters_on_file(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    filters = ExportFilters.parse(field_filters=(
        '{"event_set":["PROCESS_EXEC"],"fields":"process.binary,process.pid,process.pod.name,parent.binary",'
        '"action":"INCLUDE"}\n'
        '{"event_set":["PROCESS_EXEC"],"fields":"function_name","action":"EXCLUDE","invert_event_set":true}'))
    run(write_all(JsonFileSink(path, filters=filters), [[exec_event(pid=9), kprobe_event(pid=10)]]))
    ex, kp = lines_of(path)
    assert ex["process_exec"] == {"process": {"pid": 9, "binary": "/bin/bash", "pod": {"name": "xwing"}},
                                  "parent": {"binary": "/usr/bin/runc"}}
    assert ex["node_name"] and ex["time"]  # outside the event body: kept
    assert "function_name" not in kp["process_kprobe"]
    assert kp["process_kprobe"]["process"]["pid"] == 10 and kp["process_kprobe"]["policy_name"] == "fd-install"


def test_redaction_filters_on_file(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    filters = ExportFilters.parse(redaction_filters=(
        '{"redact":["(?:--password|-p)(?:\\\\s+|=)(\\\\S*)"]}\n'
        '{"binary_regex":["mysql$"],"redact":["(?:--user)=(\\\\S+)"]}\n'
        '{"redact":["^AWS_SECRET_ACCESS_KEY=(.*)$"]}'))
    envs = [{"Key": "AWS_SECRET_ACCESS_KEY", "Value": "abcd"}, {"Key": "HOME", "Value": "/root"}]
    events = [
        exec_event(pid=1, binary="/usr/bin/mysql", args="--user=root --password=hunter2 -h db",
                   environment_variables=envs),
        exec_event(pid=2, binary="/usr/bin/psql", args="--user=root -p s3cret x"),
    ]
    run(write_all(JsonFileSink(path, filters=filters), [events]))
    a, b = lines_of(path)
    pa = a["process_exec"]["process"]
    assert pa["arguments"] == "--user=***** --password=***** -h db"
    assert pa["environment_variables"] == [{"Key": "AWS_SECRET_ACCESS_KEY", "Value": "*****"},
                                           {"Key": "HOME", "Value": "/root"}]
    assert b["process_exec"]["process"]["arguments"] == "--user=root -p ***** x"  # binary_regex: mysql only
    assert "hunter2" not in path.read_text() and "s3cret" not in path.read_text()


def test_rate_limit_on_file_emits_rate_limit_info(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    before = DROPPED._value.get()
    limiter = RateLimiter(10, report_interval_s=0.3)
    sink = JsonFileSink(path, rate_limiter=limiter, node_name="node-a")

    async def go() -> None:
        await sink.start()
        try:
            await sink.write([exec_event(pid=i) for i in range(25)])
            await asyncio.sleep(1.2)  # the report comes from the timer, without new events
        finally:
            await sink.stop()

    run(go())
    docs = lines_of(path)
    assert pids_in(docs[:10]) == list(range(10))
    assert len(docs) == 11
    info = docs[10]
    assert info["rate_limit_info"] == {"number_of_dropped_process_events": "15"}
    assert info["node_name"] == "node-a" and info["time"].endswith("Z")
    assert DROPPED._value.get() - before == 15


def test_rate_limit_refills_per_minute_and_zero_exports_nothing() -> None:
    now = [0.0]
    lim = RateLimiter(60, clock=lambda: now[0])
    assert sum(lim.allow() for _ in range(100)) == 60
    now[0] += 10  # 10 s at 60/min = 10 more
    assert sum(lim.allow() for _ in range(100)) == 10
    zero = RateLimiter(0, clock=lambda: now[0])
    now[0] += 60
    assert not any(zero.allow() for _ in range(5))
    assert RateLimiter(-1).allow()


def test_failed_write_is_retried_without_double_counting_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    limiter = RateLimiter(100, report_interval_s=3600)
    sink = JsonFileSink(path, rate_limiter=limiter)
    batch = [exec_event(pid=i) for i in range(5)]

    async def go() -> None:
        await sink.start()
        real_fd = sink.fd
        sink.fd = 10_000  # a write that fails (EBADF), as a full disk would
        with pytest.raises(OSError):
            await sink.write(batch)
        sink.fd = real_fd
        await sink.write(batch)  # the worker's retry of the same batch
        await sink.stop()

    run(go())
    assert pids_in(lines_of(path)) == [0, 1, 2, 3, 4]
    assert limiter.tokens == pytest.approx(95, abs=0.1)


def test_throughput_of_render_is_reasonable(tmp_path: Path) -> None:
    """Not a benchmark: just that the options do not change what is written for a plain sink."""
    path = tmp_path / "events.log"
    ev = [exec_event(pid=i) for i in range(50)]
    t = time.monotonic()
    run(write_all(JsonFileSink(path, filters=ExportFilters.parse()), [ev]))
    assert time.monotonic() - t < 30
    assert pids_in(lines_of(path)) == list(range(50))
