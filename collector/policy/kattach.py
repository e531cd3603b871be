"""Attaching a policy program's kernel-function programs (collector/policy/mechanism.py chose
them): bcc attaches fentry (``kfunc__``), fexit (``kretfunc__``) and LSM (``lsm__``) programs by
itself when it loads the object; kprobes, kretprobes and fmod_ret programs are attached here.
fmod_ret attachments are links (file descriptors) the caller keeps and closes at unload: the
program stays attached while one is open, whatever bcc cleans up."""

from __future__ import annotations

import os
from typing import Any

AUTO = frozenset({"fentry", "fexit", "lsm", "rawtp"})


def attach(bpf: Any, mech: str, func: str, link_fds: list[int]) -> None:
    if mech in AUTO:
        return
    if mech in ("kprobe", "kprobe+bpf_override_return"):
        bpf.attach_kprobe(event=func, fn_name=f"tp_kprobe__{func}")
    elif mech == "kretprobe":
        bpf.attach_kretprobe(event=func, fn_name=f"tp_kretprobe__{func}")
    elif mech == "fmod_ret":
        from bcc import BPF, lib  # only the collector needs bcc

        fn = bpf.load_func(f"kmod_ret__{func}".encode(), BPF.TRACING)
        fd = lib.bpf_attach_kfunc(fn.fd)
        if fd < 0:
            raise OSError(f"fmod_ret on {func} did not attach")
        link_fds.append(fd)
    else:
        raise ValueError(f"unknown mechanism {mech}")


def close(link_fds: list[int]) -> None:
    while link_fds:
        try:
            os.close(link_fds.pop())
        except OSError:
            pass
