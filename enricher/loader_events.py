"""Loader sensor records (bpf/loader.c) → Tetragon ``process_loader`` events: the path of a file
a process mapped executable and its GNU build id when the kernel side could read it (bytes,
base64 in JSON), so a user can alert on a vulnerable library by path or by build id."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bpf import records as r

if TYPE_CHECKING:
    from enricher.event_builder import EventBuilder


def build(builder: EventBuilder, rec: r.LoaderRecord, node: str, boot_ns: int,
          entry: Any = None) -> dict[str, Any]:
    """``entry``: the process, when the caller found it (e.g. one that exited since: the loader
    sensor of a ``spec.loader`` policy has its own ring buffer, so its records can come after
    the exit); else the pid's current process."""
    h = rec.header
    body: dict[str, Any] = {
        "path": rec.path.decode("utf-8", "backslashreplace"),
        "buildid": rec.buildid,
    }
    if entry is None:
        entry = builder.process_for(h.pid)
    if entry is not None:
        body["process"] = dict(entry.process)
        parent = builder.cache.get(entry.parent_exec_id)
        if parent is not None:
            body["parent"] = dict(parent.process)
    else:
        body["process"] = {"pid": h.pid, "tid": h.tid, "flags": "miss"}
    return builder.envelope(node, boot_ns + h.ktime, process_loader=body)
