"""The bench's per-enricher CPU budget (bench/cpu_quota.py, ``bench.enricher_kafka --cpu-quota``):
the argument refused with its reason when it cannot be a budget, and a real cgroup made with the
quota asked, the wrapped process inside it from its start, and the cgroup gone afterwards."""

from __future__ import annotations

import os
import subprocess

import pytest

from bench.cpu_quota import CpuCgroup, parse_quota
from bench.enricher_kafka import main


def test_quota_argument_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_quota("0.4", cores=2) == 0.4
    for bad, why in (("abc", "not a number"), ("0", "between 0.01 and 2"), ("2.5", "between 0.01 and 2"),
                     ("-1", "between")):
        with pytest.raises(ValueError, match=why):
            parse_quota(bad, cores=2)
    with pytest.raises(SystemExit):  # only with --prefill (argparse's error, before any broker)
        main(["--cpu-quota", "0.4"])
    assert "--cpu-quota limits the enrichers of --prefill" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--prefill", "--broker", "kafka", "--cpu-quota", "x"])
    assert "not a number of cores" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() != 0, reason="making a cgroup needs root")
def test_process_runs_in_its_own_limited_cgroup() -> None:
    cg = CpuCgroup(0.4, "test")
    try:
        assert cg.setting in ("cpu.max 40000 100000", "cpu.cfs_quota_us 40000 / cpu.cfs_period_us 100000")
        out = subprocess.run(cg.wrap(["cat", "/proc/self/cgroup"]), capture_output=True, text=True,
                             check=True, timeout=10).stdout
        assert f":{'/' + cg.path.name}\n" in out  # the exec'd process itself, not only its shell
        assert cg.throttled()["periods"] >= 0
    finally:
        cg.remove()
    assert not cg.path.exists()
