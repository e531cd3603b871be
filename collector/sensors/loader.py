"""Loader sensor: a ``process_loader`` record for every file a process maps executable
(bpf/loader.c). Off by default, as in Tetragon: ``--enable-loader-events`` /
``TETRAPIPE_ENABLE_LOADER_EVENTS`` compiles it into the process program; a policy with
``spec.loader: true`` loads it as a program of its own while the policy is loaded
(collector/policy/manager.py).
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
