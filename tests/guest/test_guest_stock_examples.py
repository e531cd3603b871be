"""examples/policies/stock-kernels/ inside a stock kernel: each policy fires on its positive case
and stays silent on its negative one (or denies, for exec-control). Loaded verbatim through the
collector's PolicyManager (one compile each); hook records checked field by field.

The egress case needs a destination outside 127.0.0.0/8: the guest adds 10.200.0.1 to its own
loopback device (the VM's network, nothing of the host's) and connects there.
"""

from __future__ import annotations

import asyncio
import errno
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpf import records
from bpf.names import ACTION_NUMBERS
from collector import kernel_features, loader, procfs
from collector.drain import RecordQueue
from collector.policy.manager import Loaded, PolicyManager
from guest.kfunc_common import Hooks, config_for_btf_tree, load_or_known_limit

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples" / "policies" / "stock-kernels"
TAG = uuid.uuid4().hex[:8]
ETC_FILE = Path(f"/etc/tp-fi-{TAG}")
SCRATCH = Path(f"/tmp/tp-ex-{TAG}")
PY = sys.executable
FAR = "10.200.0.1"


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hooks, dict[str, Loaded]]]:
    tmp = tmp_path_factory.mktemp("examples")
    config_for_btf_tree(tmp)
    loader.prepare(tmp / "kernel-headers")
    ETC_FILE.write_text("x\n")
    SCRATCH.mkdir()
    shutil.copy("/usr/bin/true", SCRATCH / "true")
    subprocess.run(["ip", "addr", "add", f"{FAR}/32", "dev", "lo"], check=True)
    mgr = PolicyManager(RecordQueue(1_000_000, asyncio.new_event_loop()), procfs.host_namespaces(),
                        kernel_features.probe())
    try:
        loaded = {}
        for name in ("file-integrity", "exec-control", "kernel-tampering", "egress"):
            (lp,) = load_or_known_limit(mgr, "load_file", str(EXAMPLES / f"{name}.yaml"))
            loaded[name] = lp
        yield Hooks(mgr), loaded
    finally:
        mgr.stop()
        ETC_FILE.unlink(missing_ok=True)
        shutil.rmtree(SCRATCH, ignore_errors=True)
        subprocess.run(["ip", "addr", "del", f"{FAR}/32", "dev", "lo"], check=False)


def _child(code: str) -> tuple[int, int]:
    p = subprocess.Popen([PY, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return p.pid, p.wait(timeout=60)


def test_file_integrity_fires_on_etc_writes_and_truncates_only(examples) -> None:
    hooks, lps = examples
    lp = lps["file-integrity"]
    assert [h.mechanism for h in lp.compiled.hooks] == ["fexit", "fentry"]
    other = SCRATCH / "other"
    other.write_text("x\n")
    quiet, rc = _child(f"f = open({str(other)!r}, 'r+'); f.write('y'); f.close(); "
                       f"open({str(ETC_FILE)!r}).read()")   # a write elsewhere, a read of /etc
    assert rc == 0
    pid, rc = _child(f"f = open({str(ETC_FILE)!r}, 'r+'); f.write('y'); f.close()\n"
                     f"import os; os.truncate({str(ETC_FILE)!r}, 0)")
    assert rc == 0
    (w, *_) = hooks.wait(lp, 0, pid)
    assert w.flags & 2 and w.ret == 0 and w.action == ACTION_NUMBERS["Post"]
    assert [a.type for a in w.args] == [records.ARG_FILE, records.ARG_INT]
    assert w.args[0].data.decode() == str(ETC_FILE) and int.from_bytes(w.args[1].data, "little") & 2
    (t, *_) = hooks.wait(lp, 1, pid)
    assert [a.type for a in t.args] == [records.ARG_PATH] and t.args[0].data.decode() == str(ETC_FILE)
    assert hooks.of(lp, 0, quiet) == [] and hooks.of(lp, 1, quiet) == []


def test_exec_control_denies_exec_from_tmp_and_lets_others_run(examples) -> None:
    hooks, lps = examples
    lp = lps["exec-control"]
    assert lp.compiled.hooks[0].mechanism == "lsm"
    denied = SCRATCH / "true"
    pid, rc = _child(f"import os\ntry:\n    os.execv({str(denied)!r}, ['true'])\n"
                     "except OSError as e:\n    raise SystemExit(e.errno)")
    assert rc == errno.EPERM
    (ev, *_) = hooks.wait(lp, 0, pid)
    assert ev.action == ACTION_NUMBERS["Override"] and ev.args[0].type == records.ARG_BINPRM
    assert ev.args[0].data.decode() == str(denied)
    ok = subprocess.Popen(["/usr/bin/true"])
    assert ok.wait(timeout=30) == 0
    time.sleep(0.5)
    assert hooks.of(lp, 0, ok.pid) == []


def test_kernel_tampering_reports_module_requests_and_bpf_loads(examples) -> None:
    hooks, lps = examples
    lp = lps["kernel-tampering"]
    # a socket family nobody built (AF_IUCV, s390 only): the kernel asks for module net-pf-32
    pid, _ = _child("import socket\ntry:\n    socket.socket(32, socket.SOCK_STREAM)\nexcept OSError:\n    pass")
    (m, *_) = hooks.wait(lp, 0, pid)
    assert m.args[0].type == records.ARG_STRING and m.args[0].data.decode() == "net-pf-32"
    bpf = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nattr = ctypes.create_string_buffer(128)\n"
           "libc.syscall(321, {cmd}, attr, 128)")
    quiet, _ = _child(bpf.format(cmd=0))     # BPF_MAP_CREATE: not a program load
    pid, _ = _child(bpf.format(cmd=5))       # BPF_PROG_LOAD (refused: empty attribute)
    (b, *_) = hooks.wait(lp, 1, pid)
    assert b.args[0].type == records.ARG_INT and int.from_bytes(b.args[0].data, "little") == 5
    assert hooks.of(lp, 1, quiet) == []


def _serve(host: str) -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind((host, 0))
    srv.listen(4)

    def accept() -> None:
        for _ in range(2):
            try:
                c, _ = srv.accept()
                c.recv(100)
                c.close()
            except OSError:
                return
    threading.Thread(target=accept, daemon=True).start()
    return srv, srv.getsockname()[1]


def test_egress_reports_connects_and_sends_off_loopback_only(examples) -> None:
    hooks, lps = examples
    lp = lps["egress"]
    assert [h.mechanism for h in lp.compiled.hooks] == ["tracepoint", "fentry"]
    srv, port = _serve("0.0.0.0")
    try:
        send = "import socket\ns = socket.create_connection(({host!r}, {port}))\ns.sendall(b'hello')\ns.close()"
        quiet, rc = _child(send.format(host="127.0.0.1", port=port))
        assert rc == 0
        pid, rc = _child(send.format(host=FAR, port=port))
        assert rc == 0
        (c, *_) = hooks.wait(lp, 0, pid)
        (s, *_) = hooks.wait(lp, 1, pid)
    finally:
        srv.close()
    from enricher.network_events import sock_arg_from_bytes

    assert c.args[0].type == records.ARG_SOCK
    sc = sock_arg_from_bytes(c.args[0].data)
    assert (sc["daddr"], sc["dport"], sc["protocol"]) == (FAR, port, "IPPROTO_TCP")
    assert [a.type for a in s.args] == [records.ARG_SOCK, records.ARG_SIZE]
    ss = sock_arg_from_bytes(s.args[0].data)
    assert (ss["daddr"], ss["dport"]) == (FAR, port) and int.from_bytes(s.args[1].data, "little") == 5
    assert hooks.of(lp, 0, quiet) == [] and hooks.of(lp, 1, quiet) == []
