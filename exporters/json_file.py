"""JSON file sink: one protojson line per event (Tetragon's export format), appended with O_APPEND.

Lines are never torn: each batch is written with whole lines, and at start a file whose last line
lacks its newline (a kill -9 mid-write) is cut back to its last complete line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from exporters import protojson


def repair_tail(path: Path) -> int:
    """Cut a partial last line; returns the bytes removed."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        pos = size
        chunk = 65536
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            data = f.read(pos - start)
            i = data.rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                f.truncate(keep)
                return size - keep
            pos = start
        f.truncate(0)
        return size


class JsonFileSink:
    name = "json"

    def __init__(self, path: str, mode: int = 0o600) -> None:
        self.path = Path(path)
        self.mode = mode
        self.fd = -1

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_tail(self.path)
        self._open()

    def _open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self.mode)

    async def write(self, events: list[dict[str, Any]]) -> int:
        data = "".join(protojson.dumps(e) + "\n" for e in events).encode()
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        return len(data)

    async def stop(self) -> None:
        if self.fd >= 0:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
