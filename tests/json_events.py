"""Real event dicts for JSON export tests, built from the seed's Tetragon process_exec example."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

from exporters import protojson

SEED = Path(__file__).resolve().parent / "data" / "seed" / "process_exec-example.json"  # verbatim copy


def seed_doc() -> dict[str, Any]:
    return json.loads(SEED.read_text())


def exec_event(pid: int = 13604, binary: str = "/bin/bash", args: str = "", namespace: str = "default",
               pod: str = "xwing", labels: dict[str, str] | None = None, **process: Any) -> dict[str, Any]:
    """An Avro event dict: the seed exec with the given process fields changed."""
    doc = copy.deepcopy(seed_doc())
    p = doc["process_exec"]["process"]
    p.update({"pid": pid, "binary": binary, "arguments": args, **process})
    if namespace is None:
        p.pop("pod", None)
    else:
        p["pod"]["namespace"] = namespace
        p["pod"]["name"] = pod
        if labels is not None:
            p["pod"]["pod_labels"] = labels
    return protojson.from_protojson(doc)


def exit_event(pid: int = 13604, binary: str = "/bin/bash", status: int = 0) -> dict[str, Any]:
    doc = copy.deepcopy(seed_doc())
    body = doc.pop("process_exec")
    doc["process_exit"] = {"process": {**body["process"], "pid": pid, "binary": binary},
                           "parent": body["parent"], "status": status}
    return protojson.from_protojson(doc)


def kprobe_event(pid: int = 13604, binary: str = "/usr/bin/vi", function: str = "__x64_sys_write",
                 policy: str = "fd-install", path: str = "/tmp/forbidden/donotchange.me",
                 size: int = 32) -> dict[str, Any]:
    doc = copy.deepcopy(seed_doc())
    body = doc.pop("process_exec")
    doc["process_kprobe"] = {"process": {**body["process"], "pid": pid, "binary": binary},
                             "parent": body["parent"], "function_name": function, "policy_name": policy,
                             "args": [{"file_arg": {"path": path}},
                                      {"bytes_arg": base64.b64encode(b"x" * size).decode()},
                                      {"size_arg": str(size)}],
                             "action": "KPROBE_ACTION_POST"}
    return protojson.from_protojson(doc)
