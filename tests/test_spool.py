"""The collector's outbox and on-disk spool, on real files: order kept across memory and disk,
the bound holds and drops are counted, a new process replays what an old one spooled, a write
cut by a crash is never replayed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import REGISTRY

from collector.spool import Outbox, Spool


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def _drain(box: Outbox) -> list[bytes]:
    out = []
    while (it := box.head()) is not None:
        out.append(it.data)
        box.done(it)
    return out


def _outbox(path: Path, max_bytes: int = 1 << 20, memory: int = 3) -> Outbox:
    async def make() -> Outbox:  # the outbox's Event wants a running loop on old Pythons
        return Outbox(Spool(path, max_bytes), memory)
    return asyncio.run(make())


def test_order_kept_across_memory_and_spool(tmp_path: Path) -> None:
    box = _outbox(tmp_path / "spool")
    batches = [f"batch-{i}".encode() for i in range(10)]
    for b in batches[:2]:
        box.put(b, 1)
    assert len(box.spool) == 0 and len(box.memory) == 2  # normal case: memory only
    head = box.head()
    assert head is not None and head.data == batches[0]
    box.degraded = True  # the sender saw the broker fail while batch 0 was in flight
    box.spill()
    for b in batches[2:]:
        box.put(b, 1)
    assert len(box.memory) == 0 and len(box.spool) == 10
    box.done(head)  # the uncertain send was acknowledged after all: it leaves the spool
    box.degraded = False
    assert _drain(box) == batches[1:]
    assert not list((tmp_path / "spool").iterdir())


def test_bound_and_drops_counted(tmp_path: Path) -> None:
    before = _sample("tetrapipe_spool_batches_dropped_total")
    rec_before = _sample("tetrapipe_spool_records_dropped_total")
    box = _outbox(tmp_path / "spool", max_bytes=1000, memory=1)
    box.degraded = True
    kept = [box.put(bytes([i]) * 300, 7) for i in range(5)]
    assert kept == [True, True, True, False, False]
    assert box.spool.bytes == 900
    assert _sample("tetrapipe_spool_batches_dropped_total") - before == 2
    assert _sample("tetrapipe_spool_records_dropped_total") - rec_before == 14
    assert [b[0] for b in _drain(box)] == [0, 1, 2]


def test_next_process_replays_in_order(tmp_path: Path) -> None:
    d = tmp_path / "spool"
    box = _outbox(d)
    box.degraded = True
    for i in range(5):
        box.put(f"old-{i}".encode(), 1)
    (d / "00000000000000ff.batch.tmp").write_bytes(b"torn")  # a write cut by kill -9
    # a new collector process: spooled batches come first, new ones after them
    box2 = _outbox(d)
    assert not (d / "00000000000000ff.batch.tmp").exists()
    box2.put(b"new-0", 1)
    assert _drain(box2) == [*(f"old-{i}".encode() for i in range(5)), b"new-0"]


def test_unreadable_file_set_aside(tmp_path: Path) -> None:
    d = tmp_path / "spool"
    box = _outbox(d)
    box.degraded = True
    for i in range(3):
        box.put(f"b{i}".encode(), 1)
    (d / f"{1:016x}.batch").unlink()  # lost under our feet
    before = _sample("tetrapipe_spool_files_unreadable_total")
    assert _drain(box) == [b"b0", b"b2"]
    assert _sample("tetrapipe_spool_files_unreadable_total") - before == 1


def test_disk_full_and_read_only_spool_survived_in_order(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """The spool on a real 64 KiB tmpfs: it fills up (ENOSPC) and is then remounted read-only
    (EROFS). The outbox keeps batches in memory, in order, counts each failed write, and writes
    to the spool again once it can; nothing raises into the collector."""
    import os
    import subprocess

    from conftest import skip_or_fail

    from collector import spool as spool_mod

    if os.geteuid() != 0:
        skip_or_fail("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tetrapipe-spool-test", str(mnt)], check=True)
    monkeypatch.setattr(spool_mod, "SPOOL_RETRY_S", 0.0)
    try:
        box = _outbox(mnt / "spool", max_bytes=10 << 20, memory=1)
        box.degraded = True  # the broker is away: everything goes to the spool
        errors0 = _sample("tetrapipe_spool_write_errors_total")
        batches = [bytes([i % 256]) * 8000 for i in range(20)]  # 160 kB: more than the disk
        for b in batches:
            assert box.put(b, 1)
        assert _sample("tetrapipe_spool_write_errors_total") > errors0
        assert len(box.spool) >= 5 and len(box.memory) >= 5 and box.spool_error
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        more = [b"ro-%d" % i * 100 for i in range(5)]
        for b in more:
            assert box.put(b, 1)
        assert "Read-only" in box.spool_error or "read-only" in box.spool_error.lower()
        subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
        got = _drain(box)  # the broker answers again: everything, in order, none lost
        assert got == batches + more
        box.put(b"after", 1)
        assert _drain(box) == [b"after"] and not box.memory_bytes
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
