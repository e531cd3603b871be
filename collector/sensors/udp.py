"""UDP sensor: a record for every datagram a process sends on an IPv4/IPv6 UDP socket, with the
5-tuple, socket cookie, state and network namespace (bpf/udp.c). Off by default, like the network
sensor: ``--enable-udp-events`` / ``TETRAPIPE_ENABLE_UDP_EVENTS``. The enricher makes Tetragon's
``process_kprobe`` ``udp_sendmsg`` events with a ``sock_arg``.

Mechanism (no kprobes here): the tracepoint ``sock:sock_send_length`` after every sendmsg on any
socket (UDP checked first), which sees connected sends whole; and cgroup/sendmsg4 + sendmsg6
programs on the cgroup v2 root, which see the destination an unconnected send names (they always
allow). Without cgroup v2 only connected sends are reported. Limits: sends that failed are not
reported; an unbound unconnected socket reports saddr 0.0.0.0 / :: (the kernel picks the source
per datagram and does not keep it on the socket).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from collector import connect_deny
from tetrapipe.config import Config

log = logging.getLogger("tetrapipe.collector")

SOURCE = "udp.c"
MECHANISM = ("tracepoint sock:sock_send_length (every send on a UDP socket) and cgroup/sendmsg4+6 "
             "on the cgroup v2 root (destination of unconnected sends)")
ATTACH_UDP4_SENDMSG = 14  # enum bpf_attach_type
ATTACH_UDP6_SENDMSG = 15


def enabled(cfg: Config) -> bool:
    return bool(cfg.enable_udp_events)


def setup(bpf: Any) -> None:
    """Attach the sendmsg programs to the cgroup v2 root through BPF links (they live as long as
    this process holds them: kept on the bpf object). Failure is logged: connected sends only."""
    from bcc import BPF

    root = connect_deny.cgroup2_root()
    if root is None:
        log.warning("udp sensor: no cgroup v2 hierarchy mounted: unconnected UDP sends are not reported")
        return
    links: list[int] = []
    try:
        fd = os.open(str(root), os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name, kind in (("tp_udp_sendmsg4", ATTACH_UDP4_SENDMSG),
                               ("tp_udp_sendmsg6", ATTACH_UDP6_SENDMSG)):
                fn = bpf.load_func(name, BPF.CGROUP_SOCK_ADDR, attach_type=kind)
                link = connect_deny._link_create(fn.fd, fd, kind)
                if link < 0:
                    raise OSError(-link, f"BPF link of {name} to {root}: {os.strerror(-link)}")
                links.append(link)
        finally:
            os.close(fd)
    except Exception as exc:  # noqa: BLE001 - the sensor still reports connected sends
        for link in links:
            os.close(link)
        log.warning("udp sensor: cgroup/sendmsg4+6 not attached (%s): unconnected UDP sends are "
                    "not reported", exc)
        return
    bpf.tp_udp_links = links
    log.info("udp sensor: cgroup/sendmsg4+6 attached to %s", root)
