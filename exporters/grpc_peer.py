"""Who is calling: the uid owning a local TCP peer's socket, from /proc/net/tcp and tcp6.

gRPC gives the peer as ``ipv4:127.0.0.1:40312`` or ``ipv6:[::1]:40312``. The caller's socket is
the one whose local address and port are the peer's and whose remote port is the server's; the
kernel lists its owner's uid. A peer not found there (another host, another network namespace) is
None.
"""

from __future__ import annotations

import ipaddress
import re
import struct

_PEER = re.compile(r"^ipv[46]:(?:\[(?P<v6>[^\]]+)\]|(?P<v4>[\d.]+)):(?P<port>\d+)$")


def _rows(path: str) -> list[list[str]]:
    try:
        with open(path) as f:
            return [line.split() for line in f.readlines()[1:]]
    except OSError:
        return []


def _addr(hexaddr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net/tcp* prints addresses as 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hexaddr)
    words = struct.unpack(f"<{len(raw) // 4}I", raw)
    a = ipaddress.ip_address(b"".join(struct.pack(">I", w) for w in words))
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped:
        return a.ipv4_mapped
    return a


def peer_uid(peer: str, server_port: int) -> int | None:
    m = _PEER.match(peer or "")
    if not m or not server_port:
        return None
    want = ipaddress.ip_address(m.group("v6") or m.group("v4"))
    if isinstance(want, ipaddress.IPv6Address) and want.ipv4_mapped:
        want = want.ipv4_mapped
    port = int(m.group("port"))
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in _rows(table):
            if len(row) < 8:
                continue
            (laddr, lport), (_, rport) = row[1].split(":"), row[2].split(":")
            if int(lport, 16) == port and int(rport, 16) == server_port and _addr(laddr) == want:
                return int(row[7])
    return None
