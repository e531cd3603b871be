"""Tetragon's ``dns`` argument type (its dns-egress.yaml: ``udp_sendmsg``/``udpv6_sendmsg`` with
the ``struct msghdr *`` typed ``dns``): the query name of the DNS message being sent, decoded in
the kernel (bpf/dns.h) into a string slot, so Equal/Prefix/Postfix/NotEqual/... and the string
sets act on the dotted, lower-cased name in the kernel, before the event is made.

In the event the argument is a ``string_arg`` holding that name: Tetragon's ``dns_arg`` message
(its pull request 5148) is not in its released API (v1.7.0), which our gRPC clients read, as the
``int32_arr`` argument is rendered in ``string_arg`` too. A message that is not a standard query,
or whose name is not whole in its first segment, gives an empty argument flagged as an error,
which no selector value matches.
"""

from __future__ import annotations

from collector.policy.argtypes import Field

MSGHDR = "struct msghdr *"


def refusal(src_kind: str, f: Field, func: str) -> str:
    """Why a ``dns`` argument cannot be read here ("" when it can)."""
    if src_kind != "kfunc":
        return ("a dns argument reads the struct msghdr of a kernel function (udp_sendmsg, udpv6_sendmsg); "
                "this hook is served by a tracepoint or uprobe")
    if f.ctype.replace(" ", "") != MSGHDR.replace(" ", ""):
        return f"a dns argument reads a {MSGHDR}; argument {f.name} of {func} is {f.ctype}"
    return ""


def fill_c(index: int, slot: int) -> str:
    """C filling string slot ``slot`` with the query name of argument ``index`` (a msghdr)."""
    return f"s->slen[{slot}] = tp_dns_name((struct msghdr *)a[{index}], s->slot[{slot}], &sf);"
