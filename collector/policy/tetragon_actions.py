"""Tetragon's user-space actions ``GetUrl`` (argUrl) and ``DnsLookup`` (argFqdn): a "canary"
notification when a selector matches (an HTTP GET of the URL, a DNS lookup of the name).

The kernel only counts the selector's matches (``sel_counts``, as for every selector) and posts
the event with the action's number (KPROBE_ACTION_GETURL / _DNSLOOKUP); the policy manager reads
the counts every ``COUNTS_EVERY_S`` and hands each new match of such a selector to
:class:`UserActions`. It never blocks the caller: a bounded queue (a full queue drops, counted),
one worker thread, one request per target at most every ``min_interval_s`` (matches in between
are coalesced, counted ``ratelimited``), and a timeout on every request.
"""

from __future__ import annotations

import queue
import re
import socket
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass

from prometheus_client import Counter

from collector.policy.yamldoc import Ctx

USER_ACTIONS = Counter("tetrapipe_tracingpolicy_user_actions",
                       "GetUrl/DnsLookup actions by result (sent, failed, dropped: queue full, "
                       "ratelimited: coalesced with the previous request to the same target)",
                       ["action", "result", "policy"])
FQDN_RE = re.compile(r"(?=.{1,253}\.?$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*"
                     r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.?")


# ---- parsing (called by collector/policy/parser.py) ----------------------------------------------

def parse_url(c: Ctx, raw: object, path: str) -> str:
    url = c.string(raw, path, required=True)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise c.fail(path, f"{url!r} is not an http:// or https:// URL with a host")
    return url


def parse_fqdn(c: Ctx, raw: object, path: str) -> str:
    name = c.string(raw, path, required=True)
    if not FQDN_RE.fullmatch(name):
        raise c.fail(path, f"{name!r} is not a domain name")
    return name


# ---- the worker ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    action: str        # "GetUrl" or "DnsLookup"
    target: str        # the URL or the name
    policy: str


class UserActions:
    def __init__(self, maxlen: int = 64, min_interval_s: float = 1.0, timeout_s: float = 3.0) -> None:
        self.queue: queue.Queue[Request | None] = queue.Queue(maxlen)
        self.min_interval_s = min_interval_s
        self.timeout_s = timeout_s
        self._last: dict[tuple[str, str], float] = {}
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # no proxy from the environment: the canary goes where the policy says
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self.done: list[tuple[Request, str]] = []   # the last results (tests, debugging), bounded

    def submit(self, action: str, target: str, policy: str, matches: int = 1) -> bool:
        """One or more new matches of a selector with this action; never blocks."""
        now = time.monotonic()
        key = (action, target)
        last = self._last.get(key)
        if last is not None and now - last < self.min_interval_s:
            USER_ACTIONS.labels(action=action, result="ratelimited", policy=policy).inc(matches)
            return False
        try:
            self.queue.put_nowait(Request(action, target, policy))
        except queue.Full:
            USER_ACTIONS.labels(action=action, result="dropped", policy=policy).inc(matches)
            return False
        self._last[key] = now
        if len(self._last) > 4096:   # targets come from loaded policies; bound it all the same
            self._last.clear()
        if matches > 1:
            USER_ACTIONS.labels(action=action, result="ratelimited", policy=policy).inc(matches - 1)
        self._start()
        return True

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tetrapipe-user-actions", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        with self._lock:
            t, self._thread = self._thread, None
        if t is not None:
            try:
                self.queue.put(None, timeout=self.timeout_s)
            except queue.Full:
                pass
            t.join(self.timeout_s * 2)

    def _run(self) -> None:
        while True:
            req = self.queue.get()
            if req is None:
                return
            result = self._do(req)
            USER_ACTIONS.labels(action=req.action, result=result, policy=req.policy).inc()
            self.done = (self.done + [(req, result)])[-32:]

    def _do(self, req: Request) -> str:
        try:
            if req.action == "GetUrl":
                with self._opener.open(req.target, timeout=self.timeout_s) as resp:
                    resp.read(4096)
            else:
                _resolve(req.target, self.timeout_s)
        except Exception:  # noqa: BLE001 - a canary that fails is counted, never raised
            return "failed"
        return "sent"


def _resolve(name: str, timeout_s: float) -> None:
    """getaddrinfo has no timeout: run it in a helper thread and stop waiting after ``timeout_s``."""
    out: list[BaseException | None] = []

    def go() -> None:
        try:
            socket.getaddrinfo(name, None)
            out.append(None)
        except OSError as exc:
            out.append(exc)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(timeout_s)
    if not out:
        raise TimeoutError(f"DNS lookup of {name} took longer than {timeout_s}s")
    if out[0] is not None:
        raise out[0]
