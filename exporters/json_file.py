"""JSON file sink: one protojson line per event (Tetragon's export format), appended with O_APPEND,
with Tetragon's export options: rotation by size and by interval, backups kept, gzip of rotated
files, file mode, allow/deny lists, field filters, redaction filters and the export rate limit.

Lines are never torn: every batch is written as whole lines, and at start a file whose last line
lacks its newline (a kill -9 mid-write) is cut back to its last complete line; the worker commits
offsets only after the write, so the cut events are read and written again.

Rotated files are named as lumberjack (Tetragon's rotating writer) names them:
``events.log`` → ``events-2026-11-28T09-40-00.123.log`` (UTC), ``.gz`` appended when compressed.
A backup is compressed through ``<backup>.gz.tmp`` and a rename, and the plain backup is removed
only after that, so a kill at any point leaves either the plain or the complete gzip file; start
finishes any interrupted compression.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporters import protojson
from exporters.filters import ExportFilters, apply_field_filters, apply_redaction
from exporters.ratelimit import RateLimiter, rate_limit_info

log = logging.getLogger("tetrapipe.export.json")

BACKUP_TIME_FORMAT = "%Y-%m-%dT%H-%M-%S"


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


def parse_duration(text: str) -> float:
    """Go-style duration ("90s", "1h30m", "500ms", "0") → seconds; a bare number is seconds."""
    s = str(text).strip()
    if s in ("", "0"):
        return 0.0
    try:
        return float(s)
    except ValueError:
        pass
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)", s)
    if not parts or "".join(n + u for n, u in parts) != s:
        raise ValueError(f"not a duration: {text!r} (e.g. 30s, 10m, 1h)")
    return sum(float(n) * units[u] for n, u in parts)


@dataclass
class RotationPolicy:
    max_size_bytes: int = 10 * 1024 * 1024  # 0 = no rotation by size
    interval_s: float = 0.0                 # 0 = no rotation by time
    max_backups: int = 5                    # 0 = keep all
    compress: bool = False


@dataclass
class JsonFileSink:
    path: Path | str
    mode: int = 0o600
    rotation: RotationPolicy = field(default_factory=RotationPolicy)
    filters: ExportFilters | None = None
    rate_limiter: RateLimiter | None = None
    node_name: str = ""
    cluster_name: str = ""
    name: str = "json"

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.fd = -1
        self.size = 0
        self.opened_at = 0.0
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None
        self._pending: tuple[list[Any], list[bytes]] | None = None  # a batch whose write failed
        self.rotations = 0

    @classmethod
    def from_config(cls, cfg: Any) -> JsonFileSink:
        """The sink with every ``export_*`` option of ``cfg``; bad options raise ValueError."""
        try:
            mode = int(str(cfg.export_file_perm), 8)
        except ValueError:
            raise ValueError(f"export_file_perm: {cfg.export_file_perm!r} is not an octal file mode") from None
        try:
            interval = parse_duration(cfg.export_file_rotation_interval)
        except ValueError as exc:
            raise ValueError(f"export_file_rotation_interval: {exc}") from None
        filters = ExportFilters.parse(cfg.export_allowlist, cfg.export_denylist, cfg.field_filters,
                                      cfg.redaction_filters)
        limiter = None
        if cfg.export_rate_limit >= 0:
            report = parse_duration(getattr(cfg, "export_rate_limit_report_interval", "1m"))
            limiter = RateLimiter(cfg.export_rate_limit, report_interval_s=report or 60.0)
        rotation = RotationPolicy(max(cfg.export_file_max_size_mb, 0) * 1024 * 1024, interval,
                                  max(cfg.export_file_max_backups, 0), bool(cfg.export_file_compress))
        return cls(cfg.export_filename, mode, rotation, filters, limiter, cfg.node_name, cfg.cluster_name)

    # ---- life cycle --------------------------------------------------------------------
    async def start(self) -> None:
        assert isinstance(self.path, Path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cut = repair_tail(self.path)
        if cut:
            log.warning("cut a torn last line of %d bytes from %s", cut, self.path)
        await asyncio.to_thread(self._finish_backups)
        self._open()
        if self.rotation.interval_s > 0 or self.rate_limiter is not None:
            self._timer = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            try:
                await self._timer
            except asyncio.CancelledError:
                pass
            self._timer = None
        if self.fd >= 0:
            async with self._lock:
                if self.rate_limiter is not None:
                    n = self.rate_limiter.due_report(force=True)
                    if n:
                        self._write_lines([self._info_line(n)])
                os.fsync(self.fd)
                os.close(self.fd)
                self.fd = -1

    def _open(self) -> None:
        assert isinstance(self.path, Path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self.mode)
        os.fchmod(self.fd, self.mode)  # the umask must not widen or narrow the configured mode
        st = os.fstat(self.fd)
        self.size = st.st_size
        self.opened_at = time.time()

    async def _tick(self) -> None:
        """Rotation by interval while no events come, and the rate-limit report."""
        period = min(x for x in (self.rotation.interval_s or 1.0, 1.0) if x > 0)
        while True:
            await asyncio.sleep(period)
            async with self._lock:
                if self.rate_limiter is not None:
                    n = self.rate_limiter.due_report()
                    if n:
                        self._write_lines([self._info_line(n)])
                if self._rotation_due_by_time():
                    await self._rotate()

    # ---- writing -----------------------------------------------------------------------
    def render(self, events: list[dict[str, Any]]) -> list[bytes]:
        """Events → the lines to write, after filters, rate limit, redaction and field filters
        (Tetragon's order)."""
        out = []
        f = self.filters
        for ev in events:
            doc = protojson.to_protojson(ev)
            if f is not None and not f.events(doc):
                continue
            if self.rate_limiter is not None and not self.rate_limiter.allow():
                continue
            if f is not None:
                doc = apply_field_filters(f.fields, apply_redaction(f.redaction, doc))
            out.append(_line(doc))
        if self.rate_limiter is not None:
            n = self.rate_limiter.due_report()
            if n:
                out.append(self._info_line(n))
        return out

    def _info_line(self, dropped: int) -> bytes:
        return _line(protojson.to_protojson(rate_limit_info(dropped, self.node_name, self.cluster_name)))

    async def write(self, events: list[dict[str, Any]]) -> int:
        async with self._lock:
            if self._pending is not None and self._pending[0] is events:
                lines = self._pending[1]  # a retry: do not count the batch against the limit again
            else:
                lines = self.render(events)
            self._pending = (events, lines)
            n = 0
            if lines and self._rotation_due_by_time():
                await self._rotate()
            while lines:
                room = self.rotation.max_size_bytes - self.size if self.rotation.max_size_bytes else 1 << 62
                take = 0
                size = 0
                while take < len(lines) and size + len(lines[take]) <= room:
                    size += len(lines[take])
                    take += 1
                if take == 0:
                    if self.size > 0:
                        await self._rotate()
                        continue
                    take = 1  # a line bigger than the whole file size limit goes alone
                chunk, lines = lines[:take], lines[take:]
                n += self._write_lines(chunk)
                self._pending = (events, lines)
            self._pending = None
            return n

    def _write_lines(self, lines: list[bytes]) -> int:
        data = b"".join(lines)
        if self.size == 0:
            self.opened_at = time.time()  # the interval counts from the file's first line
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
            self.size += written
        return len(data)

    # ---- rotation ----------------------------------------------------------------------
    def _rotation_due_by_time(self) -> bool:
        return (self.rotation.interval_s > 0 and self.size > 0
                and time.time() - self.opened_at >= self.rotation.interval_s)

    def backup_name(self, when: float) -> Path:
        assert isinstance(self.path, Path)
        stem, ext = _split_ext(self.path.name)
        ms = int(when * 1000)
        while True:
            stamp = time.strftime(BACKUP_TIME_FORMAT, time.gmtime(ms // 1000)) + f".{ms % 1000:03d}"
            cand = self.path.with_name(f"{stem}-{stamp}{ext}")
            if not cand.exists() and not Path(str(cand) + ".gz").exists():
                return cand
            ms += 1

    def backups(self) -> list[Path]:
        """Rotated files of this export file, oldest first."""
        assert isinstance(self.path, Path)
        stem, ext = _split_ext(self.path.name)
        pat = re.compile(re.escape(stem) + r"-(\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{3})" + re.escape(ext)
                         + r"(\.gz)?")
        found = []
        for p in self.path.parent.iterdir():
            m = pat.fullmatch(p.name)
            if m:
                found.append((m.group(1), p))
        return [p for _, p in sorted(found)]

    async def _rotate(self) -> None:
        assert isinstance(self.path, Path)
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        backup = self.backup_name(time.time())
        os.rename(self.path, backup)
        self._open()
        self.rotations += 1
        log.info("rotated %s to %s", self.path, backup.name)
        await asyncio.to_thread(self._finish_backups)

    def _finish_backups(self) -> None:
        """Compress plain backups (when asked) and keep the newest ``max_backups``."""
        assert isinstance(self.path, Path)
        stem, _ = _split_ext(self.path.name)
        for tmp in self.path.parent.glob(f"{glob_escape(stem)}-*.gz.tmp"):
            tmp.unlink(missing_ok=True)  # an interrupted compression: its plain backup still exists
        if self.rotation.compress:
            for p in self.backups():
                if p.suffix != ".gz":
                    _gzip_file(p, self.mode)
        if self.rotation.max_backups > 0:
            old = self.backups()[:-self.rotation.max_backups]
            for p in old:
                p.unlink(missing_ok=True)


def _line(doc: dict[str, Any]) -> bytes:
    return (protojson.dumps_doc(doc) + "\n").encode()


def _split_ext(name: str) -> tuple[str, str]:
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return name, ""
    return stem, "." + ext


def glob_escape(s: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", s)


def _gzip_file(src: Path, mode: int) -> Path:
    dst = Path(str(src) + ".gz")
    tmp = Path(str(dst) + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    os.fchmod(fd, mode)
    with os.fdopen(fd, "wb") as raw, gzip.GzipFile(filename=src.name, mode="wb", fileobj=raw,
                                                     mtime=int(src.stat().st_mtime)) as gz, \
            open(src, "rb") as f:
        shutil.copyfileobj(f, gz, 1 << 20)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.rename(tmp, dst)
    src.unlink()
    return dst
