"""The restart policy of ``tetrapipe run`` (tetrapipe/supervisor.py) with real child processes:
backoff that grows per failure in a row and starts over after a healthy run, a flapping child
never stopping another, and exit status 78 (EX_CONFIG) retried a few times then left stopped
with its one-line reason while the rest runs."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from tetrapipe import supervisor
from tetrapipe.config import Config
from tetrapipe.supervisor import Child, Supervisor


def _child(name: str, code: str) -> Child:
    return Child(name, [], {}, command=[sys.executable, "-c", code])


def _run(sup: Supervisor, seconds: float) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(seconds, stop.set)
        await sup.watch(stop, interval=0.05)
    asyncio.run(main())


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "BACKOFF_MIN_S", 0.2)
    monkeypatch.setattr(supervisor, "BACKOFF_MAX_S", 0.8)
    monkeypatch.setattr(supervisor, "HEALTHY_S", 1.0)


def test_ex_config_child_left_stopped_with_reason_others_run(fast: None, tmp_path: Path) -> None:
    sup = Supervisor(Config(), [], log_dir=str(tmp_path))
    bad = _child("collector", "import sys; print('collector: kernel 6.18 refuses fentry: no hook to "
                              "attach', flush=True); sys.exit(78)")
    flappy = _child("export-json", "import sys; sys.exit(1)")
    steady = _child("enricher", "import time; time.sleep(60)")
    sup.children = [bad, flappy, steady]
    for c in sup.children:
        c.start(str(tmp_path))
    try:
        _run(sup, 6.0)
        assert bad.given_up == "collector: kernel 6.18 refuses fentry: no hook to attach"
        assert bad.restarts == supervisor.EX_CONFIG_RETRIES  # started 1 + retries times in all
        assert sup.status()["collector"].startswith("stopped: collector: kernel 6.18")
        # the flapping exporter is still being restarted, with backoff capped at 0.8 s
        assert not flappy.given_up and 4 <= flappy.restarts <= 14, flappy.restarts
        # and the healthy child was never touched
        assert steady.restarts == 0 and steady.proc is not None and steady.proc.poll() is None
        assert sup.status()["enricher"] == "running"
    finally:
        sup.stop()


def test_backoff_grows_then_resets_after_a_healthy_run(fast: None, tmp_path: Path) -> None:
    c = _child("enricher", "import sys; sys.exit(3)")
    c.start(str(tmp_path))
    c.proc.wait()  # type: ignore[union-attr]
    now = time.monotonic()
    delays = []
    for _ in range(5):  # quick failures in a row: 0.2, 0.4, 0.8, 0.8, 0.8
        c.died(now)
        delays.append(round(c.next_start - now, 2))
        c.started = now
    assert delays == [0.2, 0.4, 0.8, 0.8, 0.8]
    c.started = now - 2.0  # it ran longer than HEALTHY_S before dying: the backoff starts over
    c.died(now)
    assert round(c.next_start - now, 2) == 0.2 and c.failures == 1


def test_ex_config_count_resets_when_another_exit_comes_between(fast: None, tmp_path: Path) -> None:
    c = _child("collector", "import sys; sys.exit(78)")
    c.start(str(tmp_path))
    c.proc.wait()  # type: ignore[union-attr]
    now = time.monotonic()
    c.died(now)
    c.died(now)
    c.proc.returncode = 1  # a crash, not a config error: the 78 streak is broken
    c.died(now)
    c.proc.returncode = 78
    for _ in range(supervisor.EX_CONFIG_RETRIES):
        c.died(now)
        assert not c.given_up
    c.died(now)
    assert c.given_up
