"""The uncaught-road counter's Python half (collector/policy/uncaught.py), without a kernel: what
the shipped policies protect, and how a kernel report becomes (road, policy). The kernel half is
tested by tests/test_bypass.py (each missed road moves the counter)."""

from __future__ import annotations

import struct
from pathlib import Path

from collector.policy import parser, uncaught

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "policies"
SEED = Path(__file__).parent / "data" / "seed" / "deny-tmp-forbidden-write.yaml"


def _prot(path: Path) -> uncaught.Protected | None:
    (p,) = parser.parse_text(path.read_text(), str(path))
    return uncaught.protected_of(p.name, p.hooks)


def _report(kind: int, infs: str = "", full: str = "", nr: int = -1, via: int = 0, fflags: int = 0,
            addr: int = 0, port: int = 0) -> bytes:
    head = uncaught.HEAD.pack(kind, 77, 77, via, nr, 1, fflags, 1, addr, port, len(infs), len(full))
    return head + infs.encode().ljust(uncaught.PATH_MAX, b"\0") + full.encode().ljust(uncaught.PATH_MAX, b"\0")


def test_what_the_shipped_policies_protect() -> None:
    passwd = _prot(EXAMPLES / "etc-passwd-shadow-writes.yaml")
    assert passwd is not None and passwd.write and not passwd.connect
    assert passwd.exact == {"/etc/passwd", "/etc/shadow", "/etc/gshadow", "/etc/group"}
    keys = _prot(EXAMPLES / "private-key-reads.yaml")
    assert keys is not None and not keys.write
    assert "/id_rsa" in keys.postfixes and ".key" not in keys.postfixes   # not a file name
    assert keys.prefixes == ["/etc/ssl/private/"]
    seed = _prot(SEED)
    assert seed is not None and seed.write and seed.prefixes == ["/tmp/forbidden/"]
    out = _prot(EXAMPLES / "unexpected-outbound-connections.yaml")
    assert out is not None and out.connect
    assert _prot(EXAMPLES / "privilege-escalation.yaml") is None   # nothing to count


def _watcher(*prot: uncaught.Protected | None) -> uncaught.Watcher:
    w = uncaught.Watcher(lambda _: None)
    w.prot = [p for p in prot if p is not None]
    return w


def test_reports_become_roads() -> None:
    passwd = _prot(EXAMPLES / "etc-passwd-shadow-writes.yaml")
    keys = _prot(EXAMPLES / "private-key-reads.yaml")
    out = _prot(EXAMPLES / "unexpected-outbound-connections.yaml")
    w = _watcher(passwd, keys, out)

    def roads(raw: bytes) -> list[tuple[str, str]]:
        return [(r.policy, r.road) for r in w.classify(raw)]

    assert roads(_report(uncaught.UC_DIRTY, "/etc/passwd", nr=76)) == [("etc-passwd-shadow-writes", "truncate(path)")]
    assert roads(_report(uncaught.UC_DIRTY, "/etc/passwd", nr=257)) == [
        ("etc-passwd-shadow-writes", "O_TRUNC/creat at the open")]
    assert roads(_report(uncaught.UC_DIRTY, "/etc/passwd", nr=92, via=uncaught.VIA_COMPAT)) == [
        ("etc-passwd-shadow-writes", "truncate(path)")]          # i386 truncate
    assert roads(_report(uncaught.UC_DIRTY, "/etc/passwd", nr=1)) == []          # write(2): judged
    assert roads(_report(uncaught.UC_DIRTY, "/etc/passwd", via=uncaught.VIA_URING)) == [
        ("etc-passwd-shadow-writes", "io_uring fixed file")]
    assert roads(_report(uncaught.UC_DIRTY, "/etc/passwd.bak", nr=76)) == []     # another file
    # a container's /etc/passwd (its path in the overlay's upper directory) counts by its tail
    assert roads(_report(uncaught.UC_DIRTY, "/var/lib/c/1/diff/etc/passwd", nr=76)) == [
        ("etc-passwd-shadow-writes", "truncate(path)")]
    # opens: the name through the policy's own path is judged; another mount / another name is not
    assert roads(_report(uncaught.UC_OPEN, "/etc/passwd", "/etc/passwd", fflags=1)) == []
    assert roads(_report(uncaught.UC_OPEN, "/etc/passwd", "/mnt/b/passwd", fflags=1)) == [
        ("etc-passwd-shadow-writes", "bind mount")]
    assert roads(_report(uncaught.UC_OPEN, "/etc/passwd", "/mnt/b/passwd", fflags=0)) == []   # a read
    assert roads(_report(uncaught.UC_OPEN, "/etc/passwd", "/tmp/hl", fflags=1, via=uncaught.VIA_ALIAS)) == [
        ("etc-passwd-shadow-writes", "hard link")]
    # io_uring OPENAT: judged by the policy (collector/policy/uring.py), not a road
    assert roads(_report(uncaught.UC_OPEN, "/root/.ssh/id_rsa", "/root/.ssh/id_rsa", via=uncaught.VIA_URING)) == []
    # renames: the new name against its directory, normalised
    assert roads(_report(uncaught.UC_RENAME, "../etc/./passwd", "/etc")) == [
        ("etc-passwd-shadow-writes", "rename over")]
    assert roads(_report(uncaught.UC_RENAME, "passwd", "/home/u")) == []
    addr = struct.unpack("<I", bytes([10, 1, 2, 3]))[0]
    (rep,) = w.classify(_report(uncaught.UC_CONNECT, addr=addr, port=0x5000, via=uncaught.VIA_COMPAT))
    assert (rep.policy, rep.road, rep.what) == ("unexpected-outbound-connections", "32-bit connect/socketcall",
                                              "10.1.2.3:80")
