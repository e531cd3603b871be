"""The compiled helpers (the collector's ring-buffer drain, the Avro writer): each built from one C
file with the system compiler into the first writable cache directory, named by a hash of what it
was built from, and loaded only if owned by us (or root) and writable by nobody else.
``TETRAPIPE_NO_EXTENSIONS=1`` turns them all off; without a compiler each stays pure Python."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

BUILD_DIRS = (Path("/var/cache/tetrapipe-build/native"), Path.home() / ".cache" / "tetrapipe-native")


def disabled() -> bool:
    return os.environ.get("TETRAPIPE_NO_EXTENSIONS", "") not in ("", "0")


def trusted(path: Path) -> bool:
    """Ours to load: owned by us (or root) and writable by nobody else, with its directory."""
    for p in (path, path.parent):
        st = p.stat()
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
            return False
    return True


def build(src: Path, name: str, what: str, cc_args: Sequence[str] = (), quiet: bool = True,
          timeout: float = 60) -> Path | None:
    """The built ``name`` from ``src`` (compiled now if no trusted copy exists; idempotent), or None
    if nothing is writable or the compiler is missing or fails. A directory we may not look into
    (another user's home, for a service run unprivileged) is skipped."""
    for d in BUILD_DIRS:
        try:
            if not (d / name).exists():
                continue
            if trusted(d / name):
                return d / name
        except OSError as exc:
            log.debug("%s not looked for in %s: %s", what, d, exc)
            continue
        log.warning("not loading %s: writable by others or not ours", d / name)
    cc = os.environ.get("CC", "cc")
    for d in BUILD_DIRS:
        try:
            d.mkdir(mode=0o755, parents=True, exist_ok=True)
            tmp = d / f".{name}.{os.getpid()}"
            subprocess.run([cc, "-O2", "-shared", "-fPIC", *cc_args, "-o", str(tmp), str(src)], check=True,
                           capture_output=quiet, timeout=timeout)
            tmp.chmod(0o755)
            tmp.rename(d / name)
            if trusted(d / name):
                return d / name
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("%s not built in %s: %s", what, d, exc)
    return None
