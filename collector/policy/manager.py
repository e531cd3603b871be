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
from pathlib import Path
from typing import Any

from bpf import records
from collector import connect_deny, kernel_features, loader, uprobes
from collector.drain import RecordQueue, RingBufferDrain
from collector.kernel_features import KernelFeatures
from collector.policy import compiler, doom, gaps, kattach, netsel, parser, proc_state, selector_counts, uncaught
from collector.policy.connect_rules import ConnectRules
from collector.policy.inode_sets import InodeSets
from collector.policy.loaded import Loaded
from collector.policy.loader_sensor import LoaderSensor
from collector.policy.metrics import LOAD_ERRORS, LOADED
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


class PolicyManager(WatchedFiles, ConnectRules, LoaderSensor):
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
                seeded = proc_state.seed_exec_state(bpf["exec_state"], p.name)
                log.info("policy %s: namespace/capability state of %d running processes seeded", p.name, seeded)
            if comp.follow_pids:  # followForks: the followed processes older than the policy
                seeded = proc_state.seed_follow_forks(bpf["pf_marks"], bpf["pf_births"], comp.follow_pids, p.name)
                log.info("policy %s: %d running processes followed (matchPIDs followForks)", p.name, seeded)
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
        gaps.set_unjudged(p.name, gaps.unjudged(comp.notices))
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
            gaps.clear_unjudged(lp.name, gaps.unjudged(lp.compiled.notices))
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
        if lp.bpf is not None:
            gaps.collect(lp.name, lp.bpf, lp.gaps_seen)
        selector_counts.collect(lp, self.user_actions)

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

