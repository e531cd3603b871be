"""Typed kernel-object arguments at kernel functions and LSM hooks, inside stock Debian 6.1 and 6.12.

One policy (one bcc compile per boot), its hooks on the functions Tetragon's own examples use:
``commit_creds`` (cred), ``security_capset`` (cap_effective, cap_inheritable, kernel_cap_t),
``security_capable`` (user_namespace, capability), ``bpf_check`` (bpf_attr),
``security_bpf_map_create`` (6.1: ``security_bpf_map_alloc``; bpf_map),
``security_perf_event_alloc`` (perf_event), ``mod_sysfs_setup`` (module, load_info),
``generic_perform_write`` (kiocb with its permission, iov_iter), ``security_socket_connect``
(sockaddr), ``ip_local_deliver`` (skb with the sec_path of an IPsec packet) and an ``lsmhooks:``
``bprm_check_security`` (linux_binprm with its permission → a ``process_lsm`` event). Each is
triggered by a child process doing the real thing (setuid, capset, sethostname in the initial and
in a new user namespace, bpf(), perf_event_open of a kprobe, init_module of Debian's signed
``dummy`` module, write/writev, connect, ESP between two network namespaces, exec); the records go
through the enricher's code and Tetragon's JSON, and are parsed by Tetragon's protobuf.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import json_format

from bpf import records
from collector import kernel_features, loader, procfs
from collector.drain import RecordQueue
from collector.policy.manager import Loaded, PolicyManager
from enricher.event_builder import EventBuilder
from enricher.policy_events import PolicyEvents
from enricher.process_cache import ProcessCache
from exporters import protojson
from guest.kfunc_common import config_for_btf_tree
from schemas import codec
from tetragon import events_pb2

ROOT = Path(f"/tmp/tpa-{uuid.uuid4().hex[:8]}")
PY = sys.executable
CAP_CHOWN, CAP_SETGID, CAP_SETUID, CAP_NET_RAW = 1 << 0, 1 << 6, 1 << 7, 1 << 13
ACTOR_CAPS = CAP_CHOWN | CAP_SETGID | CAP_SETUID | CAP_NET_RAW   # kept by capset (setgid/setuid follow)


def _kernel_has(fn: str) -> bool:
    with open("/proc/kallsyms") as f:
        return any(line.rstrip("\n").split(" ")[2:3] == [fn] for line in f)


# the map's LSM hook: security_bpf_map_alloc until 6.8, security_bpf_map_create (with attr, token) since
MAP_HOOK = "security_bpf_map_create" if _kernel_has("security_bpf_map_create") else "security_bpf_map_alloc"


def policy() -> str:
    return f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: kargs
spec:
  kprobes:
  - call: commit_creds
    args: [{{index: 0, type: cred, label: new}}]
  - call: security_capset
    args:
    - {{index: 0, type: cred}}
    - {{index: 2, type: cap_effective, label: eff}}
    - {{index: 3, type: cap_inheritable, label: inh}}
    - {{index: 4, type: kernel_cap_t, label: prm}}
    selectors:
    - matchArgs: [{{index: 2, operator: Mask, values: ["{CAP_NET_RAW}"]}}]
  - call: security_capable
    args: [{{index: 1, type: user_namespace, label: ns}}, {{index: 2, type: capability, label: cap}}]
    selectors:
    - matchArgs: [{{index: 2, operator: Equal, values: ["21"]}}]
  - call: bpf_check
    args: [{{index: 1, type: bpf_attr, label: attr}}]
  - call: {MAP_HOOK}
    args: [{{index: 0, type: bpf_map, label: map}}]
  - call: security_perf_event_alloc
    args: [{{index: 0, type: perf_event, label: event}}]
  - call: mod_sysfs_setup
    args: [{{index: 0, type: module, label: mod}}, {{index: 1, type: load_info, label: info}}]
  - call: generic_perform_write
    args: [{{index: 0, type: kiocb, label: iocb}}, {{index: 1, type: iov_iter, label: iter}}]
    selectors:
    - matchArgs: [{{index: 0, operator: Postfix, values: ["/kargs-iov-file"]}}]
  - call: security_socket_connect
    args: [{{index: 1, type: sockaddr, label: addr}}]
  - call: ip_local_deliver
    args: [{{index: 0, type: skb, label: skb}}]
  lsmhooks:
  - hook: bprm_check_security
    args: [{{index: 0, type: linux_binprm, label: bprm}}]
    selectors:
    - matchArgs: [{{index: 0, operator: Postfix, values: ["/kargs-lsm-true"]}}]
"""


class Events:
    """Hook records of the loaded policy → Tetragon JSON events, as the enricher makes them."""

    def __init__(self, mgr: PolicyManager) -> None:
        self.mgr, self.pe, self.builder = mgr, PolicyEvents(), EventBuilder(ProcessCache(1000))
        self.docs: list[dict] = []

    def drain(self) -> None:
        for raw in self.mgr.queue.take(1_000_000):
            rec = records.decode(raw)
            if isinstance(rec, records.PolicyRecord):
                self.pe.on_catalog(rec, "n")
            elif isinstance(rec, records.HookRecord):
                ev = self.pe.on_hook(rec, "n", 0, self.builder)
                doc = protojson.to_protojson(codec.decode("event", codec.encode("event", ev)))
                json_format.ParseDict(doc, events_pb2.GetEventsResponse())   # Tetragon's proto takes it
                self.docs.append(doc)

    def of(self, fn: str, pid: int, wait: float = 10.0, kind: str = "process_kprobe") -> list[dict]:
        end = time.monotonic() + wait
        while True:
            self.drain()
            got = [d[kind] for d in self.docs if kind in d and d[kind]["function_name"] == fn
                   and d[kind]["process"]["pid"] == pid]
            if got or time.monotonic() > end:
                return got
            time.sleep(0.2)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Events, Loaded]]:
    tmp = tmp_path_factory.mktemp("kargs")
    config_for_btf_tree(tmp)
    loader.prepare(tmp / "kernel-headers")
    ROOT.mkdir(parents=True, exist_ok=True)
    shutil.copy("/usr/bin/true", ROOT / "kargs-lsm-true")
    os.chmod(ROOT / "kargs-lsm-true", 0o755)
    mgr = PolicyManager(RecordQueue(1_000_000, asyncio.new_event_loop()), procfs.host_namespaces(),
                        kernel_features.probe())
    try:
        t0 = time.monotonic()
        (lp,) = mgr.load_text(policy(), "kargs.yaml")
        print(f"kargs policy compiled and loaded in {time.monotonic() - t0:.1f}s")
        yield Events(mgr), lp
    finally:
        mgr.stop()
        shutil.rmtree(ROOT, ignore_errors=True)


def _child(code: str) -> int:
    p = subprocess.run([PY, "-c", PRELUDE + code], capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    return int(p.stdout.split()[-1])


def _arg(body: dict, label: str) -> dict:
    return next({k: v for k, v in a.items() if k != "label"} for a in body["args"] if a.get("label") == label)


PRELUDE = "import ctypes, lzma, os, socket, struct, sys\nlibc = ctypes.CDLL(None, use_errno=True)\n"
CAPSET = """hdr = struct.pack("<Ii", 0x20080522, 0)
data = struct.pack("<6I", {eff}, {eff}, 0, 0, 0, 0)
assert libc.capset(hdr, data) == 0, ctypes.get_errno()
"""
HOSTNAME = """name = os.uname().nodename.encode()
assert libc.sethostname(name, len(name)) == 0, ctypes.get_errno()
"""
BPF = """attr = bytearray(128)
struct.pack_into("<IIII", attr, 0, 1, 4, 8, 16)          # BPF_MAP_CREATE: hash, key 4, value 8, 16 entries
attr[28:37] = b"kargs_map"
assert libc.syscall(321, 0, bytes(attr), 128) >= 0, ctypes.get_errno()
insns = struct.pack("<BBhiBBhi", 0xb7, 0, 0, 0, 0x95, 0, 0, 0)   # r0 = 0; exit
ib, lic = ctypes.create_string_buffer(insns), ctypes.create_string_buffer(b"GPL")
attr = bytearray(128)
struct.pack_into("<IIQQ", attr, 0, 1, 2, ctypes.addressof(ib), ctypes.addressof(lic))  # socket filter, 2 insns
attr[48:59] = b"kargs_probe"
assert libc.syscall(321, 5, bytes(attr), 128) >= 0, ctypes.get_errno()
ktype = int(open("/sys/bus/event_source/devices/kprobe/type").read())
fn = ctypes.create_string_buffer(b"do_nanosleep")
pattr = bytearray(112)
struct.pack_into("<II", pattr, 0, ktype, 112)
struct.pack_into("<QQ", pattr, 56, ctypes.addressof(fn), 0)   # kprobe_func, probe_offset
assert libc.syscall(298, bytes(pattr), -1, 0, -1, 0) >= 0, ctypes.get_errno()
"""
MODULE = """ko = "/lib/modules/%s/kernel/drivers/net/dummy.ko" % os.uname().release
img = open(ko, "rb").read() if os.path.exists(ko) else lzma.decompress(open(ko + ".xz", "rb").read())  # 6.1: plain
assert libc.syscall(175, img, len(img), b"") == 0, ctypes.get_errno()   # init_module
libc.syscall(176, b"dummy", 0)                                            # delete_module
"""
WRITES = """fd = os.open("{f}", os.O_WRONLY | os.O_CREAT, 0o600)
os.write(fd, b"hello-ubuf")
os.writev(fd, [b"first-seg", b"second"])
os.close(fd)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("127.0.0.1", 9))
"""
# one process does everything the policy reports (python starts slowly under TCG), then drops
# capabilities (capset), changes its ids and execs the binary the lsmhook reports; another does
# the near misses and execs true
ACTOR = (HOSTNAME + BPF + MODULE + WRITES.format(f="{root}/kargs-iov-file") + CAPSET.format(eff=ACTOR_CAPS)
         + "os.setgid(4321)\nos.setuid(4321)\nprint(os.getpid(), flush=True)\n"
         + "os.execv('{root}/kargs-lsm-true', ['kargs-lsm-true'])\n")
QUIET = ("open('{root}/other-file', 'w').write('x')\n" + CAPSET.format(eff=CAP_CHOWN)
         + "print(os.getpid(), flush=True)\nos.execv('/usr/bin/true', ['true'])\n")


# a new user namespace (and UTS namespace in it), whose sethostname checks CAP_SYS_ADMIN there:
# user_ns level 1. The kernel refuses a new user namespace to a chrooted process (EPERM), and the
# guest runs its command chrooted into its overlay: in a private mount namespace the process climbs
# out to the initramfs root and moves the overlay mount over it (as switch_root does), so its root
# is its namespace's root again. Prints its pid and its user namespace's inode number.
USERNS = """CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWUSER = 0x20000, 0x4000000, 0x10000000
MS_MOVE, MS_REC, MS_PRIVATE = 0x2000, 0x4000, 0x40000
assert libc.unshare(CLONE_NEWNS) == 0, ctypes.get_errno()
os.makedirs("{root}/jail", exist_ok=True)
os.chdir("/")
os.chroot("{root}/jail")
for _ in range(16):
    os.chdir("..")
os.chroot(".")
assert libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) == 0, ctypes.get_errno()
os.chdir("/newroot")
assert libc.mount(b".", b"/", None, MS_MOVE, None) == 0, ctypes.get_errno()
os.chroot(".")
os.chdir("/")
assert libc.unshare(CLONE_NEWUSER | CLONE_NEWUTS) == 0, ctypes.get_errno()
assert libc.sethostname(b"kargs-userns", 12) == 0, ctypes.get_errno()
print(os.stat("/proc/self/ns/user").st_ino, os.getpid(), flush=True)
"""


# IPsec (ESP, tunnel mode, null cipher) from namespace A to B over a veth pair (loopback never
# takes xfrm: its routes are NOXFRM): B's ip_local_deliver sees the ESP packet, then the UDP
# packet it carried with a sec_path of one state
IPSEC = """import subprocess
subprocess.run(["modprobe", "-a", "xfrm_user", "esp4", "crypto_null", "authenc", "echainiv", "veth"], check=False)
A, B = "kargsA-{tag}", "kargsB-{tag}"
def ip(*a):
    subprocess.run(["ip", *a], check=True)
try:
    for n in (A, B):
        ip("netns", "add", n)
    ip("link", "add", "kva", "netns", A, "type", "veth", "peer", "name", "kvb", "netns", B)
    for n, dev, addr in ((A, "kva", "10.211.0.1/24"), (B, "kvb", "10.211.0.2/24")):
        ip("-n", n, "addr", "add", addr, "dev", dev)
        ip("-n", n, "link", "set", dev, "up")
        ip("-n", n, "xfrm", "state", "add", "src", "10.211.0.1", "dst", "10.211.0.2", "proto", "esp", "spi", "0x1000",
           "reqid", "1", "mode", "tunnel", "enc", "cipher_null", "", "auth", "digest_null", "")
        ip("-n", n, "xfrm", "policy", "add", "src", "10.211.0.1/32", "dst", "10.211.0.2/32", "proto", "udp",
           "dport", "4500", "dir", "out" if n == A else "in", "tmpl", "src", "10.211.0.1", "dst", "10.211.0.2",
           "proto", "esp", "reqid", "1", "mode", "tunnel")
    rx = ("import socket; r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); r.bind(('10.211.0.2', 4500)); "
          "r.settimeout(60); print('ready', flush=True); print(r.recv(64).decode(), flush=True)")
    recv = subprocess.Popen(["ip", "netns", "exec", B, sys.executable, "-c", rx], stdout=subprocess.PIPE, text=True)
    assert recv.stdout.readline().strip() == "ready"
    tx = ("import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
          ".sendto(b'kargs-ipsec', ('10.211.0.2', 4500))")
    subprocess.run(["ip", "netns", "exec", A, sys.executable, "-c", tx], check=True)
    assert recv.communicate(timeout=60)[0].split() == ["kargs-ipsec"]
finally:
    for n in (A, B):
        subprocess.run(["ip", "netns", "del", n], check=False)
print(os.getpid(), flush=True)
"""


@pytest.fixture(scope="module")
def pids(loaded) -> tuple[int, int, tuple[int, int]]:
    """(pid of the process that did everything, pid of the near misses,
    (pid, user namespace inode) of the process in a new user namespace)"""
    p = subprocess.run([PY, "-c", PRELUDE + USERNS.replace("{root}", str(ROOT))], capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    ns_inum, ns_pid = (int(x) for x in p.stdout.split()[-2:])
    _child(IPSEC.replace("{tag}", ROOT.name[4:]))
    actor, quiet = _child(ACTOR.replace("{root}", str(ROOT))), _child(QUIET.replace("{root}", str(ROOT)))
    # the near misses' exec (their last act) commits creds: once that is drained, so is the rest
    ev, _ = loaded
    assert ev.of("commit_creds", quiet)
    return actor, quiet, (ns_pid, ns_inum)


def test_mechanisms(loaded) -> None:
    _, lp = loaded
    assert [h.mechanism for h in lp.compiled.hooks] == ["fentry"] * 10 + ["lsm"]


def test_commit_creds_cred(loaded, pids) -> None:
    ev, _ = loaded
    new = [_arg(b, "new")["process_credentials_arg"] for b in ev.of("commit_creds", pids[0])]
    last = next(c for c in new if c["uid"] == 4321)
    assert {k: last[k] for k in ("uid", "euid", "suid", "fsuid", "gid", "egid")} == \
        {"uid": 4321, "euid": 4321, "suid": 4321, "fsuid": 4321, "gid": 4321, "egid": 4321}
    assert "caps" not in last or not last["caps"].get("effective")     # setuid from root drops them
    assert last["user_ns"]["level"] == 0 and last["user_ns"]["ns"]["is_host"] is True


def test_capset_kernel_cap_t_and_mask_selector(loaded, pids) -> None:
    ev, _ = loaded
    (b,) = ev.of("security_capset", pids[0])
    assert _arg(b, "eff") == {"cap_effective_arg": f"{ACTOR_CAPS:016x}"} == {"cap_effective_arg": "00000000000020c1"}
    assert _arg(b, "inh") == {"cap_inheritable_arg": "0000000000000000"}
    assert _arg(b, "prm") == {"kernel_cap_t_arg": f"{ACTOR_CAPS:016x}"}
    assert b["args"][0]["process_credentials_arg"]["uid"] == 0
    assert ev.of("security_capset", pids[1], wait=0) == []   # no CAP_NET_RAW: the Mask selector stays silent


def test_security_capable_user_namespace(loaded, pids) -> None:
    # sethostname (to the name it has) checks CAP_SYS_ADMIN in the UTS namespace's user namespace:
    # the initial one for the actor
    ev, _ = loaded
    nss = [(_arg(b, "ns")["user_ns_arg"], _arg(b, "cap")["capability_arg"])
           for b in ev.of("security_capable", pids[0])]
    assert nss and all(c == {"value": 21, "name": "CAP_SYS_ADMIN"} for _, c in nss)
    inum = os.stat("/proc/self/ns/user").st_ino
    assert nss[0][0] == {"level": 0, "uid": 0, "gid": 0, "ns": {"inum": inum, "is_host": True}}


def test_user_namespace_level_1(loaded, pids) -> None:
    # unshare(CLONE_NEWUTS) and sethostname in the new user namespace check CAP_SYS_ADMIN there
    ev, _ = loaded
    ns_pid, ns_inum = pids[2]
    nss = [_arg(b, "ns")["user_ns_arg"] for b in ev.of("security_capable", ns_pid)]
    inner = [n for n in nss if n["level"] == 1]
    assert inner, nss
    # its owner: the creator's uid/gid (root) in the parent namespace; is_host only at level 0
    assert all(n == {"level": 1, "uid": 0, "gid": 0, "ns": {"inum": ns_inum}} for n in inner)   # is_host false
    assert ns_inum != os.stat("/proc/self/ns/user").st_ino


def test_bpf_attr_bpf_map_perf_event(loaded, pids) -> None:
    ev, _ = loaded
    (b,) = ev.of("bpf_check", pids[0])
    assert _arg(b, "attr") == {"bpf_attr_arg": {"ProgType": "BPF_PROG_TYPE_SOCKET_FILTER", "InsnCnt": 2,
                                                "ProgName": "kargs_probe"}}
    (m,) = ev.of(MAP_HOOK, pids[0])
    assert _arg(m, "map") == {"bpf_map_arg": {"MapType": "BPF_MAP_TYPE_HASH", "KeySize": 4, "ValueSize": 8,
                                              "MaxEntries": 16, "MapName": "kargs_map"}}
    (p,) = ev.of("security_perf_event_alloc", pids[0])
    pe = _arg(p, "event")["perf_event_arg"]
    assert pe["KprobeFunc"] == "do_nanosleep" and pe["Type"] != ""


def test_module_and_load_info(loaded, pids) -> None:
    ev, _ = loaded
    (b,) = ev.of("mod_sysfs_setup", pids[0])
    mod, info = _arg(b, "mod")["module_arg"], _arg(b, "info")["module_arg"]
    assert mod["name"] == "dummy" and "signature_ok" not in mod     # struct module: no signature state
    assert info["name"] == "dummy" and isinstance(info.get("signature_ok", False), bool)


def test_kiocb_and_iov_iter(loaded, pids) -> None:
    ev, _ = loaded
    bodies = ev.of("generic_perform_write", pids[0])
    assert len(bodies) == 2
    # the file's inode mode as Tetragon's permission (created 0600), no unresolved components
    assert all(_arg(b, "iocb")["file_arg"] == {"path": str(ROOT / "kargs-iov-file"), "permission": "-rw-------"}
               for b in bodies)
    assert [_arg(b, "iter") for b in bodies] == [{"bytes_arg": "aGVsbG8tdWJ1Zg=="},   # ITER_UBUF: the buffer
                                                 {"bytes_arg": "Zmlyc3Qtc2Vn"}]        # ITER_IOVEC: 1st segment
    assert ev.of("generic_perform_write", pids[1], wait=0) == []   # another file


def test_sockaddr_kernel_copy(loaded, pids) -> None:
    ev, _ = loaded
    (b,) = ev.of("security_socket_connect", pids[0])
    assert _arg(b, "addr") == {"sockaddr_arg": {"family": "AF_INET", "addr": "127.0.0.1", "port": 9}}


def test_skb_sec_path_of_an_ipsec_packet(loaded, pids) -> None:
    ev, _ = loaded
    ev.drain()
    skbs = [_arg(d["process_kprobe"], "skb")["skb_arg"] for d in ev.docs
            if d.get("process_kprobe", {}).get("function_name") == "ip_local_deliver"]
    skbs = [k for k in skbs if k.get("daddr") == "10.211.0.2"]
    esp = [k for k in skbs if k.get("proto") == 50]
    inner = [k for k in skbs if k.get("dport") == 4500]
    assert esp and all("sec_path_len" not in k for k in esp), skbs     # the ESP packet: no state yet
    assert inner and all(k["sec_path_len"] == 1 and k["protocol"] == "IPPROTO_UDP" and k["saddr"] == "10.211.0.1"
                         for k in inner), skbs                         # what it carried: one xfrm state
    assert all("sec_path_olen" not in k for k in inner)               # no offloaded state (0, not shown)


def test_lsmhook_is_a_process_lsm_event_with_linux_binprm(loaded, pids) -> None:
    ev, _ = loaded
    (b,) = ev.of("bprm_check_security", pids[0], kind="process_lsm")
    assert b["args"] == [{"label": "bprm", "linux_binprm_arg": {"path": str(ROOT / "kargs-lsm-true"),
                                                               "permission": "-rwxr-xr-x"}}]
    assert b["policy_name"] == "kargs" and b["action"] == "KPROBE_ACTION_POST"
    assert ev.of("bprm_check_security", pids[1], wait=0, kind="process_lsm") == []   # /usr/bin/true
    assert not [d for d in ev.docs if d.get("process_kprobe", {}).get("function_name") == "bprm_check_security"]
