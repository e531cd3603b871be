"""Builds Tetragon-shaped events (schemas/event.avsc) from decoded records and the process cache.

Field meanings follow Tetragon's api/v1/tetragon: ``uid`` is the effective uid, ``arguments`` is
one string (argv[1:], quoted where an argument holds a space), ``flags`` is Tetragon's
space-separated debug string, ``exec_id`` is base64("<node>:<ktime>:<pid>").
"""

from __future__ import annotations

import os
import signal as signal_mod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter

from bpf import records as r
from enricher import loader_events, network_events
from enricher.process_cache import Entry, ProcessCache, exec_id
from schemas import capabilities
from tetrapipe.redaction import RedactionFilter, redact_process

REDACTED_PROCESSES = Counter("tetrapipe_enricher_redacted_processes",
                             "Process entries whose arguments or environment the redaction filters changed")

S_ISUID = 0o4000
S_ISGID = 0o2000
INIT_NS_INUMS = (0xEFFFFFFE, 0xEFFFFFFF, 0, 0xEFFFFFFC, 0xEFFFFFFC, 0, 0xEFFFFFFA, 0xEFFFFFFA,
                 0xEFFFFFFB, 0xEFFFFFFD)


SECUREBITS = ["SecBitNoRoot", "SecBitNoRootLocked", "SecBitNoSetUidFixup",
              "SecBitNoSetUidFixupLocked", "SecBitKeepCaps", "SecBitKeepCapsLocked",
              "SecBitNoCapAmbientRaise", "SecBitNoCapAmbientRaiseLocked"]


def securebits_names(bits: int) -> list[str]:
    """Tetragon's SecureBitsType names of the set bits."""
    return [name for i, name in enumerate(SECUREBITS) if bits >> i & 1]


cap_names = capabilities.names  # mask → Tetragon's CapabilitiesType names (at the edges only)


def namespaces(inums: tuple[int, ...] | list[int], host_ns: list[int]) -> dict[str, Any]:
    """Tetragon's Namespaces of the 10 inums an exec record carries (0 = not read: left out)."""
    hns = host_ns or INIT_NS_INUMS
    return {name: {"inum": inum, "is_host": inum == hns[i]}
            for i, (name, inum) in enumerate(zip(r.NS_NAMES, inums, strict=False)) if inum}


def text(b: bytes) -> str:
    """Kernel bytes as a string: invalid UTF-8 is kept visible as \\xNN escapes."""
    return b.decode("utf-8", "backslashreplace")


def join_args(raw: bytes) -> str:
    """argv[1:] joined by spaces; an argument with a space (or empty) is double-quoted."""
    parts = raw.split(b"\0")
    if parts and parts[-1] == b"" and raw.endswith(b"\0"):
        parts.pop()
    out = []
    for p in parts[1:]:
        s = text(p)
        out.append(f'"{s}"' if (" " in s or s == "") else s)
    return " ".join(out)


def signal_name(sig: int) -> str:
    try:
        return signal_mod.Signals(sig).name
    except ValueError:
        return f"SIG{sig}"


EXEC_FLAG_ORDER = [
    (r.F_TRUNC_FILENAME, "truncFilename"), (r.F_TRUNC_ARGS, "truncArgs"),
    (r.F_ERR_FILENAME, "errorFilename"), (r.F_ERR_ARGS, "errorArgs"),
    (r.F_ROOT_CWD, "rootcwd"), (r.F_ERR_CWD, "errorCWD"), (r.F_TRUNC_CWD, "truncCWD"),
]


@dataclass
class EventBuilder:
    """Keeps the process cache and turns records into events (dicts of schemas/event.avsc)."""

    cache: ProcessCache
    ancestors_for: frozenset[str] = frozenset()
    # Process fields from the process's cgroup and the pod index (docker, pod): see
    # enricher/metadata/resolver.py
    pod_resolver: Callable[[Entry], dict[str, Any] | None] | None = None
    node_labels: dict[str, str] = field(default_factory=dict)
    cluster_name: str = ""
    # cgroup id → (leaf name, ancestor names) learned from exec records: a fork record carries
    # only the cgroup id
    cgroup_names: dict[int, tuple[str, str]] = field(default_factory=dict)
    # Tetragon's redaction filters (tetrapipe/redaction.py): applied once to each entry made by
    # an exec (a clone copies its parent's redacted entry), so no event carries the secret
    redaction: list[RedactionFilter] = field(default_factory=list)
    # Tetragon's --enable-process-cred (cap, process_credentials, binary_properties) and
    # --enable-process-ns (ns): off by default, as there; set on the process when it is made, so
    # it shows wherever the process does (process, parent, ancestors of every event type)
    process_cred: bool = False
    process_ns: bool = False

    # ---- records → events ---------------------------------------------------------------
    def on_record(self, rec: r.Record, node: str, boot_ns: int, host_ns: list[int]) -> dict[str, Any] | None:
        if isinstance(rec, r.ExecRecord):
            return self._exec(rec, node, boot_ns, host_ns)
        if isinstance(rec, r.ExitRecord):
            return self._exit(rec, node, boot_ns)
        if isinstance(rec, r.ForkRecord):
            self._fork(rec, node, boot_ns)
            return None
        if isinstance(rec, r.SockRecord):
            return network_events.build(self, rec, node, boot_ns)
        if isinstance(rec, r.LoaderRecord):
            return loader_events.build(self, rec, node, boot_ns)
        return None

    def envelope(self, node: str, ts_ns: int, **body: Any) -> dict[str, Any]:
        ev: dict[str, Any] = {"node_name": node, "time": ts_ns, **body}
        if self.cluster_name:
            ev["cluster_name"] = self.cluster_name
        if self.node_labels:
            ev["node_labels"] = dict(self.node_labels)
        return ev

    def _exec(self, rec: r.ExecRecord, node: str, boot_ns: int, host_ns: list[int]) -> dict[str, Any]:
        h = rec.header
        procfs = h.kind == r.REC_PROCFS
        eid = exec_id(node, h.ktime, h.pid)
        parent = self.cache.current(rec.ppid, "parent") if rec.ppid else None
        prev = self.cache.by_pid.get(h.pid)
        flags = ["procFS"] if procfs else ["execve"]
        flags += [name for bit, name in EXEC_FLAG_ORDER if rec.flags & bit]
        if not procfs and prev is not None and "clone" in prev.process.get("flags", "").split():
            flags.append("clone")
        cwd = text(rec.cwd)
        binary = text(rec.filename)
        if binary and not binary.startswith(("/", "[")) and cwd:
            binary = os.path.normpath(os.path.join(cwd, binary))
        process: dict[str, Any] = {
            "exec_id": eid,
            "pid": h.pid,
            "uid": rec.euid,
            "cwd": cwd,
            "binary": binary,
            "arguments": join_args(rec.args),
            "flags": " ".join(flags),
            "start_time": boot_ns + h.ktime,
            "auid": rec.auid,
            "parent_exec_id": parent.exec_id if parent else "",
            "tid": h.tid,
        }
        if self.process_cred:
            self._add_cred(process, rec, binary)
        if self.process_ns:
            process["ns"] = namespaces(rec.ns, host_ns)
        if self.redaction:
            self.redact(process)
        entry = Entry(eid, h.pid, h.ktime, rec.start_time, process,
                      parent.exec_id if parent else "", rec.cgroup_id, text(rec.cgroup_name),
                      rec.nspid, rec.ns, (rec.cap_permitted, rec.cap_effective, rec.cap_inheritable),
                      cgroup_ancestors=text(rec.cgroup_ancestors))
        if rec.cgroup_id:
            self._learn_cgroup(rec.cgroup_id, entry.cgroup_name, entry.cgroup_ancestors)
        self._attach_pod(entry, parent)
        self.cache.add(entry)
        body: dict[str, Any] = {"process": dict(process)}
        if parent is not None:
            body["parent"] = dict(parent.process)
        if "exec" in self.ancestors_for or "base" in self.ancestors_for:
            body["ancestors"] = self._ancestors(parent)
        return self.envelope(node, boot_ns + h.ktime, process_exec=body)

    @staticmethod
    def _add_cred(process: dict[str, Any], rec: r.ExecRecord, binary: str) -> None:
        """cap (bit masks: names are made at the edges), process_credentials, binary_properties."""
        process["cap"] = capabilities.masks(rec.cap_permitted, rec.cap_effective, rec.cap_inheritable)
        process["process_credentials"] = {
            "uid": rec.uid, "gid": rec.gid, "euid": rec.euid, "egid": rec.egid,
            "suid": rec.suid, "sgid": rec.sgid, "fsuid": rec.fsuid, "fsgid": rec.fsgid,
            "securebits": securebits_names(rec.securebits),
        }
        props = EventBuilder._binary_properties(rec, binary)
        if props:
            process["binary_properties"] = props

    @staticmethod
    def _binary_properties(rec: r.ExecRecord, binary: str) -> dict[str, Any] | None:
        setuid = bool(rec.exe_mode & S_ISUID)
        setgid = bool(rec.exe_mode & S_ISGID)
        if not (setuid or setgid or (rec.exe_ino and rec.exe_nlink == 0)):
            return None
        changed = []
        if setuid and rec.euid != rec.uid:
            changed.append("PRIVILEGES_RAISED_EXEC_FILE_SETUID")
        if setgid and rec.egid != rec.gid:
            changed.append("PRIVILEGES_RAISED_EXEC_FILE_SETGID")
        props: dict[str, Any] = {
            "privileges_changed": changed,
            "file": {"inode": {"number": rec.exe_ino, "links": rec.exe_nlink}, "path": binary},
        }
        if setuid:
            props["setuid"] = rec.euid
        if setgid:
            props["setgid"] = rec.egid
        return props

    def _fork(self, rec: r.ForkRecord, node: str, boot_ns: int) -> None:
        h = rec.header
        parent = self.cache.current(rec.ppid, "parent")
        if parent is None:
            return
        eid = exec_id(node, rec.start_time, h.pid)
        process = dict(parent.process)
        process.update(exec_id=eid, pid=h.pid, tid=h.tid, start_time=boot_ns + rec.start_time,
                       parent_exec_id=parent.exec_id, flags="clone", refcnt=1)
        process.pop("binary_properties", None)
        cg_name, cg_anc = parent.cgroup_name, parent.cgroup_ancestors
        moved = bool(rec.cgroup_id) and rec.cgroup_id != parent.cgroup_id
        if moved and rec.cgroup_id in self.cgroup_names:
            cg_name, cg_anc = self.cgroup_names[rec.cgroup_id]
        entry = Entry(eid, h.pid, rec.start_time, rec.start_time, process, parent.exec_id,
                      rec.cgroup_id or parent.cgroup_id, cg_name, 0, parent.ns, parent.caps,
                      cgroup_ancestors=cg_anc)
        if moved:
            entry.process.pop("pod", None)
            entry.process.pop("docker", None)
            self._attach_pod(entry, parent)
        self.cache.add(entry)

    def _exit(self, rec: r.ExitRecord, node: str, boot_ns: int) -> dict[str, Any] | None:
        h = rec.header
        entry = self.cache.current(h.pid, "exit")
        if entry is None:
            return None
        self._late_pod(entry)
        parent = self.cache.get(entry.parent_exec_id)
        code = rec.exit_code
        sig = code & 0x7F
        body: dict[str, Any] = {"process": dict(entry.process), "time": boot_ns + h.ktime}
        if sig:
            body["signal"] = signal_name(sig)
        else:
            body["status"] = (code >> 8) & 0xFF
        if parent is not None:
            body["parent"] = dict(parent.process)
        if "exit" in self.ancestors_for or "base" in self.ancestors_for:
            body["ancestors"] = self._ancestors(parent)
        self.cache.exit(entry)
        body["process"]["refcnt"] = max(entry.refcnt, 0)
        return self.envelope(node, boot_ns + h.ktime, process_exit=body)

    # ---- helpers --------------------------------------------------------------------------
    def redact(self, process: dict[str, Any]) -> bool:
        """Apply the redaction filters to a Process record in place; True when it changed."""
        if redact_process(self.redaction, process):
            REDACTED_PROCESSES.inc()
            return True
        return False

    def _ancestors(self, parent: Entry | None, limit: int = 64) -> list[dict[str, Any]]:
        out = []
        cur = self.cache.get(parent.parent_exec_id) if parent else None
        while cur is not None and len(out) < limit:
            out.append(dict(cur.process))
            cur = self.cache.get(cur.parent_exec_id)
        return out

    def _learn_cgroup(self, cgid: int, name: str, ancestors: str) -> None:
        if len(self.cgroup_names) >= 16384 and cgid not in self.cgroup_names:
            self.cgroup_names.pop(next(iter(self.cgroup_names)))
        self.cgroup_names[cgid] = (name, ancestors)

    def _attach_pod(self, entry: Entry, parent: Entry | None = None) -> None:
        """docker, pod and in_init_tree of a new entry. in_init_tree: the process is its
        container's init (pid 1 in the container's pid namespace) or descends from it without
        leaving the container (a ``kubectl exec`` comes from outside: not in the init tree)."""
        if self.pod_resolver is None:
            return
        found = self.pod_resolver(entry) or {}
        entry.process.update(found)
        docker = found.get("docker", "")
        if docker:
            init = entry.nspid == 1 or (
                parent is not None and parent.process.get("in_init_tree", False)
                and parent.process.get("docker") == docker)
            entry.process["in_init_tree"] = bool(init)

    def refresh_pod(self, entry: Entry) -> bool:
        """Look the pod of an entry up again (late pod metadata); True when it has one now."""
        if self.pod_resolver is None:
            return False
        found = self.pod_resolver(entry) or {}
        if "pod" in found:
            entry.process["pod"] = found["pod"]
            self.cache.listener.changed(entry)
            return True
        return False

    def process_for(self, pid: int) -> Entry | None:
        """The current incarnation of pid (policy events attach their process with it)."""
        entry = self.cache.current(pid, "event")
        if entry is not None:
            self._late_pod(entry)
        return entry

    def _late_pod(self, entry: Entry) -> None:
        """A process in a container whose pod was not known when its entry was made (e.g. a
        clone forked before the pod arrived) gets the pod now, if the index has it."""
        if "docker" in entry.process and "pod" not in entry.process:
            self.refresh_pod(entry)
