"""Policy model → one specialised bcc program per policy.

Each hook becomes a C function with its selectors spelled out (first matching selector wins, AND
inside one); selector strings are string sets in the ``strset`` hash map (key: set, length,
zero-padded bytes; bpf/policy.h), filled from Python after load (bcc has no global data). What
this kernel cannot serve is refused here with the YAML path and reason.

The parts, one module per concern:
- ``argtypes``: tracepoint formats, syscall names, argument type kinds; ``kargs``: kernel-object
  argument types (cred, bpf_attr, skb, ...) checked against BTF;
- ``mechanism``: the table hook kind × kernel feature → mechanism, and each hook's source;
- ``actions``: what matchActions can do where (Override on tcp_connect → connect rules);
- ``selectors``: selector conditions as C; ``hookfn``: the hook function and its probes;
- this module: the policy's program (maps, helpers, tracepoint probes) from those parts;
- fixed C: ``bpf/policy_prog.c`` (fragments, via ``csrc``), ``bpf/policy.h``, ``bpf/path.h``.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path

from collector import btf_funcs, connect_deny, kernel_features, sock_hooks, uprobes
from collector.kernel_features import KernelFeatures
from collector.policy import actions, enforcers, evasion, kargs, mechanism, netsel, tetragon_compat
from collector.policy.argtypes import (  # noqa: F401  (re-exported: tests and tools use them here)
    INT_ARG_KIND,
    OPEN_SYSCALLS,
    STR_MAX,
    TRACEFS,
    Field,
    syscall_name,
    tracepoint_fields,
)
from collector.policy.csrc import fragment, indent
from collector.policy.hookfn import ACTION_RANK, SEL_SLOTS, HookGen  # noqa: F401  (re-exported)
from collector.policy.model import Hook, Policy, PolicyError, Selector

# mechanism → its program's fragment in bpf/policy_prog.c
KFUNC_FRAGMENT = {"fentry": "kfunc_fentry", "fexit": "kfunc_fexit", "lsm": "kfunc_lsm", "fmod_ret": "kfunc_fmod_ret",
                  "kprobe": "kfunc_kprobe", "kretprobe": "kfunc_kretprobe",
                  "kprobe+bpf_override_return": "kfunc_kprobe_override", "rawtp": "kfunc_rawtp"}
MAX_SLOTS = 4  # TP_SLOTS in bpf/policy.h
POD_CGROUPS_MAP = "pod_cgroups"   # scoped policies: cgroup id → 1, filled by collector/policy/pod_scope.py
POD_CGROUPS_MAX = 8192
INODE_SET_MAX = 16384  # (device, inode) entries of all inode sets of a policy (collector/policy/inode_sets.py)
EXEC_STATE_MAX = 32768  # processes (and threads) with saved namespace/capability state (exec_state)
PF_MARKS_MAX = 65536    # followed processes (and threads) of all matchPIDs followForks filters (pf_marks)
INT_SET_MAX = 65536    # entries of all InMap/NotInMap filters of a policy (ranges count each value)
SET_LENGTHS_MAX = 64   # distinct value lengths of one Prefix/Postfix filter: one map lookup each
STRING_HOW = {"Equal": "equal", "NotEqual": "equal", "In": "equal", "NotIn": "equal", "Prefix": "prefix",
              "NotPrefix": "prefix", "Postfix": "postfix", "NotPostfix": "postfix"}


@dataclass
class CompiledHook:
    hook_id: int
    hook: Hook
    attach: list[str]            # "subsys:event" tracepoints it uses
    function_name: str           # as events name it (Tetragon's call name)
    serve: str                   # how it is served, said at load
    uprobe: uprobes.Target | None = None   # uprobes: where the manager attaches ``uprobe_fn``
    uprobe_fn: str = ""
    mechanism: str = ""          # how the hook is attached: tracepoint, uprobe, fentry, kprobe, lsm, ...


@dataclass
class Compiled:
    policy: Policy
    text: str
    strings: list[bytes]         # the distinct selector string values
    hooks: list[CompiledHook]
    notices: list[str] = field(default_factory=list)
    connect_rules: list[connect_deny.ConnectRule] = field(default_factory=list)  # Override on tcp_connect
    kattach: list[tuple[str, str]] = field(default_factory=list)  # (mechanism, kernel function) to attach
    string_sets: list[tuple[int, bytes]] = field(default_factory=list)  # (set id, value): keys of ``strset``
    int_sets: list[tuple[int, int]] = field(default_factory=list)   # (set id, u64 value): keys of ``intset``
    net_addrs: list[tuple[int, int, int, bytes]] = field(default_factory=list)  # ``netaddr`` CIDRs (netsel.py)
    inode_sets: list[tuple[int, str, list[str]]] = field(default_factory=list)  # (set id, equal|prefix, paths)
    exec_state: bool = False     # the program keeps ``exec_state`` (matchNamespace/CapabilityChanges)
    sig_failed: bool = False     # the program has ``sig_failed`` (signals the collector sends for it)
    # matchPIDs followForks: (filter id in ``pf_marks``, pid values, isNamespacePID), marked at load
    follow_pids: list[tuple[int, list[int], bool]] = field(default_factory=list)
    stacks: bool = False         # Post's kernel/userStackTrace: ``stack_traces`` map (collector/stacks.py)


STACK_MAP_ENTRIES = 4096   # distinct stacks a policy keeps (1 KiB each): a new one past that is lost, counted


class _Fail:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def __call__(self, path: str, reason: str) -> PolicyError:
        return PolicyError(path, reason, self.policy.line_of(path), self.policy.source)


def compile_policy(policy: Policy, policy_id: int, host_ns: list[int], features: KernelFeatures | None = None,
                   tracefs: Path = TRACEFS, ringbuf_pages: int = 64) -> Compiled:
    """``features``: what the kernel offers (collector/kernel_features.py ``probe()``); None: a
    kernel with syscall tracepoints only (no kprobes, no trampolines), as the build machines'."""
    fail = _Fail(policy)
    gen = ProgramGen(policy, policy_id, host_ns, fail, tracefs, features or kernel_features.NONE)
    follow = _follow_selectors(policy)
    enforcers.prepare(gen)
    compiled: list[CompiledHook] = []
    for hid, hook in enumerate(policy.hooks):
        try:
            compiled.append(gen.hook(hid, hook, follow))
        except PolicyError as exc:
            if not (hook.ignore_call_not_found and exc.path == f"{hook.path}.call"):
                raise
            gen.notices.append(f"{hook.path}: skipped (ignore.callNotFound): {exc.reason}")
    enforcers.programs(gen)
    gen.notices += evasion.unhooked_writes([(ch.hook.path, ch.function_name) for ch in compiled])
    if not compiled:
        if policy.loader:  # spec.loader alone: the manager turns the loader sensor on, no program
            return Compiled(policy, "", [], [], gen.notices)
        raise fail("spec", "no hook of the policy can be served")
    if policy.scoped and gen.connect_rules:
        raise fail(scope_path(policy), "an Override on tcp_connect is enforced by cgroup/connect4+6 programs "
                                       "shared by all policies, which cannot be scoped to pods yet")
    text = gen.program(ringbuf_pages)
    return Compiled(policy, text, gen.strings, compiled, gen.notices, gen.connect_rules, list(gen.kfuncs),
                    gen.set_entries, gen.int_entries, gen.net.entries, gen.inode_specs, gen.exec_state,
                    gen.sig_failed, gen.pf_specs, gen.stacks)


def scope_path(policy: Policy) -> str:
    """The YAML path that makes a policy scoped to pods, for errors."""
    return ("spec.podSelector" if policy.pod_selector is not None else
            "spec.containerSelector" if policy.container_selector is not None else "kind")


def _follow_selectors(policy: Policy) -> list[tuple[Selector, int]]:
    """(selector, argName) of every FollowFD selector on fd_install."""
    out = []
    for hook in policy.hooks:
        if hook.kind == "kprobe" and hook.call == "fd_install":
            for s in hook.selectors:
                for a in s.match_actions:
                    if a.action == "FollowFD":
                        out.append((s, a.arg_name))
    return out


class ProgramGen:
    """One policy's program: collects the hook functions, maps and probes, then assembles them."""

    def __init__(self, policy: Policy, policy_id: int, host_ns: list[int], fail: _Fail, tracefs: Path,
                 features: KernelFeatures) -> None:
        self.policy = policy
        self.features = features
        self.policy_id = policy_id
        self.host_ns = host_ns
        self.fail = fail
        self.tracefs = tracefs
        self.strings: list[bytes] = []
        self.set_entries: list[tuple[int, bytes]] = []   # (set id, value): keys of the strset map
        self.set_functions: list[str] = []
        self.int_entries: list[tuple[int, int]] = []     # (set id, value): keys of the intset map
        self.int_sets = 0
        self.net = netsel.NetSets()   # address sets of network selectors
        self.inode_specs: list[tuple[int, str, list[str]]] = []   # keys of ``inoset``, filled at load
        self.notices: list[str] = []
        self.functions: list[str] = []
        self.probes: dict[str, list[str]] = {}   # "subsys:event" → statements
        self.kfuncs: dict[tuple[str, str], list[str]] = {}   # (mechanism, function) → statements
        self.pending_maps: list[str] = []
        self.exec_state = False
        self.ratelimit = False
        self.fc_filters = 0
        self.pf_specs: list[tuple[int, list[int], bool]] = []   # matchPIDs followForks filters
        self.sock = False                        # socket hooks: collector/sock_hooks.py helpers
        self.kargs = False                       # typed kernel objects: bpf/kargs.h (collector/policy/kargs.py)
        self.dns = False                         # dns arguments: bpf/dns.h (collector/policy/dns.py)
        self.uprobe_entries: list[str] = []      # uprobe entry functions, after the hook functions
        self.connect_rules: list[connect_deny.ConnectRule] = []
        self.max_slots = 1
        self.monitor = policy.mode == "monitor"
        # 32-bit syscalls: served from raw_syscalls with TS_COMPAT where the kernel runs them
        self.compat = platform.machine() == "x86_64" and (tracefs / "events" / "raw_syscalls").is_dir()
        self.compat_used = False
        self.sig_failed = False                  # the sig_failed map (hookfn.py): signals the collector sends
        self.stacks = False                      # the stack_traces map (hookfn.py stack_c, collector/stacks.py)
        self.doom = False                        # Sigkill refuses the killed group's reads/writes (doom.py)
        self.uring_used = False                  # io_uring twins of syscall hooks (collector/policy/uring.py)
        # a policy scoped to pods acts only in the cgroups of the selected containers: checked first
        self.enforce = ""                        # spec.enforcers: "mark" or "signal" (collector/policy/enforcers.py)
        self.enforce_rows: list[tuple[str, str]] = []   # (mechanism, function) of the enforcer programs
        self.scope_check = "    if (!tp_in_scope())\n        return 0;\n" if policy.scoped else ""

    # ---- strings ---------------------------------------------------------------------------
    def string_id(self, value: str, path: str) -> int:
        raw = value.encode()
        if len(raw) > STR_MAX:
            raise self.fail(path, f"value of {len(raw)} bytes: selector strings are at most {STR_MAX} bytes")
        if raw in self.strings:
            return self.strings.index(raw)
        self.strings.append(raw)
        return len(self.strings) - 1

    def string_set(self, k: int, op: str, values: list[str], path: str) -> str:
        """C expression: the string in slot ``k`` is one of ``values`` as ``op`` compares (Equal:
        the whole string; Prefix/Postfix: its start/end), looked up in the ``strset`` map."""
        how = STRING_HOW[op]
        raws = [self.strings[self.string_id(v, f"{path}.values[{j}]")] for j, v in enumerate(values)]
        sid = len(self.set_functions)
        self.set_entries += [(sid, r) for r in dict.fromkeys(raws)]
        if how == "equal":
            body = f"    return tp_set_eq(key, s->slot[{k}], n);"
        else:
            lengths = sorted({len(r) for r in raws})
            if len(lengths) > SET_LENGTHS_MAX:
                raise self.fail(f"{path}.values", f"{len(lengths)} different value lengths: a {op} filter "
                                                  f"takes values of at most {SET_LENGTHS_MAX} different lengths "
                                                  "(one map lookup each)")
            off = "0" if how == "prefix" else "n - {l}"
            body = "\n".join(f"    if (n >= {n} && tp_set_at(key, s->slot[{k}], {off.format(l=n)}, {n}))\n"
                             "        return 1;" for n in lengths) + "\n    return 0;"
        self.set_functions.append(
            f"static __always_inline int tp_set_{sid}(struct tp_slots *s)\n{{\n"
            f"    struct tp_strkey *key = tp_setkey({sid});\n    if (!key)\n        return 0;\n"
            f"    u32 n = s->slen[{k}];\n{body}\n}}")
        return f"tp_set_{sid}(s)"

    def inode_set(self, how: str, values: list[str]) -> int:
        """Equal/Prefix on a kernel file: the files the values name, by (device, inode), as a set of
        the ``inoset`` map that collector/policy/inode_sets.py fills at load and keeps current."""
        for sid, h, vals in self.inode_specs:
            if h == how and vals == list(values):
                return sid
        sid = len(self.inode_specs)
        self.inode_specs.append((sid, how, list(values)))
        return sid

    def int_set(self, ranges: list[tuple[int, int]], path: str) -> int:
        """InMap/NotInMap: the values (ranges expanded) as a set of the ``intset`` map; its id."""
        sid = self.int_sets
        self.int_sets += 1
        values: set[int] = set()
        for lo, hi in ranges:
            lo, hi = min(lo, hi), max(lo, hi)   # a reversed range means the same values (as Tetragon)
            if len(self.int_entries) + len(values) + hi - lo + 1 > INT_SET_MAX:
                raise self.fail(path, f"the InMap values of this policy expand to more than {INT_SET_MAX} "
                                      "entries (a range counts each value)")
            values.update(range(lo, hi + 1))
        self.int_entries += [(sid, v & (2**64 - 1)) for v in sorted(values)]
        return sid

    # ---- hooks -----------------------------------------------------------------------------
    def hook(self, hid: int, hook: Hook, follow: list[tuple[Selector, int]]) -> CompiledHook:
        hook = tetragon_compat.tracepoint_indexes(self, tetragon_compat.syscall_override(
            self, tetragon_compat.old_signature(self, hook), mechanism.SYSCALL_WRAPPER))
        src, fname, serve = mechanism.choose(self, hook)
        actions.check_actions(self, hook, hid, src)
        self.notices += evasion.raw_path_warnings(hook, src)
        h = HookGen(self, hid, hook, src)
        # fd-typed arguments of other hooks match only what FollowFD selectors followed
        implicit: list[tuple[int, list[tuple[Selector, int]]]] = []
        if follow and src.kind != "open":
            fd_args = {a.index for a in hook.args if a.type == "fd"}
            for s in hook.selectors:
                for a in s.match_actions:
                    if a.action in ("UnfollowFD", "CopyFD") and a.arg_fd >= 0:
                        fd_args.add(a.arg_fd)
            implicit = [(i, follow) for i in sorted(fd_args)]
        body = h.function(implicit)
        self.functions.append(body)
        attach = [src.attach_enter] if src.attach_enter else []
        attach += src.attach_exit
        if h.nslots > MAX_SLOTS:
            raise self.fail(hook.path, f"the hook needs {h.nslots} string values (paths, strings, binaries); "
                                       f"at most {MAX_SLOTS} per hook")
        self.max_slots = max(self.max_slots, h.nslots)
        if src.kind == "uprobe":
            return CompiledHook(hid, hook, [], fname, serve, src.target, f"tp_uprobe_{hid}", mechanism="uprobe")
        mech = src.mech or {"syscall": "tracepoint", "syscall_ret": "tracepoint", "tracepoint": "tracepoint",
                            "sock": "tracepoint", "open": "tracepoint (fd_install emulation)"}.get(src.kind, src.kind)
        return CompiledHook(hid, hook, attach, fname, serve, mechanism=mech)

    def _kargs_include(self) -> list[str]:
        if not self.kargs and not self.dns:
            return []
        funcs = btf_funcs.vmlinux() if self.features.btf else None
        return [*kargs.defines(funcs), '#include "kargs.h"', *(['#include "dns.h"'] if self.dns else [])]

    def follow_children(self, op: str, values: list[str], path: str, h: HookGen) -> int:
        """Register a followChildren binaries filter: exec-time marking and fork-time inheritance."""
        fid = self.fc_filters
        self.fc_filters += 1
        cond = h.str_cond(0, op, values, path)
        self.probes.setdefault("sched:sched_process_exec", []).append(
            fragment("follow_children_exec", cond=cond, fid=fid).rstrip("\n"))
        self.probes.setdefault("sched:sched_process_fork", []).append(
            fragment("follow_children_fork", fid=fid).rstrip("\n"))
        return fid

    def follow_pids(self, values: list[int], ns_pid: bool, val: str, eq: str) -> int:
        """Register a matchPIDs followForks filter: a mark per process in ``pf_marks``, inherited at
        fork (``val``/``eq``: the parent's own pid matches), dropped at exit, seeded at load."""
        for fid, vals, ns in self.pf_specs:
            if vals == list(values) and ns == ns_pid:
                return fid   # the same filter generated again (a twin of the hook): one mark
        fid = len(self.pf_specs)
        if not fid:
            self.probes.setdefault("sched:sched_process_fork", []).append(
                fragment("follow_pids_births").rstrip("\n"))
        self.pf_specs.append((fid, list(values), ns_pid))
        self.probes.setdefault("sched:sched_process_fork", []).append(
            fragment("follow_pids_fork", fid=fid, val=val, eq=eq).rstrip("\n"))
        return fid

    def _state_exit(self, map_name: str, keys: str) -> str:
        """Drop a process's entry when its last thread exits (``group_dead`` where the kernel's
        sched_process_exit has it, else at the exit of the thread group leader)."""
        fields = tracepoint_fields("sched", "sched_process_exit", self.tracefs) or []
        dead = "args->group_dead" if any(f.name == "group_dead" for f in fields) else "tid == tg"
        return fragment("state_exit", map=map_name, keys=keys, group_dead=dead).rstrip("\n")

    # ---- program ---------------------------------------------------------------------------
    def program(self, ringbuf_pages: int) -> str:
        slots = 1
        while slots < self.max_slots:
            slots *= 2
        nset = max(len(self.set_entries), 1)
        ncount = max(len(self.policy.hooks), 1) * SEL_SLOTS
        out = [
            f"/* generated by collector/policy/compiler.py for policy {self.policy.name!r} */",
            f"#define TP_SLOTS {slots}",
            '#include "records.h"',
            '#include "path.h"',
            '#include "policy.h"',
            *(self._kargs_include()),
            "",
            f"BPF_RINGBUF_OUTPUT(events, {ringbuf_pages});",
            "BPF_PERCPU_ARRAY(drops, u64, 1);",
            "BPF_PERCPU_ARRAY(path_scratch, struct tp_path_buf, 1);",
            "BPF_PERCPU_ARRAY(hook_scratch, struct tp_hook_buf, 1);",
            "BPF_PERCPU_ARRAY(slot_scratch, struct tp_slots, 1);",
            f"BPF_HASH(strset, struct tp_strkey, u8, {nset});  /* selector string sets (bpf/policy.h) */",
            "BPF_PERCPU_ARRAY(strkey_scratch, struct tp_strkey, 1);",
            f"BPF_HASH(intset, struct tp_intkey, u8, {max(len(self.int_entries), 1)});  /* InMap values */",
            f"BPF_HASH(inoset, struct tp_inokey, struct tp_inoval, {INODE_SET_MAX if self.inode_specs else 1});"
            "  /* files by inode (collector/policy/inode_sets.py) */",
            "BPF_ARRAY(enabled, u32, 1);  /* 0 until the string sets are filled, and while disabled */",
            f"BPF_PERCPU_ARRAY(sel_counts, u64, {ncount});",
            "BPF_PERCPU_ARRAY(gaps, u64, TP_GAPS);  /* what selectors could not judge (bpf/policy.h) */",
            *self.pending_maps,
        ]
        if self.exec_state:
            # a hash, not an LRU: a full map refuses (counted, TP_GAP_STATE_FULL), never evicts silently
            out.append(f"BPF_HASH(exec_state, u32, struct tp_exec_state, {EXEC_STATE_MAX});")
        if self.stacks:   # Post's stack traces: ids in the records, frames read by collector/stacks.py
            out.append(f"BPF_STACK_TRACE(stack_traces, {STACK_MAP_ENTRIES});")
        if self.fc_filters or self.pf_specs:
            out.append("struct tp_fc_key { u32 filter; u32 tgid; };")
        if self.fc_filters:
            out.append("BPF_TABLE(\"lru_hash\", struct tp_fc_key, u8, fc_marks, 65536);")
        if self.pf_specs:
            out.append(f"BPF_HASH(pf_marks, struct tp_fc_key, u8, {PF_MARKS_MAX});  /* followForks */")
            out.append("BPF_TABLE(\"lru_hash\", u32, u32, pf_births, 16384);  /* forks while loading */")
        if self.ratelimit:
            out.append("struct tp_rl_key { u32 hook_sel; u32 scope; };")
            out.append("BPF_TABLE(\"lru_hash\", struct tp_rl_key, u64, ratelimit, 32768);")
        if self.sock:
            out.append(sock_hooks.SOCK_HELPERS_C)
            out += netsel.decls(self)
        if self.policy.scoped:
            out += [f"BPF_HASH({POD_CGROUPS_MAP}, u64, u8, {POD_CGROUPS_MAX});  "
                    "/* cgroup ids of the selected containers (collector/policy/pod_scope.py) */",
                    "static __always_inline int tp_in_scope(void) "
                    f"{{ u64 cg = bpf_get_current_cgroup_id(); return {POD_CGROUPS_MAP}.lookup(&cg) != 0; }}"]
        out += ["", fragment("program_helpers").rstrip("\n")]
        out += self.set_functions
        if self.compat_used:
            out.append("\n" + fragment("compat_helpers").rstrip("\n"))
        if self.uring_used:
            out.append("\n" + fragment("uring_helpers").rstrip("\n"))
        if self.exec_state:
            out.append("\n" + fragment("exec_state_save"))
            self.probes.setdefault("sched:sched_process_exec", []).insert(0, "tp_exec_state_save();")
            self.probes.setdefault("sched:sched_process_fork", []).append(fragment("exec_state_fork").rstrip("\n"))
            self.probes.setdefault("sched:sched_process_exit", []).append(
                self._state_exit("exec_state", "u32 tk = tid, pk = tg;"))
        for fid, _values, _ns in self.pf_specs:
            self.probes.setdefault("sched:sched_process_exit", []).append(self._state_exit(
                "pf_marks", f"struct tp_fc_key tk = {{.filter = {fid}, .tgid = tid}}, "
                            f"pk = {{.filter = {fid}, .tgid = tg}};"))
        for fid in range(self.fc_filters):
            self.probes.setdefault("sched:sched_process_exit", []).append(self._state_exit(
                "fc_marks", f"struct tp_fc_key tk = {{.filter = {fid}, .tgid = tid}}, "
                            f"pk = {{.filter = {fid}, .tgid = tg}};"))
        out += self.functions
        out += self.uprobe_entries
        for (mech, func), stmts in self.kfuncs.items():
            name = KFUNC_FRAGMENT[mech]
            out.append(fragment(name, func=func, body=indent("\n".join(stmts))).rstrip("\n"))
        for tp, stmts in self.probes.items():
            subsys, event = tp.split(":")
            out.append(f"TRACEPOINT_PROBE({subsys}, {event})\n{{\n" + "\n".join(
                "    " + line for s in stmts for line in s.splitlines()) + "\n    return 0;\n}")
        return "\n".join(out) + "\n"
