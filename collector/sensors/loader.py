"""Loader sensor: a ``process_loader`` record for every file a process maps executable
(bpf/loader.c). Off by default, as in Tetragon (where a policy with ``spec.loader: true`` turns
it on): ``--enable-loader-events`` / ``TETRAPIPE_ENABLE_LOADER_EVENTS``.
"""

from __future__ import annotations

from typing import Any

from tetrapipe.config import Config

SOURCE = "loader.c"
MECHANISM = "tracepoints syscalls:sys_enter_mmap/sys_exit_mmap with PROT_EXEC and a file"


def enabled(cfg: Config) -> bool:
    return bool(cfg.enable_loader_events)


def setup(bpf: Any) -> None:
    return None
