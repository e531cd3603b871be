"""cgroup/connect4 + connect6 enforcement (collector/connect_deny.py, bpf/connect_deny.c).

The programs attach to a cgroup the test makes under the cgroup2 root, and only the test's child
processes move into it, so nobody else's connections on this shared machine are touched. Real
listeners on loopback; a refused connect() must fail with EPERM, an allowed one must succeed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from collector.connect_deny import ConnectDeny, ConnectRule, RuleError, cgroup2_root, rule_from_selector
from tests.conftest import skip_or_fail

# child: join the cgroup, then connect to each host:port given; print "ok" or the errno name
CHILD = r"""
import errno, os, socket, sys
open(os.path.join(sys.argv[1], "cgroup.procs"), "w").write(str(os.getpid()))
for target in sys.argv[2:]:
    host, port = target.rsplit(":", 1)
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.connect((host, int(port)))
        print("ok")
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e.errno)))
    finally:
        s.close()
"""


@pytest.fixture(scope="module")
def deny() -> Iterator[ConnectDeny]:
    try:
        d = ConnectDeny()
    except Exception as exc:  # noqa: BLE001 - the reason is reported
        skip_or_fail(f"connect4/connect6 programs did not load: {exc}")
    yield d
    d.close()


@pytest.fixture(scope="module")
def cgroup(deny: ConnectDeny) -> Iterator[Path]:
    root = cgroup2_root()
    if root is None:
        skip_or_fail("no cgroup v2 hierarchy mounted")
    cg = root / f"tp-test-connect-{uuid.uuid4().hex[:8]}"
    cg.mkdir()
    deny.attach(cg)
    yield cg
    deny.detach(cg)
    # the children have exited: the cgroup is empty
    for _ in range(50):
        try:
            cg.rmdir()
            break
        except OSError:
            time.sleep(0.1)


@pytest.fixture(scope="module")
def listeners() -> Iterator[dict[str, int]]:
    socks = []
    ports = {}
    for name, fam, host in (("v4", socket.AF_INET, "127.0.0.1"), ("v4b", socket.AF_INET, "127.0.0.1"),
                            ("v6", socket.AF_INET6, "::1")):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.bind((host, 0))
        s.listen(64)
        socks.append(s)
        ports[name] = s.getsockname()[1]
    yield ports
    for s in socks:
        s.close()


def connect_from(cgroup: Path, *targets: str, argv0: list[str] | None = None) -> list[str]:
    cmd = (argv0 or [sys.executable, "-c", CHILD]) + [str(cgroup), *targets]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.split()


def test_port_rule_refuses_with_eperm_and_leaves_other_ports(deny: ConnectDeny, cgroup: Path,
                                                             listeners: dict[str, int]) -> None:
    deny.set_rules([ConnectRule(dports=[(listeners["v4"], listeners["v4"])])])
    got = connect_from(cgroup, f"127.0.0.1:{listeners['v4']}", f"127.0.0.1:{listeners['v4b']}")
    assert got == ["EPERM", "ok"]
    assert deny.denied() == [1]
    # outside the cgroup nothing is enforced
    s = socket.create_connection(("127.0.0.1", listeners["v4"]), timeout=5)
    s.close()


def test_cidr_and_negation_v4_v6(deny: ConnectDeny, cgroup: Path, listeners: dict[str, int]) -> None:
    # NotDAddr 10.0.0.0/8: everything outside 10/8 refused (IPv4 only, family set)
    deny.set_rules([ConnectRule(family=socket.AF_INET, daddrs=["10.0.0.0/8"], not_daddrs=True)])
    got = connect_from(cgroup, f"127.0.0.1:{listeners['v4']}", f"::1:{listeners['v6']}")
    assert got == ["EPERM", "ok"]
    # DAddr ::1/128 refuses the IPv6 loopback only; 127.0.0.0/8 via an IPv4-mapped v6 socket
    deny.set_rules([ConnectRule(daddrs=["::1"]), ConnectRule(daddrs=["127.0.0.0/8"],
                                                             dports=[(listeners["v4b"], listeners["v4b"])])])
    got = connect_from(cgroup, f"::1:{listeners['v6']}", f"127.0.0.1:{listeners['v4']}",
                       f"::ffff:127.0.0.1:{listeners['v4b']}")
    assert got == ["EPERM", "ok", "EPERM"]
    assert deny.denied() == [1, 1]


def test_binary_rule_uses_the_executable(deny: ConnectDeny, cgroup: Path, listeners: dict[str, int],
                                         tmp_path: Path) -> None:
    bash = shutil.which("bash")
    assert bash
    port = listeners["v4"]
    bash_child = [bash, "-c", f'echo $$ > "$0/cgroup.procs"; (exec 3<>/dev/tcp/127.0.0.1/{port}) '
                  '2>/dev/null && echo ok || echo refused']
    # NotIn python: bash is refused, python allowed
    deny.set_rules([rule_from_selector(
        [SimpleNamespace(operator="DPort", values=[str(port)])],
        [SimpleNamespace(operator="NotIn", values=[os.path.realpath(sys.executable)])])])
    assert connect_from(cgroup, f"127.0.0.1:{port}") == ["ok"]
    assert subprocess.run(bash_child + [str(cgroup)], capture_output=True, text=True,
                          timeout=30).stdout.split() == ["refused"]
    # In bash: the reverse
    deny.set_rules([rule_from_selector([SimpleNamespace(operator="DPort", values=[str(port)])],
                                       [SimpleNamespace(operator="In", values=[bash])])])
    assert connect_from(cgroup, f"127.0.0.1:{port}") == ["ok"]
    assert subprocess.run(bash_child + [str(cgroup)], capture_output=True, text=True,
                          timeout=30).stdout.split() == ["refused"]
    assert deny.denied() == [1]
    deny.set_rules([])
    assert subprocess.run(bash_child + [str(cgroup)], capture_output=True, text=True,
                          timeout=30).stdout.split() == ["ok"]


def test_selector_translation_and_refusals(deny: ConnectDeny) -> None:
    a = SimpleNamespace
    r = rule_from_selector([a(operator="NotDAddr", values=["127.0.0.1", "10.0.0.0/8"]),
                            a(operator="DPort", values=["80", "8000:8080"]),
                            a(operator="Protocol", values=["IPPROTO_TCP"]),
                            a(operator="Family", values=["AF_INET"]),
                            a(operator="DPortPriv", values=[])])
    assert (r.daddrs, r.not_daddrs, r.dports, r.protocol, r.family, r.dport_priv) == (
        ["127.0.0.1", "10.0.0.0/8"], True, [(80, 80), (8000, 8080)], 6, socket.AF_INET, 1)
    with pytest.raises(RuleError, match="SAddr"):
        rule_from_selector([a(operator="SAddr", values=["1.2.3.4"])])
    with pytest.raises(RuleError, match="not-an-address"):
        rule_from_selector([a(operator="DAddr", values=["not-an-address"])])
    with pytest.raises(RuleError, match="lo:hi"):
        rule_from_selector([a(operator="DPort", values=["http"])])
    with pytest.raises(RuleError, match="No such file"):
        rule_from_selector([], [a(operator="In", values=["/nonexistent/tp-bin"])])
    # a bad rule set leaves the loaded rules untouched
    deny.set_rules([ConnectRule(dports=[(1, 1)])])
    with pytest.raises(RuleError):
        deny.set_rules([ConnectRule(), ConnectRule(daddrs=["300.1.1.1"])])
    assert deny.rules == [ConnectRule(dports=[(1, 1)])]
