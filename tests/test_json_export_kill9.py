"""kill -9 of the JSON exporter while it writes: no torn line ever stays in the export files, and
after restarts every event is there (at least once), across rotations with compression."""

from __future__ import annotations

import asyncio
import gzip
import json
import signal
import time
from pathlib import Path

from harness import Pipeline, wait_until
from json_events import exec_event

from schemas import codec
from tetrapipe import kafka
from tetrapipe.config import Config

N_EVENTS = 3000
KILLS = 1


async def produce(cfg: Config, n: int) -> None:
    await kafka.ensure_topics(cfg, [cfg.events_topic])
    p = await kafka.start_producer(cfg)
    try:
        futs = []
        for i in range(n):
            ev = exec_event(pid=100_000 + i, args=f"run {i} " + "a" * 3000)
            futs.append(await p.send(cfg.events_topic, codec.encode("event", ev), key=str(i).encode()))
        await asyncio.gather(*futs)
    finally:
        await p.stop()


def total_size(directory: Path) -> int:
    n = 0
    for p in directory.glob("events*"):
        try:
            n += p.stat().st_size
        except FileNotFoundError:  # renamed or compressed meanwhile
            pass
    return n


def all_lines(directory: Path) -> tuple[list[dict], list[str]]:
    """Every line of the export file and its backups, and the names of files with a torn tail."""
    docs, torn = [], []
    for p in sorted(directory.glob("events*")):
        if p.name.endswith(".tmp"):
            continue
        try:
            raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
        except (FileNotFoundError, EOFError):  # being rotated or compressed right now
            continue
        if raw and not raw.endswith(b"\n"):
            torn.append(p.name)
            raw = raw[:raw.rfind(b"\n") + 1]  # a line being written right now: not one of the lines
        docs += [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
    return docs, torn


def test_kill9_while_writing_leaves_no_torn_line_and_loses_nothing(pipeline: Pipeline) -> None:
    pipeline.settings.update(export_file_max_size_mb="2", export_file_max_backups="0",
                             export_file_compress="true")
    b = pipeline.base
    cfg = Config(kafka=b["kafka"], events_topic=b["events_topic"])
    asyncio.run(produce(cfg, N_EVENTS))
    out_dir = pipeline.export_file.parent

    torn_seen = 0
    for k in range(KILLS):
        svc = pipeline.start("export-json", "export", "json")
        start_size = total_size(out_dir)
        # kill as soon as this run has written something: mid-batch, often mid-write
        wait_until(lambda s=start_size, k=k: total_size(out_dir) > s + 200_000 * (k + 1),
                   timeout=60, interval=0.005, what="exporter writing")
        svc.signal(signal.SIGKILL)
        assert svc.proc is not None
        svc.proc.wait(10)
        assert svc.proc.returncode == -signal.SIGKILL
        live = pipeline.export_file
        if live.exists() and live.stat().st_size and not live.read_bytes().endswith(b"\n"):
            torn_seen += 1

    svc = pipeline.start("export-json", "export", "json")

    def done() -> bool:
        docs, _ = all_lines(out_dir)
        return len({d["process_exec"]["process"]["pid"] for d in docs}) >= N_EVENTS

    wait_until(done, timeout=120, interval=0.5, what="every event exported after the kills")
    svc.stop()
    docs, torn = all_lines(out_dir)
    assert torn == [], f"torn lines left in {torn}"
    pids = [d["process_exec"]["process"]["pid"] for d in docs]
    assert set(pids) == set(range(100_000, 100_000 + N_EVENTS))
    for d in docs:  # every line whole: its arguments intact
        args = d["process_exec"]["process"]["arguments"]
        assert args.endswith("a" * 3000) and args.startswith("run ")
    backups = list(out_dir.glob("events-*"))
    assert backups and all(p.name.endswith(".log.gz") for p in backups)
    print(f"kill -9: torn tails found at kill time {torn_seen}, repaired; "
          f"{len(pids)} lines for {N_EVENTS} events ({len(pids) - N_EVENTS} redelivered), "
          f"{len(backups)} gzip backups, {time.strftime('%H:%M:%S')}")


CHILD = r'''
import asyncio, os, sys
sys.path.insert(0, sys.argv[3])
from json_events import exec_event
from exporters.json_file import JsonFileSink, RotationPolicy

out, state = sys.argv[1], sys.argv[2]
TOTAL, BATCH = 12000, 1000  # ~10 MB a batch

# A kill inside one big write(2) to the page cache is a matter of luck; here each write(2) takes at
# most 64 KiB, so between two of them the file ends mid-line, exactly as after a kill inside a
# write, and the parent can stop the child there and kill it.
_os_write = os.write
os.write = lambda fd, data: _os_write(fd, memoryview(data)[:65536])
template = exec_event(args="b" * 10000)

def batch(start):
    evs = []
    for i in range(start, min(start + BATCH, TOTAL)):
        ev = {**template, "process_exec": {**template["process_exec"],
              "process": {**template["process_exec"]["process"], "pid": i, "arguments": f"n{i} " + "b" * 10000}}}
        evs.append(ev)
    return evs

async def main():
    done = int(open(state).read()) if os.path.exists(state) else 0
    sink = JsonFileSink(out, 0o600, RotationPolicy(max_size_bytes=25_000_000, max_backups=0, compress=True))
    await sink.start()
    while done < TOTAL:
        await sink.write(batch(done))
        done += BATCH
        with open(state + ".tmp", "w") as f:   # "commit" only after the sink accepted the batch
            f.write(str(done))
        os.rename(state + ".tmp", state)
    await sink.stop()

asyncio.run(main())
'''


def wait_stopped(pid: int) -> None:
    """Until the signalled process is really stopped (SIGSTOP takes effect asynchronously)."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return
        if state in ("T", "t", "Z", "X"):
            return
        time.sleep(0.0005)


def ends_mid_line(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            if f.tell() == 0:
                return False
            f.seek(-1, 2)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False


def test_kill9_of_a_writing_sink_process_many_times(tmp_path: Path) -> None:
    """The sink alone in a child process that commits after each write, as the worker does:
    killed at many points (mid-write, mid-rotation, mid-compression), it never leaves a torn line
    and, resumed from its commit, loses nothing."""
    import os
    import random
    import subprocess
    import sys

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out, state = out_dir / "events.log", tmp_path / "committed"
    tests_dir = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": str(tests_dir.parent)}
    argv = [sys.executable, "-c", CHILD, str(out), str(state), str(tests_dir)]
    rng = random.Random(5)
    torn_at_kill = 0
    kills = 0
    for k in range(12):
        proc = subprocess.Popen(argv, env=env)
        time.sleep(0.2 + rng.random() * 0.3)
        if k % 3:  # most kills: stopped and killed where the file ends mid-line, i.e. inside a write
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and proc.poll() is None:
                proc.send_signal(signal.SIGSTOP)
                wait_stopped(proc.pid)
                if ends_mid_line(out):
                    break
                proc.send_signal(signal.SIGCONT)
                time.sleep(rng.random() * 0.002)
        proc.send_signal(signal.SIGKILL)  # the others: wherever it is (rotating, compressing, ...)
        proc.wait()
        kills += 1
        if ends_mid_line(out):
            torn_at_kill += 1
        elif k % 3:
            print(f"kill {k}: the child ended before a stop found the file mid-line")
    subprocess.run(argv, env=env, check=True, timeout=120)
    docs, torn = all_lines(out_dir)
    assert torn == []
    assert torn_at_kill >= 1, "no kill landed inside a write: the test proved nothing"
    pids = [d["process_exec"]["process"]["pid"] for d in docs]
    assert set(pids) == set(range(12000))
    assert all(d["process_exec"]["process"]["arguments"].endswith("b" * 10000) for d in docs)
    print(f"sink kill -9 x{kills}: {torn_at_kill} torn tails at kill time, all repaired; "
          f"{len(pids)} lines for 12000 events")
