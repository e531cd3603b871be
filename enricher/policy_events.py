"""Policy hook records → ``process_kprobe`` / ``process_tracepoint`` / ``process_lsm`` (lsmhooks)
events.

The enricher never reads policy files: the collector puts a catalog record (REC_POLICY, JSON) in
the raw stream before a policy's first hook record, on every load and unload, and periodically.
Arguments become Tetragon's typed ``KprobeArgument`` objects (int_arg, size_arg, bytes_arg,
truncated_bytes_arg, file_arg, path_arg, string_arg ...), the action Tetragon's enum name
(``KPROBE_ACTION_SIGKILL``). In monitor mode the action is the one that *would* have been taken
and the event carries the tag ``policy-mode:monitor``.
"""

from __future__ import annotations

import json
import logging
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from bpf import records as r
from bpf.names import ACTION_ENUM_NAMES, IO_URING_OPS
from enricher import kernel_args, network_events

log = logging.getLogger("tetrapipe.enricher")

POLICY_EVENTS = Counter(
    "tetrapipe_policy_events", "Policy events built, by policy and hook",
    ["policy", "hook", "binary", "namespace", "pod", "workload", "node_name"],
)
UNKNOWN_POLICY = Counter("tetrapipe_policy_events_unknown_policy",
                         "Hook records whose policy catalog was never seen (dead-lettered)")
MISSING_PROCESS = Counter("tetrapipe_policy_events_missing_process_info",
                          "Policy events whose process was not in the process cache")

ACTION_NAMES = ACTION_ENUM_NAMES  # KprobeAction number → enum name
MONITOR_TAG = "policy-mode:monitor"


class PolicyEventError(ValueError):
    """A hook record that cannot become an event (its policy is unknown)."""


@dataclass
class CatalogEntry:
    policy_id: int
    name: str
    namespace: str
    mode: str
    hooks: dict[int, dict[str, Any]]


def _text(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


def typed_arg(a: r.HookArg, label: str = "") -> dict[str, Any]:
    """One Tetragon KprobeArgument (Avro dict) from a raw hook argument."""
    out: dict[str, Any] = {"label": label}
    if a.type in (r.ARG_INT, r.ARG_UINT, r.ARG_SIZE, r.ARG_LONG):
        raw = int.from_bytes(a.data[:8].ljust(8, b"\0"), "little")
        if a.type == r.ARG_INT:
            v = raw & 0xFFFFFFFF
            out["int_arg"] = v - (1 << 32) if v >= 1 << 31 else v
        elif a.type == r.ARG_UINT:
            out["uint_arg"] = raw & 0x7FFFFFFFFFFFFFFF
        elif a.type == r.ARG_SIZE:
            out["size_arg"] = raw if raw < 1 << 63 else raw - (1 << 64)
        else:
            out["long_arg"] = raw - (1 << 64) if raw >= 1 << 63 else raw
    elif a.type == r.ARG_BYTES:
        if a.flags & r.ARGF_TRUNC:
            out["truncated_bytes_arg"] = {"bytes_arg": a.data, "orig_size": a.orig_size}
        else:
            out["bytes_arg"] = a.data
    elif a.type == r.ARG_INT32_ARR:
        # Tetragon's int32_list_arg (cilium/tetragon PR 4456) is not in its released proto: the
        # ints as text, "[3, 4]", in string_arg
        n = len(a.data) // 4
        out["string_arg"] = str(list(struct.unpack(f"<{n}i", a.data[:n * 4])))
    elif a.type == r.ARG_FILE:
        out["file_arg"] = kernel_args.path_object(a)
    elif a.type == r.ARG_PATH:
        out["path_arg"] = kernel_args.path_object(a)
    elif a.type == r.ARG_SOCK:
        out["sock_arg"] = network_events.sock_arg_from_bytes(a.data)
    elif a.type in kernel_args.KINDS:
        member, value = kernel_args.typed(a)
        out[member] = value
    else:
        out["string_arg"] = _text(a.data)
    return out


RECENT_EXITS = 4096


class PolicyEvents:
    """Keeps the policy catalog per node and builds the events of hook records.

    Hook records come through other ring buffers than the process records, so a batch may hold a
    process's exit before its last hook records, or a hook at an exec before that exec: the
    service sorts each batch by kernel time, builds hooks at an exec after the batch's other
    records (``wants_later``), and processes that exited recently stay findable here.
    """

    def __init__(self, expose_stack_addresses: bool = False) -> None:
        self.expose_stack_addresses = expose_stack_addresses   # Tetragon's --expose-stack-addresses
        self.catalog: dict[tuple[str, int], CatalogEntry] = {}
        self.recent_exits: OrderedDict[int, tuple[int, Any]] = OrderedDict()  # pid → (exit ktime, entry)

    def note_exit(self, rec: r.ExitRecord, builder: Any) -> None:
        """Called before the builder sees an exit: keep the exiting process for late hook records."""
        entry = builder.cache.by_pid.get(rec.header.pid)
        if entry is None:
            return
        self.recent_exits[rec.header.pid] = (rec.header.ktime, entry)
        self.recent_exits.move_to_end(rec.header.pid)
        while len(self.recent_exits) > RECENT_EXITS:
            self.recent_exits.popitem(last=False)

    def wants_later(self, rec: r.HookRecord, builder: Any) -> bool:
        """A hook record made at an exec: build it once the batch's exec record is in the cache."""
        try:
            body = r.decode_hook(rec)
        except r.RecordError:
            return False
        for (_, pid), cat in self.catalog.items():
            if pid == body.policy_id:
                hook = cat.hooks.get(body.hook_id) or {}
                return hook.get("event") == "sched_process_exec"
        return False

    def process_at(self, pid: int, ktime: int, builder: Any) -> Any:
        """The process ``pid`` was at ``ktime``, an exited one included (records of other ring
        buffers than the process program's, e.g. the loader sensor of a spec.loader policy)."""
        return self._process(pid, ktime, builder)

    def _process(self, pid: int, ktime: int, builder: Any) -> Any:
        entry = builder.cache.by_pid.get(pid)
        if entry is not None and entry.ktime <= ktime:
            return entry
        recent = self.recent_exits.get(pid)
        if recent is not None and ktime <= recent[0]:
            return recent[1]
        return builder.process_for(pid)

    def on_catalog(self, rec: r.PolicyRecord, node: str) -> None:
        try:
            doc = json.loads(rec.body)
            pid = int(doc["policy_id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise PolicyEventError(f"malformed policy catalog record: {exc}") from exc
        if doc.get("state") == "deleted":
            self.catalog.pop((node, pid), None)
            return
        hooks = {int(h["id"]): h for h in doc.get("hooks", [])}
        self.catalog[(node, pid)] = CatalogEntry(pid, doc.get("name", ""), doc.get("namespace", ""),
                                                 doc.get("mode", "enforce"), hooks)

    def _common(self, entry: CatalogEntry, hook: dict[str, Any], h: r.Header, builder: Any, node: str,
                args: list[dict[str, Any]], action: int, monitor: bool) -> dict[str, Any]:
        """What every policy event carries: process, parent (ancestors), args, policy, action,
        message and tags; counted in tetrapipe_policy_events_total."""
        proc_entry = self._process(h.pid, h.ktime, builder)
        parent_entry = None
        if proc_entry is not None:
            process = dict(proc_entry.process)
            parent_entry = builder.cache.get(proc_entry.parent_exec_id)
            parent = dict(parent_entry.process) if parent_entry is not None else None
        else:
            MISSING_PROCESS.inc()
            process = {"pid": h.pid, "tid": h.tid, "flags": "miss"}
            parent = None
        process["tid"] = h.tid
        tags = list(hook.get("tags") or [])
        if monitor:
            tags.append(MONITOR_TAG)
        common: dict[str, Any] = {
            "process": process, "args": args, "policy_name": entry.name,
            "action": ACTION_NAMES.get(action, ""), "message": hook.get("message", ""), "tags": tags,
        }
        if parent is not None:
            common["parent"] = parent
        kind = {"tracepoint": "tracepoint", "lsmhook": "lsm"}.get(hook.get("kind", ""), "kprobe")
        if parent_entry is not None and kind in getattr(builder, "ancestors_for", ()):
            common["ancestors"] = builder._ancestors(parent_entry)  # --enable-ancestors kprobe,tracepoint
        pod = process.get("pod") or {}
        POLICY_EVENTS.labels(policy=entry.name, hook=hook.get("function_name", ""),
                             binary=process.get("binary", ""), namespace=pod.get("namespace", ""),
                             pod=pod.get("name", ""), workload=pod.get("workload", ""), node_name=node).inc()
        return common

    def _hook_of(self, node: str, policy_id: int, hook_id: int) -> tuple[CatalogEntry, dict[str, Any]]:
        entry = self.catalog.get((node, policy_id))
        if entry is None:
            UNKNOWN_POLICY.inc()
            raise PolicyEventError(f"hook record of unknown policy id {policy_id} (no catalog seen)")
        hook = entry.hooks.get(hook_id)
        if hook is None:
            UNKNOWN_POLICY.inc()
            raise PolicyEventError(f"hook record of policy {entry.name!r} names unknown hook {hook_id}")
        return entry, hook

    def on_connect_deny(self, rec: r.ConnectDenyRecord, node: str, boot_ns: int,
                        builder: Any) -> dict[str, Any]:
        """A connect the cgroup/connect4+6 programs refused → the policy's ``tcp_connect``
        ``process_kprobe`` event with the socket as Tetragon's ``sock_arg``, the action
        (KPROBE_ACTION_OVERRIDE) and, where the hook asks for its return value, ``-EPERM``."""
        entry, hook = self._hook_of(node, rec.policy_id, rec.hook_id)
        sock = network_events.sock_arg_from_deny(rec)
        specs = hook.get("args") or [{"type": "sock", "label": ""}]
        args = [{"label": a.get("label", ""), "sock_arg": sock} for a in specs
                if a.get("type") in ("sock", "sockaddr", "socket")] or [{"label": "", "sock_arg": sock}]
        common = self._common(entry, hook, rec.header, builder, node, args, rec.action, False)
        kprobe = {**common, "function_name": hook.get("function_name", "tcp_connect")}
        if hook.get("return"):
            ret_spec = hook.get("return_arg") or {}
            kprobe["return"] = {"label": ret_spec.get("label", ""), "int_arg": rec.ret}
        return builder.envelope(node, boot_ns + rec.header.ktime, process_kprobe=kprobe)

    def on_hook(self, rec: r.HookRecord, node: str, boot_ns: int, builder: Any) -> dict[str, Any]:
        body = r.decode_hook(rec)
        entry, hook = self._hook_of(node, body.policy_id, body.hook_id)
        h = rec.header
        specs = hook.get("args") or []
        args = [typed_arg(a, specs[i].get("label", "") if i < len(specs) else "")
                for i, a in enumerate(body.args)]
        common = self._common(entry, hook, h, builder, node, args, body.action,
                              bool(body.flags & r.HOOK_MONITOR))
        ts = boot_ns + h.ktime
        if body.flags & r.HOOK_IO_URING:   # an io_uring request judged as the hook's syscall
            common["tags"] = [*common["tags"], "io_uring", f"io_uring.{IO_URING_OPS.get(body.ret, body.ret)}"]
        if body.flags & r.HOOK_SIGNAL_FAILED:   # bpf_send_signal failed: the collector sent it, late
            common["tags"] = [*common["tags"], "signal_sent_late"]
        if hook.get("kind") == "uprobe":
            return builder.envelope(node, ts, process_uprobe={
                **common, "path": hook.get("path", ""), "symbol": hook.get("symbol", ""),
                "offset": int(hook.get("offset", 0))})
        if hook.get("kind") == "tracepoint":
            return builder.envelope(node, ts, process_tracepoint={
                **common, "subsys": hook.get("subsys", ""), "event": hook.get("event", "")})
        if hook.get("kind") == "lsmhook":   # Tetragon's process_lsm (no return value)
            return builder.envelope(node, ts, process_lsm={**common, "function_name": hook.get("function_name", "")})
        kprobe = {**common, "function_name": hook.get("function_name", "")}
        for key, st in (("kernel_stack_trace", body.kernel_stack), ("user_stack_trace", body.user_stack)):
            if st is not None:   # Post's stack traces, symbolised by the collector (collector/stacks.py)
                kprobe[key] = [{"address": _s64(f.address) if self.expose_stack_addresses else 0,
                                "offset": _s64(f.offset), "symbol": f.symbol, "module": f.module}
                               for f in st.frames]
        if body.flags & r.HOOK_RETURN:
            ret_spec = hook.get("return_arg") or {}
            if ret_spec.get("type") in ("size_t", "uint64", "ulong"):
                kprobe["return"] = {"label": ret_spec.get("label", ""), "size_arg": body.ret}
            elif ret_spec.get("type") in ("long", "int64", "sint64"):
                kprobe["return"] = {"label": ret_spec.get("label", ""), "long_arg": body.ret}
            else:
                ret = max(min(body.ret, 2**31 - 1), -(2**31))
                kprobe["return"] = {"label": ret_spec.get("label", ""), "int_arg": ret}
        return builder.envelope(node, ts, process_kprobe=kprobe)


def _s64(v: int) -> int:
    """A u64 as the Avro long carries it (two's complement; exporters/protojson.py turns it back)."""
    return v - (v >> 63 << 64)
