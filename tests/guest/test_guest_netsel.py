"""Network selectors and socket tracking at kernel functions, inside stock Debian 6.12.

One policy (one bcc compile per boot) in the shapes of Tetragon's own examples:
``tcp_connect`` with DAddr/DPort (tcp-connect), ``security_socket_connect`` with a ``socket``
Protocol and ``sockaddr`` Family/DAddr/DPort (security-socket-connect-block-others), and socket
tracking (datagram-with-sock-tracking): ``sk_alloc`` with ``returnArgAction: TrackSock``,
``__sk_free`` with the ``UntrackSock`` action, and ``__udp_enqueue_schedule_skb`` (a datagram
queued to its socket, in the sender's softirq) with skb DAddr/Protocol/DPort. A receiver started
from a copied python binary owns the tracked socket: the datagram that reaches it is reported as
the receiver's, though the sender's context queued it; a datagram to an untracked socket is not.
Every case has a near miss that must stay silent.

Debian 6.1 is left out of CI for its time budget (one more compile: 80-160 s there); run with
6.1 allowed on 2026-12-04 the four tests passed there too (same policy, same C).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpf import records
from collector import kernel_features, loader, procfs
from collector.drain import RecordQueue
from collector.policy.manager import Loaded, PolicyManager
from enricher import kernel_args, network_events
from guest.kfunc_common import Hooks

pytestmark = pytest.mark.skipif(not os.uname().release.startswith("6.12."),
                                reason="network selectors at kernel functions are tested on Debian 6.12 (module doc)")

ROOT = Path(f"/tmp/tpn-{uuid.uuid4().hex[:8]}")
RX = ROOT / "netsel-rx"


def policy(tport: int, uports: list[int]) -> str:
    return f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: netsel-guest
spec:
  kprobes:
  - call: tcp_connect
    args: [{{index: 0, type: sock}}]
    selectors:
    - matchArgs:
      - {{index: 0, operator: DAddr, values: ["127.0.0.2/32", "2001:db8::/32"]}}
      - {{index: 0, operator: DPort, values: [{tport}]}}
  - call: security_socket_connect
    args: [{{index: 0, type: socket}}, {{index: 1, type: sockaddr}}, {{index: 2, type: int}}]
    selectors:
    - matchArgs:
      - {{index: 0, operator: Protocol, values: [IPPROTO_TCP]}}
      - {{index: 1, operator: Family, values: [AF_INET, AF_INET6]}}
      - {{index: 1, operator: DAddr, values: ["127.0.0.2"]}}
      - {{index: 1, operator: SPort, values: [{tport}]}}
  - call: sk_alloc
    return: true
    args: [{{index: 1, type: int, label: family}}]
    returnArg: {{type: sock}}
    returnArgAction: TrackSock
    selectors:
    - matchArgs: [{{index: 1, operator: Equal, values: [2]}}]
      matchBinaries: [{{operator: In, values: ["{RX}"]}}]
  - call: __sk_free
    args: [{{index: 0, type: sock}}]
    selectors:
    - matchArgs: [{{index: 0, operator: Family, values: [AF_INET]}}]   # the port is gone once unhashed
      matchActions: [{{action: UntrackSock, argSock: 0}}]
  - call: __udp_enqueue_schedule_skb
    args: [{{index: 0, type: sock}}, {{index: 1, type: skb}}]
    selectors:
    - matchArgs:
      - {{index: 1, operator: DAddr, values: ["127.0.0.1/32"]}}
      - {{index: 1, operator: Protocol, values: [IPPROTO_UDP]}}
      - {{index: 1, operator: DPort, values: [{uports[0]}, {uports[1]}]}}
"""


def _port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run() -> Iterator[dict]:
    loader.prepare()
    ROOT.mkdir(parents=True, exist_ok=True)
    shutil.copy(sys.executable, RX)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", 0))
    tcp.listen(8)
    tport = tcp.getsockname()[1]
    uports = [_port(socket.SOCK_DGRAM), _port(socket.SOCK_DGRAM)]
    mgr = PolicyManager(RecordQueue(1_000_000, asyncio.new_event_loop()), procfs.host_namespaces(),
                        kernel_features.probe())
    untracked = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # this process's: not tracked
    try:
        t0 = time.monotonic()
        (lp,) = mgr.load_text(policy(tport, uports), "netsel.yaml")
        print(f"netsel policy compiled and loaded in {time.monotonic() - t0:.1f}s")
        untracked.bind(("127.0.0.1", uports[1]))
        rx = subprocess.Popen([str(RX), "-c", "import socket, sys\n"
                               "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                               f"s.bind(('127.0.0.1', {uports[0]}))\nprint('ready', flush=True)\n"
                               "print(s.recv(64).decode(), flush=True)\n"],
                              stdout=subprocess.PIPE, text=True)
        assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
        tx = subprocess.run([sys.executable, "-c", "import os, socket\n"
                             "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                             f"u.sendto(b'to-tracked', ('127.0.0.1', {uports[0]}))\n"
                             f"u.sendto(b'to-untracked', ('127.0.0.1', {uports[1]}))\n"
                             f"for a in ('127.0.0.2', '127.0.0.3'):\n"
                             f"    c = socket.create_connection((a, {tport})); c.close()\n"
                             f"d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                             f"d.connect(('127.0.0.2', {tport}))\n"
                             "print(os.getpid())\n"], capture_output=True, text=True, timeout=120)
        assert tx.returncode == 0, tx.stderr
        assert rx.stdout.readline().strip() == "to-tracked"
        assert rx.wait(timeout=60) == 0
        assert untracked.recv(64) == b"to-untracked"
        time.sleep(1.0)
        yield {"hooks": Hooks(mgr), "lp": lp, "rx": rx.pid, "tx": int(tx.stdout.split()[-1]),
               "tport": tport, "uports": uports}
    finally:
        untracked.close()
        tcp.close()
        mgr.stop()
        shutil.rmtree(ROOT, ignore_errors=True)


def _sock(body: records.HookBody, i: int = 0) -> dict:
    return network_events.sock_arg_from_bytes(body.args[i].data)


def test_policy_loads_on_kernel_functions(run) -> None:
    lp: Loaded = run["lp"]
    mechs = [h.mechanism for h in lp.compiled.hooks]
    assert mechs[0] == "tracepoint" and set(mechs[1:]) <= {"fentry", "fexit", "kprobe", "kretprobe"}, mechs
    assert mechs[2] in ("fexit", "kretprobe"), mechs


def test_tcp_connect_daddr_dport(run) -> None:
    got = run["hooks"].of(run["lp"], 0, run["tx"])
    assert len(got) == 1, got     # 127.0.0.2 only, not 127.0.0.3
    s = _sock(got[0])
    assert (s["family"], s["protocol"], s["daddr"], s["dport"], s["saddr"]) == \
        ("AF_INET", "IPPROTO_TCP", "127.0.0.2", run["tport"], "127.0.0.1"), s


def test_security_socket_connect_protocol_family_daddr(run) -> None:
    got = run["hooks"].of(run["lp"], 1, run["tx"])
    assert len(got) == 1, got     # TCP to 127.0.0.2; not TCP to 127.0.0.3, not UDP to 127.0.0.2
    b = got[0]
    assert _sock(b, 0)["protocol"] == "IPPROTO_TCP" and _sock(b, 0)["family"] == "AF_INET"
    assert kernel_args.sockaddr(b.args[1].data) == {"family": "AF_INET", "addr": "127.0.0.2", "port": run["tport"]}


def test_track_sock_attributes_softirq_work_to_the_owner(run) -> None:
    h, lp = run["hooks"], run["lp"]
    assert h.of(lp, 2, run["rx"]), "sk_alloc of the receiver's socket (TrackSock) not reported"
    h.drain()
    queued = {_sock(b)["sport"]: p for p, b in h.seen if b.policy_id == lp.policy_id and b.hook_id == 4}
    tracked, untracked = run["uports"]
    assert set(queued) == {tracked, untracked}, queued
    assert queued[tracked] == run["rx"], (queued, run)        # the tracked socket's datagram: its owner's
    assert queued[untracked] != run["rx"], (queued, run)      # an untracked socket's: whoever queued it
    # freed after an RCU grace period, in whatever context: reported as the owner's, then untracked
    assert h.wait(lp, 3, run["rx"], timeout=20), "__sk_free of the tracked socket (UntrackSock) not reported"
