"""Policy lifecycle in the collector: load (parse → compile → bcc → strings filled → enabled →
ring buffer drained), unload, list; files given at start, a watched directory, the control socket.

A policy is loaded whole or not at all; a bad one is refused with its reason and the policies
already loaded keep acting. Every load and unload puts a catalog record (REC_POLICY) in the raw
stream so the enricher, which never reads policy files, can name hooks and arguments.
"""

from __future__ import annotations

import ctypes
import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpf import records
from collector import connect_deny, kernel_features, loader, sensors, uprobes
from collector.drain import RecordQueue, RingBufferDrain
from collector.kernel_features import KernelFeatures
from collector.policy import compiler, doom, kattach, netsel, parser, proc_state, uncaught
from collector.policy.connect_rules import ConnectRules
from collector.policy.inode_sets import InodeSets
from collector.policy.metrics import LOAD_ERRORS, LOADED, SELECTOR_ACTIONS
from collector.policy.model import Policy, PolicyError
from collector.policy.pod_scope import PodScope
from collector.policy.tetragon_actions import UserActions
from collector.policy.uprobe_paths import ContainerUprobes
from collector.policy.watched_files import WatchedFiles, check_file_owner
from collector.stacks import StackSymbolizer

log = logging.getLogger("tetrapipe.policy")

STATES = ("enabled", "disabled", "load_error", "error")
CATALOG_EVERY_S = 30.0
COUNTS_EVERY_S = 1.0
POLICY_RINGBUF_PAGES = 256


@dataclass
class Loaded:
    policy: Policy
    compiled: compiler.Compiled
    policy_id: int
    bpf: Any                          # None for a policy that only asks for loader events
    drain: RingBufferDrain | None
    loaded_at: float = field(default_factory=time.time)
    enabled: bool = True
    counts_seen: dict[int, int] = field(default_factory=dict)
    lost_seen: int = 0
    link_fds: list[int] = field(default_factory=list)   # fmod_ret attachments (closed at unload)

    @property
    def name(self) -> str:
        return self.policy.name

    def info(self) -> dict[str, Any]:
        p = self.policy
        return {
            "name": p.name, "namespace": p.namespace, "kind": p.kind, "mode": p.mode,
            "state": "enabled" if self.enabled else "disabled",
            "id": self.policy_id, "source": p.source,
            "hooks": [{"function_name": h.function_name, "serve": h.serve, "mechanism": h.mechanism}
                      for h in self.compiled.hooks],
            "loader": p.loader,
            "notices": p.notices + self.compiled.notices,
        }

    def catalog(self, state: str = "loaded") -> dict[str, Any]:
        p = self.policy
        hooks = []
        for ch in self.compiled.hooks:
            h = ch.hook
            hooks.append({
                "id": ch.hook_id, "kind": h.kind, "function_name": ch.function_name,
                "subsys": h.subsystem, "event": h.event, "return": h.return_,
                "args": [{"index": a.index, "type": a.type, "label": a.label,
                          "return_copy": a.return_copy} for a in h.args + h.data],
                "return_arg": ({"type": h.return_arg.type, "label": h.return_arg.label}
                               if h.return_arg else None),
                "message": h.message, "tags": h.tags,
                "selectors": [[a.action for a in s.match_actions] or ["Post"] for s in h.selectors],
            })
            if ch.uprobe is not None:
                hooks[-1].update(path=ch.uprobe.path, symbol=ch.uprobe.symbol, offset=ch.uprobe.offset)
        return {"policy_id": self.policy_id, "name": p.name, "namespace": p.namespace, "mode": p.mode,
                "state": state, "hooks": hooks}


class PolicyManager(WatchedFiles, ConnectRules):
    def __init__(self, queue: RecordQueue, host_ns: list[int], features: KernelFeatures | None = None,
                 ringbuf_pages: int = POLICY_RINGBUF_PAGES, pod_scope: PodScope | None = None) -> None:
        """``features``: what the kernel offers hooks (kernel_features.probe(), probed by the caller
        once); None probes here."""
        self.queue = queue
        self.pod_scope = pod_scope               # None: the Kubernetes API is off, scoped policies refused
        self.host_ns = host_ns
        self.features = features if features is not None else kernel_features.probe()
        self.ringbuf_pages = ringbuf_pages
        self.loaded: dict[str, Loaded] = {}
        self.errors: dict[str, str] = {}       # source or name → last load error
        self.dir_files: dict[str, tuple[float, list[str]]] = {}  # watched file → (mtime, names)
        self.dir_texts: dict[str, str] = {}  # watched file → text of its loaded version
        self._lock = threading.RLock()
        self._last_catalog = 0.0
        self._last_counts = 0.0
        self.connect_deny: connect_deny.ConnectDeny | None = None  # Override on tcp_connect
        self._connect_drain: RingBufferDrain | None = None        # its refusal records
        self._connect_owners: list[tuple[str, str]] = []  # (policy, namespace) of each connect rule
        self._connect_seen: list[int] = []                 # refusals per rule already counted
        # spec.loader: the loader sensor as a program of its own while an enabled policy asks for
        # it, unless the collector runs it already (--enable-loader-events: ``loader_builtin``)
        self.loader_builtin = False
        self.loader_sensor: tuple[Any, RingBufferDrain] | None = None
        self.loader_ringbuf_pages = 64
        self._loader_lost = 0                 # drops of a loader sensor turned off, not yet reported
        self.order_after: RingBufferDrain | None = None   # the process program's drain (exec first)
        self.uncaught = uncaught.Watcher(loader.load_program)  # roads the policies do not judge, counted
        # file filters also by (device, inode), resolved under this root and kept current
        self.inode_sets = InodeSets(compiler.INODE_SET_MAX)
        self.inode_root = "/"
        self.user_actions = UserActions()   # GetUrl/DnsLookup, done here as the counts arrive
        self._update_gauge()

    # ---- load / unload ---------------------------------------------------------------------
    def load_text(self, text: str, source: str = "", mode: str | None = None,
                  remember_error: bool = False) -> list[Loaded]:
        """Parse, compile and load every policy in ``text``: all of them or none. Errors of files
        the collector reads itself are remembered for ``list``; the control socket answers its
        client instead."""
        try:
            policies = parser.parse_text(text, source, mode)
            with self._lock:
                for p in policies:
                    if p.name in self.loaded:
                        raise PolicyError("metadata.name", f"a policy named {p.name!r} is already loaded",
                                          p.line_of("metadata.name"), source)
                done: list[Loaded] = []
                try:
                    for p in policies:
                        done.append(self._load(p))
                except BaseException:
                    for lp in done:
                        self._unload(lp)
                    raise
        except PolicyError as exc:
            LOAD_ERRORS.labels(reason="invalid").inc()
            if remember_error:
                self.errors[source] = str(exc)
            self._update_gauge()
            raise
        except loader.LoadError as exc:
            LOAD_ERRORS.labels(reason="kernel").inc()
            err = PolicyError("", f"the kernel refused the compiled program: {exc}", 0, source)
            if remember_error:
                self.errors[source] = str(err)
            self._update_gauge()
            raise err from exc
        self.errors.pop(source, None)
        self._update_gauge()
        return done

    def replace_text(self, name: str, text: str, source: str = "", mode: str | None = None) -> list[Loaded]:
        """Load the one policy in ``text`` in place of the loaded policy ``name``: the new version
        is compiled, loaded and enabled before the old one is unloaded (both act for that moment);
        when the new one is refused, the old one keeps acting. Without ``name`` loaded: load_text."""
        with self._lock:
            old = self.loaded.get(name)
            if old is None:
                return self.load_text(text, source, mode)
            try:
                policies = parser.parse_text(text, source, mode)
                if len(policies) != 1:
                    raise PolicyError("", f"a replacement of {name!r} must hold one policy, not "
                                          f"{len(policies)}", 0, source)
                p = policies[0]
                if p.name != name and p.name in self.loaded:
                    raise PolicyError("metadata.name", f"a policy named {p.name!r} is already loaded",
                                      p.line_of("metadata.name"), source)
                new = self._load(p)
            except (PolicyError, loader.LoadError) as exc:
                if old.policy.scoped and self.pod_scope is not None and old.bpf is not None:
                    self.pod_scope.add(old.policy, old.bpf)  # a failed load of the same name dropped it
                LOAD_ERRORS.labels(reason="invalid" if isinstance(exc, PolicyError) else "kernel").inc()
                self._update_gauge()
                if isinstance(exc, PolicyError):
                    raise
                raise PolicyError("", f"the kernel refused the compiled program: {exc}", 0, source) from exc
            self._unload(old)
        self.errors.pop(source, None)
        self._update_gauge()
        return [new]

    def load_file(self, path: str, mode: str | None = None) -> list[Loaded]:
        try:
            check_file_owner(path)
            text = Path(path).read_text(encoding="utf-8")
        except PolicyError as exc:
            LOAD_ERRORS.labels(reason="file").inc()
            self.errors[path] = str(exc)
            self._update_gauge()
            raise
        except (OSError, UnicodeDecodeError) as exc:
            LOAD_ERRORS.labels(reason="file").inc()
            self.errors[path] = f"{path}: {exc}"
            self._update_gauge()
            raise PolicyError("", f"cannot read: {exc}", 0, path) from exc
        return self.load_text(text, path, mode, remember_error=True)

    def _load(self, p: Policy) -> Loaded:
        if p.scoped and self.pod_scope is None:
            path = compiler.scope_path(p)
            raise PolicyError(path, "a policy scoped to pods (TracingPolicyNamespaced, podSelector or "
                                    "containerSelector) needs the pods of this node: set enable_k8s_api "
                                    "(and k8s_kubeconfig) for the collector", p.line_of(path), p.source)
        pid = random.getrandbits(31) | 1
        comp = compiler.compile_policy(p, pid, self.host_ns, self.features, ringbuf_pages=self.ringbuf_pages)
        t0 = time.monotonic()
        if p.loader:
            self._loader_wanted_by(p)
        if not comp.text:  # spec.loader alone: no program of its own
            lp = Loaded(p, comp, pid, None, None)
            self.queue.put(records.encode_policy(time.monotonic_ns(), json.dumps(lp.catalog()).encode()))
            self.queue.wake()
            self.loaded[p.name] = lp
            for n in p.notices + comp.notices:
                log.warning("policy %s: %s", p.name, n)
            log.info("policy %s loaded (%s mode, id %d): loader events", p.name, p.mode, pid)
            return lp
        try:
            bpf = loader.load_program(f"policy {p.name}", text=comp.text)
        except Exception:
            self._sync_loader()
            raise
        link_fds: list[int] = []
        try:
            for ch in comp.hooks:
                if ch.uprobe is not None and not ch.uprobe.in_container:
                    uprobes.attach(bpf, ch.uprobe, ch.uprobe_fn)
            for mech, func in comp.kattach:
                kattach.attach(bpf, mech, func, link_fds)
        except Exception as exc:
            kattach.close(link_fds)
            bpf.cleanup()
            self._sync_loader()
            raise loader.LoadError(f"policy {p.name}: did not attach: {exc}") from exc
        try:
            strset = bpf["strset"]
            for sid, raw in comp.string_sets:
                key = strset.Key()
                key.set, key.len, key.s = sid, len(raw), raw
                strset[key] = ctypes.c_uint8(1)
            intset = bpf["intset"]
            for sid, value in comp.int_sets:
                ikey = intset.Key()
                ikey.set, ikey.v = sid, value
                intset[ikey] = ctypes.c_uint8(1)
            netsel.fill(bpf, comp.net_addrs)   # CIDRs of network selectors
            # file filters by inode too, before the policy is enabled (collector/policy/inode_sets.py)
            comp.notices += self.inode_sets.add(p.name, pid, bpf["inoset"], comp.inode_sets, self.inode_root)
            if comp.exec_state:   # processes older than the policy: their state now
                seeded = proc_state.seed_exec_state(bpf["exec_state"])
                log.info("policy %s: namespace/capability state of %d running processes seeded", p.name, seeded)
            if p.scoped and self.pod_scope is not None:
                in_ctr = [(ch.uprobe, ch.uprobe_fn) for ch in comp.hooks if ch.uprobe and ch.uprobe.in_container]
                # the selected containers' cgroups (and uprobes in their roots), before it is enabled
                self.pod_scope.add(p, bpf, ContainerUprobes(p.name, bpf, in_ctr) if in_ctr else None)
            # its records wait for the process program's exec records of the same time, so the
            # enricher attributes a hook right after an exec to the new image
            # Post's stack traces: ids symbolised record by record in the drain (collector/stacks.py)
            stacks = StackSymbolizer(bpf).rewrite if comp.stacks else None
            drain = RingBufferDrain(bpf, self.queue, order_after=self.order_after, transform=stacks)
        except Exception:
            self.inode_sets.remove(pid)
            if self.pod_scope is not None:
                self.pod_scope.remove(p.name)
            kattach.close(link_fds)
            bpf.cleanup()  # attached but never enabled: detach before giving up
            self._sync_loader()
            raise
        lp = Loaded(p, comp, pid, bpf, drain, link_fds=link_fds)
        self.queue.put(records.encode_policy(time.monotonic_ns(), json.dumps(lp.catalog()).encode()))
        drain.start()
        bpf["enabled"][ctypes.c_int(0)] = ctypes.c_uint32(1)
        self.queue.wake()
        self.loaded[p.name] = lp
        if comp.connect_rules and p.mode != "monitor":
            try:
                self._update_connect_rules()
            except Exception:
                self._unload(lp)
                raise
        self._sync_uncaught()
        for n in p.notices + comp.notices:
            log.warning("policy %s: %s", p.name, n)
        log.info("policy %s loaded (%s mode, id %d) in %.2fs: %s", p.name, p.mode, pid,
                 time.monotonic() - t0, "; ".join(f"{h.function_name} via {h.serve}" for h in comp.hooks))
        return lp

    def delete(self, name: str) -> None:
        with self._lock:
            lp = self.loaded.get(name)
            if lp is None:
                raise PolicyError("", f"no policy named {name!r} is loaded")
            self._unload(lp)
        self._update_gauge()

    def set_enabled(self, name: str, on: bool) -> None:
        """Disable (hooks stay attached and return at once) or enable a loaded policy."""
        with self._lock:
            lp = self.loaded.get(name)
            if lp is None:
                raise PolicyError("", f"no policy named {name!r} is loaded")
            if lp.bpf is not None:
                lp.bpf["enabled"][ctypes.c_int(0)] = ctypes.c_uint32(1 if on else 0)
            lp.enabled = on
            if lp.policy.loader:
                if on:
                    try:
                        self._loader_wanted_by(lp.policy)
                    except loader.LoadError as exc:
                        if lp.bpf is not None:
                            lp.bpf["enabled"][ctypes.c_int(0)] = ctypes.c_uint32(0)
                        lp.enabled = False
                        raise PolicyError("spec.loader", f"loader events cannot be turned on: {exc}") from exc
                else:
                    self._sync_loader()
            log.info("policy %s %s", name, "enabled" if on else "disabled")
        self._update_gauge()

    def _unload(self, lp: Loaded) -> None:
        if lp.bpf is not None and lp.drain is not None:
            try:
                lp.bpf["enabled"][ctypes.c_int(0)] = ctypes.c_uint32(0)
            except Exception:  # noqa: BLE001 - cleanup goes on
                pass
            self._collect_counts(lp)
            lp.drain.stop()
        self.inode_sets.remove(lp.policy_id)
        replaced = self.loaded.get(lp.name) not in (lp, None)  # replace_text: a new version took its place
        if self.pod_scope is not None and not replaced:
            self.pod_scope.remove(lp.name)  # before its map goes away
        if not replaced:
            self.loaded.pop(lp.name, None)
        if lp.policy.loader:
            self._sync_loader()
        if not replaced:
            self._sync_uncaught()
        if lp.compiled.connect_rules:  # its connect rules go before its catalog entry does
            try:
                self._update_connect_rules()
            except Exception as exc:  # noqa: BLE001 - the unload goes on
                log.error("connect rules after unloading %s: %s", lp.name, exc)
        self.queue.put(records.encode_policy(time.monotonic_ns(), json.dumps(lp.catalog("deleted")).encode()))
        self.queue.wake()
        kattach.close(lp.link_fds)
        if lp.bpf is not None:
            lp.bpf.cleanup()
        log.info("policy %s unloaded", lp.name)

    def _sync_uncaught(self) -> None:
        """The uncaught-road counter follows what the loaded policies protect (never fails a load)."""
        prot = [x for lp in self.loaded.values()
                if (x := uncaught.protected_of(lp.name, lp.policy.hooks)) is not None]
        try:
            self.uncaught.update(prot)
        except Exception as exc:  # noqa: BLE001 - the policies act without it
            log.error("uncaught-road counter not loaded, roads around the policies go uncounted: %s", exc)

    # ---- spec.loader: the loader sensor while a policy asks for it ------------------------------
    def _loader_wanted_by(self, p: Policy) -> None:
        """Turn the loader sensor on for ``p`` (loaded or being loaded); LoadError if it cannot be."""
        if self.loader_builtin:
            notice = ("spec.loader: loader events are on for the whole collector already "
                      "(--enable-loader-events); they stay on when this policy is deleted")
            if notice not in p.notices:
                p.notices.append(notice)
            return
        if self.loader_sensor is not None:
            return
        sensor = sensors.by_name("loader")
        t0 = time.monotonic()
        bpf = loader.load_program("loader sensor (spec.loader)", {"TP_RINGBUF_PAGES": self.loader_ringbuf_pages},
                                  text=sensors.standalone_text(sensor))
        try:
            sensors.setup(bpf, [sensor])
            # its records wait for the process program's exec records of the same time: the
            # enricher attaches the process from them (one ring buffer would keep that order)
            drain = RingBufferDrain(bpf, self.queue, order_after=self.order_after)
        except Exception:
            bpf.cleanup()
            raise
        drain.start()
        self.loader_sensor = (bpf, drain)
        log.info("loader sensor on for policy %s in %.2fs: %s", p.name, time.monotonic() - t0, sensor.mechanism)

    def _sync_loader(self) -> None:
        """Turn the loader sensor off when no enabled loaded policy asks for it any more."""
        if self.loader_sensor is None:
            return
        if any(lp.policy.loader and lp.enabled for lp in self.loaded.values()):
            return
        bpf, drain = self.loader_sensor
        self.loader_sensor = None
        self._loader_lost += drain.kernel_lost_delta()
        drain.stop()
        bpf.cleanup()
        log.info("loader sensor off: no loaded policy asks for loader events")

    def stop(self) -> None:
        with self._lock:
            for lp in list(self.loaded.values()):
                self._unload(lp)
            self._close_connect_deny()
            self.uncaught.close()
            self.inode_sets.close()
            self.user_actions.stop()
            if self.pod_scope is not None:
                self.pod_scope.close()
        self._update_gauge()

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            out = [lp.info() for lp in self.loaded.values()]
            if self.pod_scope is not None:
                for info in out:  # scoped policies: how many container cgroups they act in now
                    sp = self.pod_scope.policies.get(info["name"])
                    if sp is not None:
                        info["pod_cgroups"] = len(sp.cgroups)
                        if sp.uprobes is not None:   # resolvePathInContainer: containers attached in
                            info["container_uprobes"] = len(sp.uprobes.attached)
        out += [{"name": "", "source": src, "state": "load_error", "error": err} for src, err in self.errors.items()]
        return out

    # ---- periodic ------------------------------------------------------------------------------
    def tick(self) -> None:
        """Re-send the catalog now and then (a late enricher learns it) and export counters."""
        now = time.monotonic()
        if not self._lock.acquire(blocking=False):
            return  # a load is compiling (seconds): never stall the produce loop for it
        try:
            if now - self._last_counts >= COUNTS_EVERY_S:
                self._last_counts = now
                for lp in self.loaded.values():
                    self._collect_counts(lp)
                    if lp.bpf is not None and lp.compiled.sig_failed:
                        doom.send_failed_signals(lp.name, lp.bpf["sig_failed"])
                self._collect_connect_denied()
            if self.pod_scope is not None:
                self.pod_scope.refresh()
            if now - self._last_catalog >= CATALOG_EVERY_S:
                self._last_catalog = now
                for lp in self.loaded.values():
                    self.queue.put(records.encode_policy(time.monotonic_ns(), json.dumps(lp.catalog()).encode()))
                if self.loaded:
                    self.queue.wake()
        finally:
            self._lock.release()

    def _collect_counts(self, lp: Loaded) -> None:
        if lp.bpf is None:
            return
        try:
            table = lp.bpf["sel_counts"]
        except Exception:  # noqa: BLE001
            return
        monitor = lp.policy.mode == "monitor"
        for ch in lp.compiled.hooks:
            for s in range(compiler.SEL_SLOTS):
                idx = ch.hook_id * compiler.SEL_SLOTS + s
                total = int(sum(table[ctypes.c_int(idx)]))
                delta = total - lp.counts_seen.get(idx, 0)
                if delta <= 0:
                    continue
                lp.counts_seen[idx] = total
                if s < len(ch.hook.selectors):
                    for a in ch.hook.selectors[s].match_actions:
                        if a.arg_url or a.arg_fqdn:
                            self.user_actions.submit(a.action, a.arg_url or a.arg_fqdn, lp.name, delta)
                    names = ch.hook.selectors[s].action_names() or ["Post"]
                    action = min(names, key=lambda n: compiler.ACTION_RANK.index(n)).lower()
                else:
                    action = "post"
                if monitor and action in ("sigkill", "signal", "override", "notifyenforcer"):
                    action = f"monitor_{action}"
                SELECTOR_ACTIONS.labels(action=action, hook=ch.function_name, hook_index=str(ch.hook_id),
                                        policy=lp.name, policy_namespace=lp.policy.namespace,
                                        selector_index=str(s if s < len(ch.hook.selectors) else -1)).inc(delta)

    def kernel_lost_delta(self) -> int:
        """Kernel-side drops of the policy ring buffers since the last call (0 while a load runs;
        they are counted at the next call)."""
        if not self._lock.acquire(blocking=False):
            return 0
        try:
            lost = sum(lp.drain.kernel_lost_delta() for lp in self.loaded.values() if lp.drain is not None)
            if self._connect_drain is not None:
                lost += self._connect_drain.kernel_lost_delta()
            if self.loader_sensor is not None:
                lost += self.loader_sensor[1].kernel_lost_delta()
            lost, self._loader_lost = lost + self._loader_lost, 0
            return lost
        finally:
            self._lock.release()

    def _update_gauge(self) -> None:
        counts = dict.fromkeys(STATES, 0)
        counts["enabled"] = sum(1 for lp in self.loaded.values() if lp.enabled)
        counts["disabled"] = len(self.loaded) - counts["enabled"]
        counts["load_error"] = len(self.errors)
        for s, n in counts.items():
            LOADED.labels(state=s).set(n)

