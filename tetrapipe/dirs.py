"""The directories tetrapipe writes by default, created when missing by whichever process needs
them, and the one-line reason when one cannot be used.

- ``/var/log/tetrapipe`` (``run --log-dir``), 0755, made by ``run``: each service's log and
  ``broker.log``.
- the export file's folder (``/var/log/tetrapipe``), 0755, made by ``run`` and the JSON
  exporter: ``events.log`` (0600) and its backups.
- ``/var/run/tetrapipe`` (the control socket's folder), 0700, made by ``run`` and the collector.
- ``/var/lib/tetrapipe`` (``state_dir``), 0755, made by ``run``, the collector and the fluentd
  exporter: ``spool/`` (0700), ``fluentd-buffer/``.
- ``/var/cache/tetrapipe`` (``cache_dir``), 0755, made by ``run`` and the collector:
  ``kernel-headers/`` generated from the kernel's BTF.

With ``run --user NAME`` the export file's folder and the fluentd buffer are given to NAME.
An existing directory keeps its owner and mode (an administrator's choice wins).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class DirError(OSError):
    """A directory that cannot be made or written: ``str()`` is the whole one-line reason."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "directory error"


def ensure_dir(path: str | os.PathLike[str], mode: int, purpose: str, owner: tuple[int, int] | None = None,
               check_writable: bool = True) -> Path:
    """Make ``path`` (and its parents) with ``mode`` when missing, give it to ``owner`` (uid, gid)
    when given, and check that it can be written. Raises DirError with one line naming the
    directory, what it is for and why."""
    p = Path(path)
    try:
        if not p.is_dir():
            p.mkdir(parents=True, exist_ok=True)
            os.chmod(p, mode)  # whatever the umask
        if owner is not None:
            os.chown(p, *owner)
        if check_writable:
            with tempfile.TemporaryFile(dir=p, prefix=".tetrapipe-write-check-"):
                pass
    except OSError as exc:
        raise DirError(f"cannot use {p} ({purpose}): {exc.strerror or exc}") from None
    return p
