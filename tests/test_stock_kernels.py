"""Every test under tests/guest/, inside Debian's stock 6.1 and 6.12 kernels booted under qemu.

One boot per kernel (scripts/vm/runner.py): the guest runs ``pytest tests/guest`` with a junit
report into the results share; here each kernel's run must have passed every guest test, and a
failure names the guest tests that failed with their output. The kernels come from
``scripts/setup-vmkernels.sh``. ``TETRAPIPE_VM_TESTS`` narrows the guest selection (pytest
arguments, e.g. ``tests/guest/test_guest_pipeline.py -k exec``); ``TETRAPIPE_VM_TIMEOUT`` bounds
one boot (seconds, default 2700).

Both kernels boot at once (each guest is one emulation thread, ``-accel tcg,thread=single``, see
scripts/vm/runner.py), so the VM part takes the longer guest's time, not the sum;
``TETRAPIPE_VM_ONE_AT_A_TIME=1`` boots them in turn.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys
import threading
import xml.etree.ElementTree as ET
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import IN_CI, skip_or_fail

REPO = Path(__file__).resolve().parent.parent
KERNELS = ("6.1", "6.12")
TIMEOUT = float(os.environ.get("TETRAPIPE_VM_TIMEOUT", "2700"))


def _runner():  # scripts/vm/runner.py is standalone (no tetrapipe imports), loaded by path
    spec = importlib.util.spec_from_file_location("tetrapipe_vm_runner", REPO / "scripts" / "vm" / "runner.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


vm = _runner()


def _guest_command() -> str:
    selection = shlex.split(os.environ.get("TETRAPIPE_VM_TESTS", "tests/guest"))
    python = REPO / ".venv" / "bin" / "python"
    return shlex.join([
        str(python), "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEs", "--durations=0",
        f"--junitxml={vm.GUEST_RESULTS}/junit.xml", "-o", "junit_logging=all", *selection,
    ])  # fmt: skip


def _cases(junit: Path) -> list[tuple[str, str, str, float]]:
    """(test id, outcome, details, seconds) per test case of a junit report."""
    out = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome, details = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = tag
                extra = "".join((case.findtext(t) or "") for t in ("system-out", "system-err"))
                details = f"{el.get('message', '')}\n{el.text or ''}\n{extra}".strip()
                break
        out.append((name, outcome, details, float(case.get("time") or 0)))
    return out


_boots: dict[str, Future] = {}
_boots_lock = threading.Lock()


def _boot(kernel, results: Path):  # -> vm.BootResult
    env = {"TETRAPIPE_VM_GUEST": "1", "TETRAPIPE_VM_RELEASE": kernel.release, "CI": "true" if IN_CI else ""}
    return vm.boot(kernel, _guest_command(), results=results, env=env, cwd=str(REPO), timeout=TIMEOUT)


@pytest.fixture(scope="session")
def guest_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Future]:
    """Every selected kernel's boot, started together at the first test that needs one."""
    wanted = [item.callspec.params["name"] for item in request.session.items
              if item.originalname == "test_guest_suite_in_stock_kernel" and hasattr(item, "callspec")]
    one_at_a_time = os.environ.get("TETRAPIPE_VM_ONE_AT_A_TIME") == "1"
    pool = ThreadPoolExecutor(max_workers=1 if one_at_a_time else max(1, len(wanted)))
    request.addfinalizer(lambda: pool.shutdown(wait=False, cancel_futures=True))
    prepared = vm.kernels()
    with _boots_lock:
        for name in wanted:
            if name in prepared and name not in _boots:
                _boots[name] = pool.submit(_boot, prepared[name], tmp_path_factory.mktemp(f"guest-{name}"))
    return _boots


@pytest.mark.timeout(2 * TIMEOUT + 240)  # may wait for the other guest's boot when one at a time
@pytest.mark.parametrize("name", KERNELS)
def test_guest_suite_in_stock_kernel(name: str, guest_runs: dict[str, Future]) -> None:
    if name not in guest_runs:
        skip_or_fail(f"Debian {name} kernel not prepared under {vm.CACHE}: run scripts/setup-vmkernels.sh")
    res = guest_runs[name].result()
    results = res.results
    print(res.describe())
    print(res.output[-6000:])
    junit = results / "junit.xml"
    tail = f"serial console ({results / 'serial.log'}):\n{res.serial[-3000:]}\noutput:\n{res.output[-4000:]}"
    assert not res.timed_out, f"{res.describe()}: the guest did not finish within {TIMEOUT}s\n{tail}"
    assert junit.is_file(), f"{res.describe()}: no junit report from the guest\n{tail}"
    cases = _cases(junit)
    assert cases, f"{res.describe()}: the guest ran no tests\n{tail}"
    bad = [c for c in cases if c[1] in ("failure", "error")]
    report = "\n\n".join(f"--- {n} ({o}, {t:.1f}s)\n{d[-3000:]}" for n, o, d, t in bad)
    assert not bad, f"{res.describe()}: {len(bad)} of {len(cases)} guest tests failed:\n{report}"
    assert res.rc == 0, f"{res.describe()}: guest pytest exited {res.rc}\n{tail}"
