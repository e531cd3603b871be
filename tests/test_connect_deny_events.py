"""A refused connect is an event: a TracingPolicy's Override on ``tcp_connect`` refuses with EPERM
(cgroup/connect4+6), and the refusal reaches the JSON export as Tetragon's ``process_kprobe``
(``tcp_connect``, the policy's name, the sock argument, ``KPROBE_ACTION_OVERRIDE`` and the full
process), through the real pipeline (BPF → collector → broker → enricher → JSON).

The rule names a copy of the Python interpreter the test makes (matched by its inode) and a port
the test picked, so nothing else on this shared machine is refused.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Pipeline, wait_until

from bpf import records as r
from enricher.event_builder import EventBuilder
from enricher.policy_events import PolicyEventError, PolicyEvents
from enricher.process_cache import ProcessCache
from schemas import codec
from tetrapipe.broker import EmbeddedBroker

# connect to each host:port given; print the pid, then "ok" or the errno name per target
CLIENT = textwrap.dedent("""
    import errno, os, socket, sys
    print(os.getpid(), flush=True)
    for target in sys.argv[1:]:
        host, port = target.rsplit(":", 1)
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.connect((host, int(port)))
            print("ok", flush=True)
        except OSError as e:
            print(errno.errorcode.get(e.errno, str(e.errno)), flush=True)
        finally:
            s.close()
""")


def policy(port: int, binary: Path) -> str:
    return textwrap.dedent(f"""\
        apiVersion: cilium.io/v1alpha1
        kind: TracingPolicy
        metadata:
          name: deny-test-port
        spec:
          kprobes:
          - call: tcp_connect
            syscall: false
            args:
            - {{index: 0, type: sock, label: sk}}
            message: "outbound connection refused"
            tags: ["network"]
            selectors:
            - matchArgs:
              - {{index: 0, operator: DAddr, values: ["127.0.0.1"]}}
              - {{index: 0, operator: DPort, values: ["{port}"]}}
              matchBinaries:
              - {{operator: In, values: ["{binary}"]}}
              matchActions:
              - action: Override
                argError: -1
            - matchArgs:
              - {{index: 0, operator: DAddr, values: ["127.0.0.2"]}}
              - {{index: 0, operator: DPort, values: ["{port}"]}}
              matchBinaries:
              - {{operator: In, values: ["{binary}"]}}
              matchActions:
              - action: Override
                argError: -13
        """)


@pytest.fixture
def listener() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


def _refusals(p: Pipeline, pid: int) -> list[dict[str, Any]]:
    return [e["process_kprobe"] for e in p.exported()
            if "process_kprobe" in e and e["process_kprobe"].get("process", {}).get("pid") == pid
            and e["process_kprobe"].get("action") == "KPROBE_ACTION_OVERRIDE"]


@pytest.mark.kernel
def test_refused_connect_is_exported(bpf_ok: None, broker: EmbeddedBroker, tmp_path: Path,
                                     listener: int) -> None:
    denied = tmp_path / "python-denied"
    shutil.copy2(os.path.realpath("/usr/bin/python3"), denied)
    os.chmod(denied, 0o755)
    pol = tmp_path / "deny.yaml"
    pol.write_text(policy(listener, denied))
    os.chmod(pol, 0o644)
    p = Pipeline(broker.bootstrap, tmp_path)
    p.settings["tracing_policy"] = str(pol)
    try:
        p.start("enricher", "enricher")
        p.start("export-json", "export", "json")
        col = p.start("collector", "collector", wait=False).wait_ready(180)
        assert "connect enforcement attached" in (tmp_path / "collector.log").read_text()

        # 127.0.0.2 has no listener: refused there by the second selector with its argError
        targets = [f"127.0.0.1:{listener}", f"::ffff:127.0.0.1:{listener}", f"127.0.0.2:{listener}"]
        run = subprocess.run([str(denied), "-c", CLIENT, *targets], capture_output=True, text=True,
                             timeout=30)
        pid_s, *results = run.stdout.split()
        assert results == ["EPERM", "EPERM", "EACCES"], run.stderr
        pid = int(pid_s)
        # the same connects from another binary go through, and make no refusal event
        other = subprocess.run(["/usr/bin/python3", "-c", CLIENT, *targets], capture_output=True,
                               text=True, timeout=30)
        other_pid, *other_results = other.stdout.split()
        assert other_results == ["ok", "ok", "ECONNREFUSED"]

        wait_until(lambda: len(_refusals(p, pid)) == 3, 40, what="three refused-connect events")
        v4, v6, eacces = _refusals(p, pid)
        assert eacces["args"][0]["sock_arg"]["daddr"] == "127.0.0.2"
        for ev in (v4, v6):
            assert ev["function_name"] == "tcp_connect"
            assert ev["policy_name"] == "deny-test-port"
            assert ev["message"] == "outbound connection refused" and ev["tags"] == ["network"]
            assert "return" not in ev       # tcp_connect hooks have no return value here
            assert ev["process"]["binary"] == str(denied)
            assert ev["process"]["exec_id"] and ev["parent"]["pid"] == os.getpid()
            (arg,) = ev["args"]
            assert arg["label"] == "sk"
            s = arg["sock_arg"]
            assert (s["daddr"], s["dport"], s["protocol"], s["type"]) == \
                ("127.0.0.1", listener, "IPPROTO_TCP", "SOCK_STREAM")
            assert s["state"] == "TCP_CLOSE" and int(s["cookie"]) > 0
        assert v4["args"][0]["sock_arg"]["family"] == "AF_INET"
        # an AF_INET6 socket to ::ffff:127.0.0.1 is matched (and reported) as IPv4
        assert v6["args"][0]["sock_arg"]["family"] == "AF_INET"
        assert not _refusals(p, int(other_pid))
        # counted, as before
        wait_until(lambda: col.metric("tetrapipe_tracingpolicy_selector_actions_total", action="override",
                                      policy="deny-test-port") == 3, 20, what="override counter")
    finally:
        p.stop()


def _catalog(ret: bool = False) -> r.PolicyRecord:
    import json

    doc = {"policy_id": 77, "name": "no-evil", "namespace": "", "mode": "enforce", "state": "loaded",
           "hooks": [{"id": 0, "kind": "kprobe", "function_name": "tcp_connect", "return": ret,
                      "args": [{"index": 0, "type": "sock", "label": ""}], "message": "", "tags": []}]}
    return r.decode(r.encode_policy(1, json.dumps(doc).encode()))


def test_connect_deny_record_to_event() -> None:
    """Without the kernel: the record through the enricher's builder and the Avro schema."""
    pe = PolicyEvents()
    b = EventBuilder(ProcessCache(64))
    pe.on_catalog(_catalog(), "n1")
    raw = r.encode_connect_deny(4242, 4243, 10**9, 77, 0, 10, 443, bytes(15) + b"\1",
                                saddr=bytes(16), sport=0, cookie=0xFFFF888012345678, netns=4026531840)
    ev = pe.on_connect_deny(r.decode(raw), "n1", 0, b)
    back = codec.decode("event", codec.encode("event", ev))
    k = back["process_kprobe"]
    assert k["function_name"] == "tcp_connect" and k["policy_name"] == "no-evil"
    assert k["action"] == "KPROBE_ACTION_OVERRIDE" and not k.get("return")  # the hook asks no return
    s = k["args"][0]["sock_arg"]
    assert (s["family"], s["daddr"], s["dport"], s["saddr"], s["state"]) == \
        ("AF_INET6", "::1", 443, "::", "TCP_CLOSE")
    assert k["process"]["pid"] == 4242 and k["process"]["tid"] == 4243
    with pytest.raises(r.RecordError):
        r.decode(raw[:-1])
    with pytest.raises(PolicyEventError, match="unknown policy id 78"):
        pe.on_connect_deny(r.decode(r.encode_connect_deny(1, 1, 1, 78, 0, 2, 80, b"\x7f\0\0\1")), "n1", 0, b)
    # a hook that asks for its return value (hook records from elsewhere may) gets -EPERM
    pe.on_catalog(_catalog(ret=True), "n1")
    k = pe.on_connect_deny(r.decode(raw), "n1", 0, b)["process_kprobe"]
    assert k["return"] == {"label": "", "int_arg": -1}


def test_connect_rule_names_its_policy_hook_and_selector() -> None:
    """The compiled rule carries what the refusal record names; NoPost refuses without a record."""
    from collector.policy import compiler, parser

    text = textwrap.dedent("""\
        apiVersion: cilium.io/v1alpha1
        kind: TracingPolicy
        metadata:
          name: two-hooks
        spec:
          kprobes:
          - call: tcp_close
            syscall: false
            args:
            - {index: 0, type: sock}
          - call: tcp_connect
            syscall: false
            args:
            - {index: 0, type: sock}
            selectors:
            - matchArgs:
              - {index: 0, operator: DPort, values: ["8099"]}
              matchActions:
              - action: Override
                argError: -1
            - matchArgs:
              - {index: 0, operator: DPort, values: ["8100"]}
              matchActions:
              - action: Override
                argError: -1
              - action: NoPost
        """)
    (pol,) = parser.parse_text(text, "t.yaml")
    comp = compiler.compile_policy(pol, 12345, [])
    first, second = comp.connect_rules
    assert (first.policy_id, first.hook_id, first.selector, first.action, first.post, first.error) == \
        (12345, 1, 0, 5, True, -1)
    assert (second.hook_id, second.selector, second.dports, second.post) == (1, 1, [(8100, 8100)], False)


def test_connect_deny_layout_matches_records_h(tmp_path: Path) -> None:
    """records.py's CONNECT_DENY_BODY has the offsets gcc gives struct tp_connect_deny."""
    fields = ["policy_id", "hook_id", "selector", "action", "ret", "state", "pad", "family", "type",
              "protocol", "sport", "dport", "netns", "mark", "priority", "cookie", "saddr", "daddr"]
    src = tmp_path / "layout.c"
    src.write_text("#include <linux/types.h>\n#include <stddef.h>\n#include <stdio.h>\n"
                   f'#include "{Path(r.__file__).with_name("records.h")}"\n'
                   "int main(void) {\n  printf(\"%zu\\n\", sizeof(struct tp_connect_deny));\n"
                   + "".join(f'  printf("%zu\\n", offsetof(struct tp_connect_deny, {f}));\n' for f in fields)
                   + "  return 0;\n}\n")
    exe = tmp_path / "layout"
    subprocess.run(["gcc", "-o", str(exe), str(src)], check=True)
    size, *offsets = [int(x) for x in subprocess.run([str(exe)], capture_output=True, text=True,
                                                     check=True).stdout.split()]
    assert size == r.CONNECT_DENY_SIZE
    codes = r.CONNECT_DENY_BODY.format.lstrip("<")
    codes = codes.replace("16s", "s")   # one code per field
    expect = []
    fmt = "<"
    for c in codes:
        expect.append(r.HEADER.size + struct.calcsize(fmt))
        fmt += "16s" if c == "s" else c
    assert offsets == expect
