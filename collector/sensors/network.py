"""Network sensor: TCP connect, accept and close with the 5-tuple, socket cookie, state and
network namespace (bpf/network.c). Off by default, as in Tetragon, where connection events
appear only when asked for: ``--enable-network-events`` / ``TETRAPIPE_ENABLE_NETWORK_EVENTS``.

Mechanism: tracepoints only (the kernels we target may lack kprobes): syscalls:sys_enter/exit_connect,
sys_exit_accept/accept4 bind the socket to the calling process; sock:inet_sock_set_state
reports the close, attributed through a sock → owner map because it can fire in softirq context.
The enricher turns the records into ``process_kprobe`` events named ``tcp_connect``,
``inet_csk_accept`` and ``tcp_close`` with a ``sock_arg``, as Tetragon's network policies do.
"""

from __future__ import annotations

from tetrapipe.config import Config

SOURCE = "network.c"
MECHANISM = ("tracepoints syscalls:sys_exit_connect, sys_exit_accept/accept4 and "
             "sock:inet_sock_set_state (no kprobes)")


def enabled(cfg: Config) -> bool:
    return bool(cfg.enable_network_events)
