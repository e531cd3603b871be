"""Policy files given at start and the watched policy directory.

A file someone other than root could have written is refused. A changed file's new version must
parse and compile before the policies of the old one are unloaded; if it does not, or the kernel
refuses it, the old version keeps acting and the reason is listed. A removed file unloads its
policies. ``WatchedFiles`` is a part of ``PolicyManager`` (collector/policy/manager.py), which
provides ``load_file``, ``load_text``, ``delete``, the errors and the kernel's features.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collector.policy import compiler, parser
from collector.policy.metrics import LOAD_ERRORS
from collector.policy.model import PolicyError

if TYPE_CHECKING:
    pass

log = logging.getLogger("tetrapipe.policy")
POLICY_SUFFIXES = (".yaml", ".yml", ".json")


def check_file_owner(path: str) -> None:
    """Refuse a policy file that someone other than root could have written."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise PolicyError("", "not a regular file", 0, path)
    if st.st_uid != 0:
        raise PolicyError("", f"refused: the file is owned by uid {st.st_uid}, not root", 0, path)
    if st.st_mode & 0o022:
        raise PolicyError("", f"refused: the file is writable by group or others (mode "
                              f"{stat.S_IMODE(st.st_mode):04o})", 0, path)


class WatchedFiles:
    dir_files: dict[str, tuple[float, list[str]]]   # watched file → (mtime, names)
    dir_texts: dict[str, str]                        # watched file → text of its loaded version
    errors: dict[str, str]
    host_ns: list[int]
    features: Any
    ringbuf_pages: int

    def load_configured(self, files: list[str], directory: str) -> None:
        """Policies named in the configuration; a bad one is logged and counted, the rest load."""
        for f in files:
            try:
                self.load_file(f)
            except PolicyError as exc:
                log.error("policy not loaded: %s", exc)
        if directory:
            self.scan_dir(directory)

    def scan_dir(self, directory: str) -> None:
        """Load new or changed files of the watched directory, unload the policies of removed ones."""
        try:
            names = sorted(n for n in os.listdir(directory) if n.endswith(POLICY_SUFFIXES))
        except OSError as exc:
            if directory not in self.errors:
                log.error("watched policy directory %s: %s", directory, exc)
            self.errors[directory] = str(exc)
            return
        self.errors.pop(directory, None)
        current = {os.path.join(directory, n) for n in names}
        for path in sorted(set(self.dir_files) - current):
            self._drop_file(path)
        for path in sorted(current):
            try:
                mtime = os.stat(path).st_mtime
            except OSError:
                continue
            known = self.dir_files.get(path)
            if known and known[0] == mtime:
                continue
            if known and known[1] and not self._new_version_compiles(path):
                self.dir_files[path] = (mtime, known[1])  # the old version keeps acting
                continue
            old_text = self.dir_texts.get(path)
            self._drop_file(path)
            try:
                loaded = self.load_file(path)
                self.dir_files[path] = (mtime, [lp.name for lp in loaded])
                self.dir_texts[path] = Path(path).read_text(encoding="utf-8", errors="replace")
            except PolicyError as exc:
                log.error("policy not loaded: %s", exc)
                self.dir_files[path] = (mtime, [])
                if old_text is not None:  # the kernel refused the new version: the old one again
                    self._restore_old(path, mtime, old_text, exc)

    def _new_version_compiles(self, path: str) -> bool:
        """A watched file changed: its new text must parse and compile before the policies of
        the old one are unloaded. If not, the old ones keep acting and the reason is logged
        and listed."""
        try:
            check_file_owner(path)
            text = Path(path).read_text(encoding="utf-8")
            for p in parser.parse_text(text, path, None):
                compiler.compile_policy(p, 1, self.host_ns, self.features, ringbuf_pages=self.ringbuf_pages)
        except (PolicyError, OSError, UnicodeDecodeError) as exc:
            LOAD_ERRORS.labels(reason="invalid").inc()
            why = f"new version refused, the loaded one keeps acting: {exc}"
            self.errors[path] = why
            log.error("policy file %s: %s", path, why)
            self._update_gauge()
            return False
        return True

    def _restore_old(self, path: str, mtime: float, text: str, exc: PolicyError) -> None:
        try:
            loaded = self.load_text(text, path)
        except PolicyError as again:
            log.error("policy file %s: the previous version did not load again either: %s", path, again)
            return
        self.dir_files[path] = (mtime, [lp.name for lp in loaded])
        self.errors[path] = f"new version refused by the kernel, the previous one acts again: {exc}"
        log.error("policy file %s: %s", path, self.errors[path])

    def _drop_file(self, path: str) -> None:
        self.dir_texts.pop(path, None)
        known = self.dir_files.pop(path, None)
        self.errors.pop(path, None)
        for name in known[1] if known else []:
            try:
                self.delete(name)
            except PolicyError:
                pass
