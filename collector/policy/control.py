"""The collector's control socket: JSON lines over a unix socket (mode 0600, root only).

Requests, one JSON object per line, each answered by one line:
  {"op": "add", "yaml": "<policy text>", "source": "<file name>", "mode": "enforce"|"monitor"|null}
      → {"ok": true, "loaded": [<policy info>]} | {"ok": false, "error": "<file>:<line>: <path>: <reason>"}
  {"op": "delete", "name": "<policy>"} → {"ok": true} | {"ok": false, "error": ...}
  {"op": "list"} → {"ok": true, "policies": [<policy info>, ...]}
Loading compiles a BPF program (about 1.5 s); it runs off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from typing import Any

from collector.policy.manager import PolicyManager
from collector.policy.model import PolicyError

log = logging.getLogger("tetrapipe.policy")
MAX_REQUEST = 4 * 1024 * 1024


async def serve(path: str, mgr: PolicyManager) -> asyncio.AbstractServer:
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # left by a previous collector
    except FileNotFoundError:
        pass
    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(lambda r, w: _client(r, w, mgr), path, limit=MAX_REQUEST)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    log.info("control socket %s", path)
    return server


async def _client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mgr: PolicyManager) -> None:
    try:
        while line := await reader.readline():
            try:
                req = json.loads(line)
                reply = await handle(req, mgr)
            except (ValueError, TypeError) as exc:
                reply = {"ok": False, "error": f"bad request: {exc}"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
    except (ConnectionError, asyncio.LimitOverrunError, ValueError):
        pass
    finally:
        writer.close()


async def handle(req: dict[str, Any], mgr: PolicyManager) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    op = req.get("op")
    try:
        if op == "add":
            text = req.get("yaml")
            if not isinstance(text, str):
                return {"ok": False, "error": "add needs the policy text in \"yaml\""}
            loaded = await loop.run_in_executor(None, mgr.load_text, text, str(req.get("source") or ""),
                                                req.get("mode"))
            return {"ok": True, "loaded": [lp.info() for lp in loaded]}
        if op == "delete":
            await loop.run_in_executor(None, mgr.delete, str(req.get("name") or ""))
            return {"ok": True}
        if op == "list":
            return {"ok": True, "policies": mgr.list()}
    except PolicyError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": False, "error": f"unknown op {op!r} (add, delete, list)"}


async def watch_dir(directory: str, mgr: PolicyManager, stop: asyncio.Event, every_s: float = 2.0) -> None:
    """Poll the watched directory: new or changed files load, removed files unload."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except TimeoutError:
            pass
        if not stop.is_set():
            await loop.run_in_executor(None, mgr.scan_dir, directory)
