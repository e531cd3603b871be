"""Policy model → one specialised bcc program per policy.

Each hook becomes a C function with its selectors spelled out (first matching selector wins, AND
inside one); selector strings live in the ``strs`` array map, filled from Python after load (bcc
has no global data). What this kernel cannot serve is refused here with the YAML path and reason.

How hooks attach on this kind of kernel (no kprobes, no BPF trampolines, tracepoints fine):
- ``kprobes:`` with ``syscall: true`` (``__x64_sys_write``, ``sys_write`` and ``write`` all name
  the write syscall) → ``syscalls:sys_enter_<name>``; with ``return: true`` or a ``returnCopy``
  argument also ``sys_exit_<name>`` (the event is made at the exit, with the return value);
- ``fd_install`` with a FollowFD selector (Tetragon's fd-tracking idiom, removed from Tetragon)
  → the exits of open/openat/openat2/creat, the new fd resolved to its path; ``fd``-typed
  arguments of the policy's other hooks are resolved through the task's fd table at the call and
  match only files the FollowFD selectors would have followed;
- ``tracepoints:`` → the tracepoint, arguments by index of its format's non-common fields;
- other kernel functions, ``lsmhooks:`` and the Override action are refused with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from bpf.names import ACTION_NUMBERS, CAPABILITIES
from collector import connect_deny, sock_hooks, uprobes
from collector.policy.model import (
    FILE_TYPES,
    INT_OPERATORS,
    NAMESPACES,
    STRING_OPERATORS,
    STRING_TYPES,
    ArgFilter,
    ArgSpec,
    Hook,
    Policy,
    PolicyError,
    Selector,
)

TRACEFS = Path("/sys/kernel/tracing")
SYSCALL_PREFIXES = ("__x64_sys_", "__ia32_sys_", "__arm64_sys_", "__se_sys_", "__do_sys_", "sys_")
OPEN_SYSCALLS = ("open", "openat", "openat2", "creat")
NS_INDEX = {n: i for i, n in enumerate(NAMESPACES)}
CAP_TYPE_INDEX = {"Effective": 0, "Inheritable": 1, "Permitted": 2}
STR_MAX = 256
MAX_SLOTS = 4  # TP_SLOTS in bpf/policy.h
SEL_SLOTS = 6  # counters per hook: selectors 0-4, and 5 = hook without selectors
POD_CGROUPS_MAP = "pod_cgroups"   # scoped policies: cgroup id → 1, filled by collector/policy/pod_scope.py
POD_CGROUPS_MAX = 8192
# the action recorded when a selector lists several: the strongest one
ACTION_RANK = ["Sigkill", "Signal", "Override", "NoPost", "FollowFD", "UnfollowFD", "CopyFD", "Post"]

INT_ARG_KIND = {
    "int": "TP_ARG_INT", "sint8": "TP_ARG_INT", "int8": "TP_ARG_INT", "sint16": "TP_ARG_INT",
    "int16": "TP_ARG_INT", "int32": "TP_ARG_INT", "sint32": "TP_ARG_INT",
    "uint8": "TP_ARG_UINT", "uint16": "TP_ARG_UINT", "uint32": "TP_ARG_UINT",
    "ulong": "TP_ARG_UINT", "uint64": "TP_ARG_UINT",
    "int64": "TP_ARG_LONG", "sint64": "TP_ARG_LONG", "long": "TP_ARG_LONG", "auto": "TP_ARG_LONG",
    "size_t": "TP_ARG_SIZE",
}


@dataclass
class Field:
    name: str
    ctype: str

    @property
    def is_pointer(self) -> bool:
        return "*" in self.ctype

    @property
    def is_data_loc(self) -> bool:
        return self.ctype.startswith("__data_loc")


@dataclass
class CompiledHook:
    hook_id: int
    hook: Hook
    attach: list[str]            # "subsys:event" tracepoints it uses
    function_name: str           # as events name it (Tetragon's call name)
    serve: str                   # how it is served, said at load
    uprobe: uprobes.Target | None = None   # uprobes: where the manager attaches ``uprobe_fn``
    uprobe_fn: str = ""


@dataclass
class Compiled:
    policy: Policy
    text: str
    strings: list[bytes]
    hooks: list[CompiledHook]
    notices: list[str] = field(default_factory=list)
    connect_rules: list[connect_deny.ConnectRule] = field(default_factory=list)  # Override on tcp_connect


def tracepoint_fields(subsys: str, event: str, tracefs: Path = TRACEFS) -> list[Field] | None:
    """Non-common fields of a tracepoint's format, in order; None when it does not exist."""
    try:
        text = (tracefs / "events" / subsys / event / "format").read_text()
    except OSError:
        return None
    out = []
    for line in text.splitlines():
        m = re.match(r"\s*field:(.+?);\s*offset:", line)
        if not m:
            continue
        decl = m.group(1).strip()
        fm = re.match(r"(.*?)([A-Za-z_]\w*)(\[\w*\])?$", decl)
        if not fm:
            continue
        ctype, name = (fm.group(1) + (fm.group(3) or "")).strip(), fm.group(2)
        if name.startswith("common_"):
            continue
        out.append(Field(name, ctype))
    return out


def syscall_name(call: str) -> str:
    for prefix in SYSCALL_PREFIXES:
        if call.startswith(prefix):
            return call[len(prefix):]
    return call


class _Fail:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def __call__(self, path: str, reason: str) -> PolicyError:
        return PolicyError(path, reason, self.policy.line_of(path), self.policy.source)


@dataclass
class _Source:
    """Where a hook's arguments come from."""

    kind: str                    # "syscall", "syscall_ret", "open", "tracepoint", "sock", "uprobe"
    fields: list[Field]
    attach_enter: str = ""
    attach_exit: list[str] = field(default_factory=list)
    target: uprobes.Target | None = None
    clone3_flags: bool = False   # clone3: argument 0 is clone_args.flags, read from user memory


# the start of every generated hook function: scratch maps, the policy's on switch, the task
_HOOK_PROLOGUE = """    int zero = 0;
    struct tp_hook_buf *b = hook_scratch.lookup(&zero);
    struct tp_path_buf *pb = path_scratch.lookup(&zero);
    struct tp_slots *s = slot_scratch.lookup(&zero);
    u32 *on = enabled.lookup(&zero);
    if (!b || !pb || !s || !on || !*on)
        return 0;
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    u32 have = 0;
    int ok = 1;
"""


def compile_policy(policy: Policy, policy_id: int, host_ns: list[int], kprobes: bool = False,
                   tracefs: Path = TRACEFS, ringbuf_pages: int = 64) -> Compiled:
    fail = _Fail(policy)
    gen = _Gen(policy, policy_id, host_ns, fail, tracefs)
    follow = _follow_selectors(policy)
    compiled: list[CompiledHook] = []
    for hid, hook in enumerate(policy.hooks):
        try:
            compiled.append(gen.hook(hid, hook, follow, kprobes))
        except PolicyError as exc:
            if not (hook.ignore_call_not_found and exc.path == f"{hook.path}.call"):
                raise
            gen.notices.append(f"{hook.path}: skipped (ignore.callNotFound): {exc.reason}")
    if not compiled:
        if policy.loader:  # spec.loader alone: the manager turns the loader sensor on, no program
            return Compiled(policy, "", [], [], gen.notices)
        raise fail("spec", "no hook of the policy can be served")
    if policy.scoped and gen.connect_rules:
        raise fail(scope_path(policy), "an Override on tcp_connect is enforced by cgroup/connect4+6 programs "
                                       "shared by all policies, which cannot be scoped to pods yet")
    text = gen.program(ringbuf_pages)
    return Compiled(policy, text, gen.strings, compiled, gen.notices, gen.connect_rules)


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


class _Gen:
    def __init__(self, policy: Policy, policy_id: int, host_ns: list[int], fail: _Fail, tracefs: Path) -> None:
        self.policy = policy
        self.policy_id = policy_id
        self.host_ns = host_ns
        self.fail = fail
        self.tracefs = tracefs
        self.strings: list[bytes] = []
        self.notices: list[str] = []
        self.functions: list[str] = []
        self.probes: dict[str, list[str]] = {}   # "subsys:event" → statements
        self.pending_maps: list[str] = []
        self.exec_state = False
        self.ratelimit = False
        self.fc_filters = 0
        self.sock = False                        # socket hooks: collector/sock_hooks.py helpers
        self.uprobe_entries: list[str] = []      # uprobe entry functions, after the hook functions
        self.connect_rules: list[connect_deny.ConnectRule] = []
        self.max_slots = 1
        self.monitor = policy.mode == "monitor"
        # a policy scoped to pods acts only in the cgroups of the selected containers: checked first
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

    # ---- hooks -----------------------------------------------------------------------------
    def hook(self, hid: int, hook: Hook, follow: list[tuple[Selector, int]], kprobes: bool) -> CompiledHook:
        src, fname, serve = self._source(hook, kprobes)
        self._check_actions(hook, hid)
        h = _HookGen(self, hid, hook, src)
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
            return CompiledHook(hid, hook, [], fname, serve, src.target, f"tp_uprobe_{hid}")
        return CompiledHook(hid, hook, attach, fname, serve)

    def _source(self, hook: Hook, kprobes: bool) -> tuple[_Source, str, str]:
        p = hook.path
        if hook.kind == "lsmhook":
            raise self.fail(f"{p}.hook", f"lsmhook {hook.call!r} cannot be served: BPF LSM programs need "
                                         "BPF trampolines, which this kernel refuses (EPERM)")
        if hook.kind == "tracepoint":
            fields = tracepoint_fields(hook.subsystem, hook.event, self.tracefs)
            if fields is None:
                raise self.fail(f"{p}.event", f"no tracepoint {hook.subsystem}:{hook.event} on this kernel")
            self._check_indexes(hook, fields, f"{hook.subsystem}:{hook.event}")
            tp = f"{hook.subsystem}:{hook.event}"
            return (_Source("tracepoint", fields, attach_enter=tp), hook.call or hook.event,
                    f"tracepoint {tp}")
        if hook.kind == "uprobe":
            return self._uprobe_source(hook)
        if hook.kind == "kprobe" and hook.call in sock_hooks.SOCK_HOOKS:
            sh = sock_hooks.SOCK_HOOKS[hook.call]
            for a in hook.args:
                if a.index != 0 or a.type not in sock_hooks.SOCK_ARG_TYPES:
                    raise self.fail(f"{a.path}.index", f"{hook.call} is served with one argument: "
                                                       "index 0, type sock")
            if hook.return_:
                raise self.fail(f"{p}.return", f"{hook.call} is served without a return value")
            self.sock = True
            return (_Source("sock", [Field("sk", "struct sock *")], attach_exit=list(sh.tracepoints)),
                    hook.call, sh.how)
        name = syscall_name(hook.call)
        fields = tracepoint_fields("syscalls", f"sys_enter_{name}", self.tracefs)
        is_sys = hook.syscall or hook.call != name
        if is_sys and fields is not None:
            if not hook.syscall:
                self.notices.append(f"{p}: {hook.call} served as the {name} syscall")
            fields = [f for f in fields if f.name != "__syscall_nr"]
            self._check_indexes(hook, fields, f"syscall {name}")
            needs_ret = hook.return_ or any(a.return_copy for a in hook.args) or any(
                s.match_return_args for s in hook.selectors)
            enter = f"syscalls:sys_enter_{name}"
            clone3 = self._clone3_flags(hook, name, fields)
            if needs_ret:
                return (_Source("syscall_ret", fields, attach_enter=enter,
                                attach_exit=[f"syscalls:sys_exit_{name}"], clone3_flags=clone3),
                        hook.call, f"{enter} + sys_exit_{name}")
            if clone3:  # flags unreadable at the enter (page not resident): read at the exit
                return (_Source("syscall", fields, attach_enter=enter, attach_exit=[f"syscalls:sys_exit_{name}"],
                                clone3_flags=True),
                        hook.call, f"{enter} (+ sys_exit_{name} when clone_args is not resident at the call)")
            return _Source("syscall", fields, attach_enter=enter), hook.call, enter
        if hook.syscall:
            raise self.fail(f"{p}.call", f"{hook.call!r} is not a syscall of this kernel "
                                         f"(no tracepoint syscalls:sys_enter_{name})")
        if hook.call == "fd_install" and any(a.action == "FollowFD" for s in hook.selectors
                                             for a in s.match_actions):
            if hook.return_:
                raise self.fail(f"{p}.return", "fd_install has no return value")
            exits = [f"syscalls:sys_exit_{n}" for n in OPEN_SYSCALLS
                     if tracepoint_fields("syscalls", f"sys_exit_{n}", self.tracefs) is not None]
            for a in hook.args:
                if a.index > 1:
                    raise self.fail(f"{a.path}.index", "fd_install has 2 arguments (fd, file)")
            self.notices.append(
                f"{p}: fd_install (a kernel function) cannot be hooked on this kernel (no kprobes, BPF "
                "trampolines refused); FollowFD is served by resolving file descriptors to paths in "
                "the kernel: opens are reported from the exits of open/openat/openat2/creat with the "
                "new fd's path, and fd arguments of the other hooks match only files the FollowFD "
                "selectors would have followed; UnfollowFD/CopyFD need no state and are accepted")
            return _Source("open", [Field("fd", "int"), Field("file", "int")], attach_exit=exits), \
                "fd_install", "exits of " + ", ".join(OPEN_SYSCALLS)
        why = ("this kernel has no kprobes (CONFIG_KPROBES unset) and refuses BPF trampolines "
               "(fentry), so kernel functions cannot be hooked" if not kprobes else
               "tetrapipe attaches kernel functions only through syscall tracepoints so far")
        raise self.fail(f"{p}.call", f"kernel function {hook.call!r} cannot be served: {why}")

    def _clone3_flags(self, hook: Hook, name: str, fields: list[Field]) -> bool:
        """clone3(uargs, size) passes its flags inside ``struct clone_args``: an integer-typed
        argument 0 is served as clone_args.flags (the u64 at offset 0, read from the caller's
        memory when ``size`` covers it), so a Mask on CLONE_NEW* matches clone3 as it does clone."""
        if name != "clone3" or not fields or not fields[0].is_pointer:
            return False
        arg0 = hook.arg(0)
        if arg0 is None or arg0.type not in INT_ARG_KIND:
            return False
        self.notices.append(f"{hook.path}: clone3 argument 0 ({arg0.type}) is served as clone_args.flags, read "
                            "from the caller's struct (when size covers it); matchArgs on index 0 compare the "
                            "flags, as for clone")
        return True

    def _uprobe_source(self, hook: Hook) -> tuple[_Source, str, str]:
        """A uprobe: the symbol (or offset) resolved in the file now, arguments from registers."""
        p = hook.path
        spec = uprobes.UprobeSpec(hook.binary, [hook.call] if hook.call else [],
                                  [hook.offset] if hook.offset >= 0 else [], where=p)
        try:
            if not Path(hook.binary).is_file():
                raise uprobes.UprobeError(f"{p}.path", f"{hook.binary} does not exist or is not a file")
            (target,) = uprobes.resolve(spec)
        except uprobes.UprobeError as exc:
            raise self.fail(exc.path, exc.reason) from None
        for a in hook.args:
            if a.type not in uprobes.ARG_TYPES:
                raise self.fail(f"{a.path}.type", f"type {a.type} is not supported for uprobes (one of "
                                                  f"{', '.join(sorted(uprobes.ARG_TYPES))})")
        pointer = {a.index for a in hook.args if a.type in ("string", "char_buf")}
        fields = [Field(f"arg{i}", "char *" if i in pointer else "u64") for i in range(uprobes.MAX_ARGS)]
        self._check_indexes(hook, fields, f"uprobe {target.symbol or hex(target.offset)}")
        where = f"{target.path}:{target.symbol}" if target.symbol else f"{target.path}"
        return (_Source("uprobe", fields, target=target), target.symbol,
                f"uprobe {where}+{target.offset:#x}")

    def _check_indexes(self, hook: Hook, fields: list[Field], what: str) -> None:
        names = ", ".join(f.name for f in fields) or "none"
        for a in hook.args:
            if a.index >= len(fields):
                raise self.fail(f"{a.path}.index", f"{what} has {len(fields)} arguments ({names}): "
                                                   f"index {a.index} is out of range")
            if a.size_arg_index and a.size_arg_index > len(fields):
                raise self.fail(f"{a.path}.sizeArgIndex", f"{what} has {len(fields)} arguments ({names}): "
                                                          f"sizeArgIndex {a.size_arg_index} (from 1) is out of range")

    def _connect_rule(self, hook: Hook, s: Selector, hid: int, index: int) -> None:
        """Override on tcp_connect: the selector becomes a cgroup/connect4+6 rule (EPERM)."""
        other = (s.match_pids or s.match_parent_binaries or s.match_namespaces or s.match_capabilities
                 or s.match_namespace_changes or s.match_capability_changes or s.match_return_args)
        if other:
            raise self.fail(s.path, "an Override on tcp_connect is enforced by cgroup/connect4 and "
                                    "connect6 programs, which check only socket matchArgs and matchBinaries")
        try:
            rule = connect_deny.rule_from_selector(s.match_args, s.match_binaries)
        except connect_deny.RuleError as exc:
            raise self.fail(s.path, f"Override on tcp_connect: {exc}") from None
        # each refusal is reported as this policy's tcp_connect event unless the selector says NoPost
        rule.policy_id, rule.hook_id, rule.selector = self.policy_id, hid, index
        rule.post = not any(a.action == "NoPost" for a in s.match_actions)
        override = next(a for a in s.match_actions if a.action == "Override")
        rule.error = override.arg_error or -1   # argError (0 or absent: EPERM, as the kernel's default)
        try:
            rule.check()
        except connect_deny.RuleError as exc:
            raise self.fail(f"{override.path}.argError", f"Override on tcp_connect: {exc}") from None
        self.connect_rules.append(rule)

    def _check_actions(self, hook: Hook, hid: int) -> None:
        for index, s in enumerate(hook.selectors):
            if hook.kind == "kprobe" and hook.call == "tcp_connect" and any(
                    a.action == "Override" for a in s.match_actions):
                self._connect_rule(hook, s, hid, index)
            for a in s.match_actions + s.match_return_actions:
                if a.action == "Override" and hook.kind == "kprobe" and hook.call == "tcp_connect":
                    continue
                if a.action == "Override":
                    raise self.fail(f"{a.path}.action", "Override cannot be served: it needs "
                                    "bpf_override_return on a kprobe (CONFIG_BPF_KPROBE_OVERRIDE); this "
                                    "kernel has no kprobes and a syscall tracepoint cannot change a return value")
                if a.action not in ACTION_RANK:
                    raise self.fail(f"{a.path}.action", f"action {a.action} is not supported by tetrapipe")
            for a in s.match_actions:
                if a.rate_limit:
                    self.notices.append(f"{a.path}.rateLimit: one event per {a.rate_limit} per hook, selector and "
                                        f"{a.rate_limit_scope or 'thread'} (not per distinct argument values)")
            if s.match_return_actions:
                raise self.fail(f"{s.path}.matchReturnActions", "matchReturnActions is not supported by tetrapipe yet")
            for b in s.match_parent_binaries:
                if b.follow_children:
                    raise self.fail(f"{b.path}.followChildren", "followChildren applies to matchBinaries only")
            for b in s.match_binaries:
                if b.follow_children:
                    self.notices.append(f"{b.path}.followChildren: descendants of processes that exec a matching "
                                        "binary after the policy loaded are followed")
            for pf in s.match_pids:
                if pf.follow_forks and pf.operator == "NotIn":
                    self.notices.append(f"{pf.path}: followForks with NotIn checks the process itself")

    def follow_children(self, op: str, values: list[str], path: str, h: _HookGen) -> int:
        """Register a followChildren binaries filter: exec-time marking and fork-time inheritance."""
        fid = self.fc_filters
        self.fc_filters += 1
        cond = h.str_cond(0, op, values, path)
        self.probes.setdefault("sched:sched_process_exec", []).append(f"""{{
    int zero = 0;
    struct tp_path_buf *pb = path_scratch.lookup(&zero);
    struct tp_slots *s = slot_scratch.lookup(&zero);
    u32 *on = enabled.lookup(&zero);
    if (pb && s && on && *on) {{
        struct task_struct *task = (struct task_struct *)bpf_get_current_task();
        u32 sf = 0;
        s->slen[0] = tp_exe_path(pb, task, s->slot[0], &sf);
        if ({cond}) {{
            struct tp_fc_key fk = {{.filter = {fid}, .tgid = bpf_get_current_pid_tgid() >> 32}};
            u8 one = 1;
            fc_marks.update(&fk, &one);
        }}
    }}
}}""")
        self.probes.setdefault("sched:sched_process_fork", []).append(f"""{{
    struct tp_fc_key fk = {{.filter = {fid}, .tgid = bpf_get_current_pid_tgid() >> 32}};
    if (fc_marks.lookup(&fk)) {{
        u8 one = 1;
        fk.tgid = args->child_pid;
        fc_marks.update(&fk, &one);
    }}
}}""")
        return fid

    # ---- program ---------------------------------------------------------------------------
    def program(self, ringbuf_pages: int) -> str:
        slots = 1
        while slots < self.max_slots:
            slots *= 2
        nstr = max(len(self.strings), 1)
        ncount = max(len(self.policy.hooks), 1) * SEL_SLOTS
        out = [
            f"/* generated by collector/policy/compiler.py for policy {self.policy.name!r} */",
            f"#define TP_SLOTS {slots}",
            '#include "records.h"',
            '#include "path.h"',
            '#include "policy.h"',
            "",
            f"BPF_RINGBUF_OUTPUT(events, {ringbuf_pages});",
            "BPF_PERCPU_ARRAY(drops, u64, 1);",
            "BPF_PERCPU_ARRAY(path_scratch, struct tp_path_buf, 1);",
            "BPF_PERCPU_ARRAY(hook_scratch, struct tp_hook_buf, 1);",
            "BPF_PERCPU_ARRAY(slot_scratch, struct tp_slots, 1);",
            f"BPF_ARRAY(strs, struct tp_str, {nstr});",
            "BPF_ARRAY(enabled, u32, 1);  /* 0 until the strings are filled, and while disabled */",
            f"BPF_PERCPU_ARRAY(sel_counts, u64, {ncount});",
            *self.pending_maps,
        ]
        if self.exec_state:
            out.append("BPF_TABLE(\"lru_hash\", u32, struct tp_exec_state, exec_state, 32768);")
        if self.fc_filters:
            out.append("struct tp_fc_key { u32 filter; u32 tgid; };")
            out.append("BPF_TABLE(\"lru_hash\", struct tp_fc_key, u8, fc_marks, 65536);")
        if self.ratelimit:
            out.append("struct tp_rl_key { u32 hook_sel; u32 scope; };")
            out.append("BPF_TABLE(\"lru_hash\", struct tp_rl_key, u64, ratelimit, 32768);")
        if self.sock:
            out.append(sock_hooks.SOCK_HELPERS_C)
        if self.policy.scoped:
            out += [f"BPF_HASH({POD_CGROUPS_MAP}, u64, u8, {POD_CGROUPS_MAX});  "
                    "/* cgroup ids of the selected containers (collector/policy/pod_scope.py) */",
                    "static __always_inline int tp_in_scope(void) "
                    f"{{ u64 cg = bpf_get_current_cgroup_id(); return {POD_CGROUPS_MAP}.lookup(&cg) != 0; }}"]
        out += [
            "",
            "static __always_inline struct tp_str *tp_strv(u32 id) { return strs.lookup(&id); }",
            "static __always_inline void tp_count(u32 idx) { u64 *c = sel_counts.lookup(&idx); if (c) (*c)++; }",
            "static __always_inline void tp_drop(void) { int z = 0; u64 *d = drops.lookup(&z); if (d) (*d)++; }",
            "static __always_inline int tp_emit(struct tp_hook_buf *b, u32 size) "
            "{ return events.ringbuf_output(b, size, 0); }",
        ]
        if self.exec_state:
            out.append(EXEC_STATE_FN)
            self.probes.setdefault("sched:sched_process_exec", []).insert(0, "tp_exec_state_save();")
        out += self.functions
        out += self.uprobe_entries
        for tp, stmts in self.probes.items():
            subsys, event = tp.split(":")
            out.append(f"TRACEPOINT_PROBE({subsys}, {event})\n{{\n" + "\n".join(
                "    " + line for s in stmts for line in s.splitlines()) + "\n    return 0;\n}")
        return "\n".join(out) + "\n"


EXEC_STATE_FN = """
static __always_inline void tp_exec_state_save(void)
{
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    struct tp_exec_state st = {};
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
#pragma unroll
    for (int i = 0; i < TP_NS_COUNT; i++)
        st.ns[i] = tp_ns_inum(task, i);
    st.caps[0] = tp_caps(task, 0);
    st.caps[1] = tp_caps(task, 1);
    st.caps[2] = tp_caps(task, 2);
    exec_state.update(&tgid, &st);
}
"""


class _HookGen:
    """C for one hook: its function ``tp_hook_<id>`` and the probe statements that call it."""

    def __init__(self, gen: _Gen, hid: int, hook: Hook, src: _Source) -> None:
        self.g = gen
        self.hid = hid
        self.hook = hook
        self.src = src
        self.slots: dict[str, int] = {}
        self.fail = gen.fail

    @property
    def nslots(self) -> int:
        return max(len(self.slots), 1)

    def slot(self, key: str) -> int:
        if key not in self.slots:
            self.slots[key] = len(self.slots)
        return self.slots[key]

    # -- values ---------------------------------------------------------------------------------
    def _field(self, idx: int) -> Field:
        return self.src.fields[idx]

    def is_stringy(self, arg: ArgSpec) -> bool:
        return arg.type in FILE_TYPES or arg.type in STRING_TYPES

    def ensure_arg_slot(self, arg: ArgSpec, as_fd: bool = False) -> tuple[str, int]:
        """(C that fills the slot once, slot index) for a string-valued argument."""
        f = self._field(arg.index)
        k = self.slot(f"arg{arg.index}")
        t = "fd" if as_fd else arg.type
        if self.src.kind == "open" or (t in FILE_TYPES and not f.is_pointer and not f.is_data_loc):
            fill = (f"struct file *fl = tp_fd_file(task, (long)a[{arg.index}]);\n"
                    f"if (fl) s->slen[{k}] = tp_file_path(pb, task, fl, s->slot[{k}], &sf);\n"
                    "else sf |= TP_ARGF_ERROR;")
        elif f.is_data_loc:
            fill = (f"int r = bpf_probe_read_kernel_str(s->slot[{k}], TP_PATH_MAX,\n"
                    f"                                   (char *)ctx + (a[{arg.index}] & 0xFFFF));\n"
                    f"if (r > 0) s->slen[{k}] = (r - 1) & (TP_PATH_MAX - 1); else sf |= TP_ARGF_ERROR;")
        elif f.is_pointer and (t in STRING_TYPES or t == "path"):
            fill = (f"int r = bpf_probe_read_user_str(s->slot[{k}], TP_PATH_MAX, (void *)a[{arg.index}]);\n"
                    f"if (r <= 0) r = bpf_probe_read_kernel_str(s->slot[{k}], TP_PATH_MAX, (void *)a[{arg.index}]);\n"
                    f"if (r > 0) s->slen[{k}] = (r - 1) & (TP_PATH_MAX - 1); else sf |= TP_ARGF_ERROR;\n"
                    f"if (r >= TP_PATH_MAX) sf |= TP_ARGF_TRUNC;")
        else:
            raise self.fail(f"{arg.path}.type", f"a {arg.type} argument cannot be read from "
                                                f"{f.ctype} {f.name} of this hook")
        return self._once(k, fill), k

    def ensure_exe_slot(self, parent: bool) -> tuple[str, int]:
        k = self.slot("pbin" if parent else "bin")
        who = "pt" if parent else "task"
        pre = "struct task_struct *pt = 0; TP_RD(pt, task->real_parent);\nif (pt) " if parent else ""
        fill = f"{pre}s->slen[{k}] = tp_exe_path(pb, {who}, s->slot[{k}], &sf);"
        return self._once(k, fill), k

    def _once(self, k: int, fill: str) -> str:
        return (f"if (!(have & {1 << k})) {{\n    u32 sf = 0;\n    have |= {1 << k};\n    s->slen[{k}] = 0;\n"
                + "\n".join("    " + x for x in fill.splitlines())
                + f"\n    s->sflags[{k}] = sf;\n}}")

    # -- filters --------------------------------------------------------------------------------
    def _ints(self, f: ArgFilter, path: str) -> list[int]:
        out = []
        for j, v in enumerate(f.values):
            try:
                out.append(int(v, 0))
            except ValueError:
                raise self.fail(f"{path}.values[{j}]", f"{v!r} is not an integer") from None
        return out

    def _ranges(self, f: ArgFilter, path: str) -> list[tuple[int, int]]:
        out = []
        for j, v in enumerate(f.values):
            lo, sep, hi = v.partition(":")
            try:
                out.append((int(lo, 0), int(hi, 0)) if sep else (int(lo, 0), int(lo, 0)))
            except ValueError:
                raise self.fail(f"{path}.values[{j}]", f"{v!r} is not a range like 10:20") from None
        return out

    def int_cond(self, expr: str, f: ArgFilter, path: str) -> str:
        op = f.operator
        if op not in INT_OPERATORS:
            raise self.fail(f"{path}.operator", f"operator {op} does not apply to an integer argument")
        if op in ("InRange", "NotInRange"):
            rs = self._ranges(f, path)
            any_in = " || ".join(f"({expr} >= {lo}LL && {expr} <= {hi}LL)" for lo, hi in rs)
            return f"({any_in})" if op == "InRange" else f"!({any_in})"
        vals = self._ints(f, path)
        if op == "Equal":
            return "(" + " || ".join(f"{expr} == {v}LL" for v in vals) + ")"
        if op == "NotEqual":
            return "(" + " && ".join(f"{expr} != {v}LL" for v in vals) + ")"
        if op in ("GT", "GreaterThan"):
            return f"({expr} > {vals[0]}LL)"
        if op in ("LT", "LessThan"):
            return f"({expr} < {vals[0]}LL)"
        # Mask: any of the bits
        return "(" + " || ".join(f"(((u64){expr}) & {v}ULL)" for v in vals) + ")"

    def str_cond(self, k: int, op: str, values: list[str], path: str) -> str:
        how = {"Equal": 0, "NotEqual": 0, "In": 0, "NotIn": 0, "Prefix": 1, "NotPrefix": 1,
               "Postfix": 2, "NotPostfix": 2}[op]
        parts = []
        for j, v in enumerate(values):
            sid = self.g.string_id(v, f"{path}.values[{j}]")
            parts.append(f"tp_str_cmp(s->slot[{k}], s->slen[{k}], tp_strv({sid}), {how})")
        any_match = "(" + " || ".join(parts) + ")"
        return f"!{any_match}" if op.startswith("Not") else any_match

    def arg_filter(self, f: ArgFilter, path: str, ret: bool = False) -> list[str]:
        if ret:
            return [f"if (ok) ok = is_ret && {self.int_cond('ret', f, path)};"]
        arg = self.hook.arg(f.index)
        assert arg is not None
        if arg.type in sock_hooks.SOCK_ARG_TYPES and self.src.kind == "sock":
            try:
                cond = sock_hooks.sock_cond(f"((struct tp_sockinfo *)a[{f.index}])", f.operator, f.values)
            except sock_hooks.SockFilterError as exc:
                raise self.fail(f"{path}.operator", str(exc)) from None
            return [f"if (ok) ok = {cond};"]
        if f.operator not in INT_OPERATORS | STRING_OPERATORS:
            raise self.fail(f"{path}.operator", f"operator {f.operator} is not supported by tetrapipe")
        if self.is_stringy(arg) and f.operator in STRING_OPERATORS:
            ensure, k = self.ensure_arg_slot(arg)
            return [f"if (ok) {{\n{_indent(ensure)}\n    ok = {self.str_cond(k, f.operator, f.values, path)};\n}}"]
        if arg.type in INT_ARG_KIND or (arg.type in ("fd", "file") and not self._field(arg.index).is_pointer):
            if f.operator in STRING_OPERATORS - INT_OPERATORS:
                raise self.fail(f"{path}.operator", f"operator {f.operator} does not apply to a {arg.type} argument")
            return [f"if (ok) ok = {self.int_cond(f'(s64)a[{f.index}]', f, path)};"]
        raise self.fail(f"{path}.operator", f"operator {f.operator} does not apply to a {arg.type} argument")

    def selector_conds(self, s: Selector) -> list[str]:
        lines: list[str] = []
        for i, f in enumerate(s.match_args):
            lines += self.arg_filter(f, f.path or f"{s.path}.matchArgs[{i}]")
        for i, f in enumerate(s.match_return_args):
            lines += self.arg_filter(f, f.path or f"{s.path}.matchReturnArgs[{i}]", ret=True)
        for pf in s.match_pids:
            val = "tp_ns_pid(task)" if pf.is_namespace_pid else "(u32)(bpf_get_current_pid_tgid() >> 32)"
            eq = " || ".join(f"v == {v}" for v in pf.values)
            if pf.operator == "In":
                code = f"u32 v = {val};\nint m = ({eq});\n"
                if pf.follow_forks:
                    field_ = "tp_ns_pid(t)" if pf.is_namespace_pid else "0"
                    code += ("struct task_struct *t = task;\n#pragma unroll\n"
                             "for (int i = 0; i < TP_ANCESTORS; i++) {\n"
                             "    if (m) break;\n    struct task_struct *pp = 0;\n    TP_RD(pp, t->real_parent);\n"
                             "    if (!pp || pp == t) break;\n    t = pp;\n")
                    code += (f"    v = {field_};\n" if pf.is_namespace_pid else "    TP_RD(v, t->tgid);\n")
                    code += f"    m = ({eq});\n}}\n"
                code += "ok = m;"
            else:
                code = f"u32 v = {val};\nok = !({eq});"
            lines.append(f"if (ok) {{\n{_indent(code)}\n}}")
        for key, parent in (("match_binaries", False), ("match_parent_binaries", True)):
            for bf in getattr(s, key):
                ensure, k = self.ensure_exe_slot(parent)
                op = {"In": "Equal", "NotIn": "NotEqual"}.get(bf.operator, bf.operator)
                if not bf.follow_children:
                    cond = self.str_cond(k, op, bf.values, bf.path)
                    lines.append(f"if (ok) {{\n{_indent(ensure)}\n    ok = {cond};\n}}")
                    continue
                # followChildren: a mark per process, set at an exec of a matching binary and
                # inherited at fork; the selector matches a marked process or a direct match
                positive = op.removeprefix("Not")
                neg = "!" if op.startswith("Not") else ""
                fid = self.g.follow_children(positive, bf.values, bf.path, self)
                lines.append(
                    f"if (ok) {{\n    struct tp_fc_key fk = {{.filter = {fid}, "
                    ".tgid = bpf_get_current_pid_tgid() >> 32};\n"
                    f"    int m = fc_marks.lookup(&fk) != 0;\n    if (!m) {{\n{_indent(ensure, 8)}\n"
                    f"        m = {self.str_cond(k, positive, bf.values, bf.path)};\n    }}\n    ok = {neg}m;\n}}")
        for nf in s.match_namespaces:
            idx = NS_INDEX[nf.namespace]
            inums = []
            for v in nf.values:
                inums.append(self.g.host_ns[idx] if v == "host_ns" else int(v))
            eq = " || ".join(f"v == {i}U" for i in inums)
            neg = "!" if nf.operator == "NotIn" else ""
            lines.append(f"if (ok) {{\n    u32 v = tp_ns_inum(task, {idx});\n    ok = {neg}({eq});\n}}")
        for cf in s.match_capabilities:
            mask = sum(1 << CAPABILITIES.index(c) for c in cf.values)
            cond = f"(tp_caps(task, {CAP_TYPE_INDEX[cf.type]}) & {mask}ULL)"
            cond = f"({cond} != 0)" if cf.operator == "In" else f"({cond} == 0)"
            if cf.is_namespace_capability:
                # held in the task's own (non-initial) user namespace
                cond = f"(tp_user_ns_level(task) > 0 && {cond})"
            lines.append(f"if (ok) ok = {cond};")
        for nc in s.match_namespace_changes:
            self.g.exec_state = True
            changed = " || ".join(f"(st->ns[{NS_INDEX[n]}] != tp_ns_inum(task, {NS_INDEX[n]}))" for n in nc.values)
            neg = "!" if nc.operator == "NotIn" else ""
            lines.append("if (ok) {\n    u32 tg = bpf_get_current_pid_tgid() >> 32;\n"
                         "    struct tp_exec_state *st = exec_state.lookup(&tg);\n"
                         f"    int ch = st ? ({changed}) : 0;\n    ok = {neg}ch;\n}}")
        for cc in s.match_capability_changes:
            self.g.exec_state = True
            mask = sum(1 << CAPABILITIES.index(c) for c in cc.values)
            t = CAP_TYPE_INDEX[cc.type]
            neg = "!" if cc.operator == "NotIn" else ""
            lines.append("if (ok) {\n    u32 tg = bpf_get_current_pid_tgid() >> 32;\n"
                         "    struct tp_exec_state *st = exec_state.lookup(&tg);\n"
                         f"    int ch = st ? (((st->caps[{t}] ^ tp_caps(task, {t})) & {mask}ULL) != 0) : 0;\n"
                         f"    ok = {neg}ch;\n}}")
        return lines

    def follow_conds(self, arg_index: int, follow: list[tuple[Selector, int]]) -> list[str]:
        """The fd at ``arg_index`` resolves to a file one of the FollowFD selectors follows."""
        fake = ArgSpec(index=arg_index, type="fd", path=self.hook.path)
        ensure, k = self.ensure_arg_slot(fake, as_fd=True)
        alts = []
        for s, name_idx in follow:
            inner: list[str] = []
            for f in s.match_args:
                if f.index != name_idx:
                    self.g.notices.append(f"{f.path}: a filter on fd_install's fd number does not carry over "
                                          "to the followed files of other hooks")
                    continue
                if f.operator not in STRING_OPERATORS:
                    raise self.fail(f.path, f"operator {f.operator} cannot filter the followed file's path")
                inner.append(f"if (ok) ok = {self.str_cond(k, f.operator, f.values, f.path)};")
            rest = Selector(match_pids=s.match_pids, match_binaries=s.match_binaries,
                            match_parent_binaries=s.match_parent_binaries, match_namespaces=s.match_namespaces,
                            match_capabilities=s.match_capabilities, path=s.path)
            inner += self.selector_conds(rest)
            alts.append("ok = 1;\n" + "\n".join(inner))
        code = [f"if (ok) {{\n{_indent(ensure)}\n    int any = 0;"]
        for alt in alts:
            code.append(f"    if (!any) {{\n{_indent(alt, 8)}\n        any = ok;\n    }}")
        code.append("    ok = any;\n}")
        return ["\n".join(code)]

    # -- the function ---------------------------------------------------------------------------
    def function(self, implicit: list[tuple[int, list[tuple[Selector, int]]]]) -> str:
        hook = self.hook
        hid = self.hid
        pre: list[str] = []
        for idx, follow in implicit:
            pre += self.follow_conds(idx, follow)
        sel_code: list[str] = []
        actions: list[tuple[int, str, int]] = []   # (selector, action name, signal)
        if not hook.selectors:
            sel_code.append(f"sel = {255}; act = {ACTION_NUMBERS['Post']};")
        for i, s in enumerate(hook.selectors):
            names = s.action_names() or ["Post"]
            main = min(names, key=lambda n: ACTION_RANK.index(n) if n in ACTION_RANK else 99)
            sig = 0
            for a in s.match_actions:
                if a.action == "Sigkill":
                    sig = 9
                elif a.action == "Signal" and not sig:
                    sig = a.arg_sig
            actions.append((i, main, sig))
            conds = self.selector_conds(s)
            sel_code.append("if (sel < 0) {\n    ok = 1;\n" + "\n".join(_indent(c) for c in conds)
                            + f"\n    if (ok) {{ sel = {i}; act = {ACTION_NUMBERS[main]}; }}\n}}")
        effects = []
        for i, s in enumerate(hook.selectors):
            rl = next((a for a in s.match_actions if a.rate_limit), None)
            if rl is None:
                continue
            self.g.ratelimit = True
            ns = _duration_ns(rl.rate_limit)
            scope = {"process": "id >> 32", "global": "0"}.get(rl.rate_limit_scope, "(u32)id")
            effects.append(
                f"if (sel == {i}) {{\n    u64 id = bpf_get_current_pid_tgid(), now = bpf_ktime_get_ns();\n"
                f"    struct tp_rl_key k = {{.hook_sel = {hid * SEL_SLOTS + i}, .scope = {scope}}};\n"
                f"    u64 *last = ratelimit.lookup(&k);\n    if (last && now - *last < {ns}ULL)\n        return 0;\n"
                "    ratelimit.update(&k, &now);\n}")
        for i, main, sig in actions:
            stmts = []
            if sig and not self.g.monitor:
                stmts.append(f"bpf_send_signal({sig});")
            if main == "NoPost":
                stmts.append("return 0;")
            if stmts:
                effects.append(f"if (sel == {i}) {{ {' '.join(stmts)} }}")
        ser = self.serialize()
        flags = "TP_HOOK_MONITOR" if self.g.monitor else "0"
        fn = f"""
static __always_inline int tp_hook_{hid}(void *ctx, u64 *a, s64 ret, u32 is_ret)
{{
{self.g.scope_check}{_HOOK_PROLOGUE}    int sel = -1;
    u32 act = 0;
{_indent(chr(10).join(pre))}
    if (!ok)
        return 0;
{_indent(chr(10).join(sel_code))}
    if (sel < 0)
        return 0;
    tp_count({hid * SEL_SLOTS} + (sel == 255 ? {SEL_SLOTS - 1} : sel));
{_indent(chr(10).join(effects))}
    u64 id = bpf_get_current_pid_tgid();
    b->e.h.kind = TP_REC_HOOK;
    b->e.h.version = 1;
    b->e.h.pid = id >> 32;
    b->e.h.tid = (u32)id;
    b->e.h.ktime = bpf_ktime_get_ns();
    b->e.policy_id = {self.g.policy_id}U;
    b->e.hook_id = {hid};
    b->e.selector = sel;
    b->e.action = act;
    b->e.flags = {flags} | (is_ret ? TP_HOOK_RETURN : 0);
    b->e.nargs = 0;
    b->e.ret = ret;
    u32 off = 0;
{_indent(ser)}
    off = TP_BOUND(off, 0x3fff);
    b->e.data_len = off;
    b->e.h.size = sizeof(struct tp_hook) + off;
    if (tp_emit(b, sizeof(struct tp_hook) + off) < 0)
        tp_drop();
    return 0;
}}"""
        self._probes(implicit)
        return fn

    def serialize(self) -> str:
        out = []
        for arg in self.hook.args:
            f = self._field(arg.index)
            if arg.type in sock_hooks.SOCK_ARG_TYPES and self.src.kind == "sock":
                out.append(sock_hooks.put_sock_c(arg.index))
                continue
            if arg.type in INT_ARG_KIND:
                out.append(f"off = tp_put_u64(b, off, {INT_ARG_KIND[arg.type]}, a[{arg.index}]);")
            elif self.is_stringy(arg):
                ensure, k = self.ensure_arg_slot(arg)
                kind = {"fd": "TP_ARG_FILE", "file": "TP_ARG_FILE",
                        "path": "TP_ARG_PATH"}.get(arg.type, "TP_ARG_STRING")
                out.append(f"{ensure}\noff = tp_put_slot(b, s, off, {kind}, {k});")
            elif arg.type in ("char_buf", "char_iovec", "const_buf"):
                if arg.type != "char_buf" or not f.is_pointer:
                    raise self.fail(f"{arg.path}.type", f"a {arg.type} argument cannot be read from {f.ctype} {f.name}")
                if arg.return_copy:
                    size = "(is_ret ? ret : 0)"
                elif arg.size_arg_index:
                    size = f"(s64)a[{arg.size_arg_index - 1}]"
                else:
                    raise self.fail(f"{arg.path}", "a char_buf argument needs sizeArgIndex or returnCopy")
                out.append(f"off = tp_put_user_buf(b, off, a[{arg.index}], {size});")
            else:
                raise self.fail(f"{arg.path}.type", f"argument type {arg.type} is not supported at "
                                                    f"{self.src.kind.replace('_ret', '')} hooks by tetrapipe")
        return "\n".join(out)

    def _probes(self, implicit: list[tuple[int, list[tuple[Selector, int]]]]) -> None:
        hid = self.hid
        src = self.src
        n = len(src.fields)
        loads = "\n".join(f"a[{i}] = (u64)args->{'data_loc_' if f.is_data_loc else ''}{f.name};"
                          for i, f in enumerate(src.fields[:6]))
        if src.kind == "uprobe":
            self.g.uprobe_entries.append(uprobes.entry_probe_c(hid, f"tp_uprobe_{hid}"))
            return
        if src.kind == "sock":
            if self.hook.call == "tcp_connect":
                self.g.pending_maps.append(f"BPF_HASH(pending_{hid}, u32, u32, 16384);")
            for tp, stmt in sock_hooks.probe_c(self.hook.call, f"tp_hook_{hid}(args, a, 0, 0);",
                                               f"pending_{hid}").items():
                self.g.probes.setdefault(tp, []).append(stmt)
        elif src.kind == "syscall" and src.clone3_flags:
            # the flags at the enter; if that memory is not resident (bpf_probe_read_user does
            # not fault pages in), at the exit, after the kernel's copy_from_user brought it in
            self.g.pending_maps.append(f'BPF_TABLE("lru_hash", u32, struct tp_pending, late_{hid}, 4096);')
            self.g.probes.setdefault(src.attach_enter, []).append(
                f"{{\n    u64 a[6] = {{}};\n{_indent(loads)}\n"
                "    if (tp_clone3_flags(a) < 0) {\n"
                "        struct tp_pending p = {};\n        p.a[0] = a[0];\n        p.a[1] = a[1];\n"
                "        u32 tid = (u32)bpf_get_current_pid_tgid();\n"
                f"        late_{hid}.update(&tid, &p);\n"
                f"    }} else {{\n        tp_hook_{hid}(args, a, 0, 0);\n    }}\n}}")
            # (an entry whose exit never came ages out of the LRU)
            self.g.probes.setdefault(src.attach_exit[0], []).append(
                f"{{\n    u32 tid = (u32)bpf_get_current_pid_tgid();\n"
                f"    struct tp_pending *p = late_{hid}.lookup(&tid);\n"
                "    if (p) {\n        u64 a[6] = {};\n        a[0] = p->a[0];\n        a[1] = p->a[1];\n"
                f"        late_{hid}.delete(&tid);\n"
                "        if (tp_clone3_flags(a) < 0)\n            a[0] = 0;\n"
                f"        tp_hook_{hid}(args, a, 0, 0);\n    }}\n}}")
        elif src.kind in ("syscall", "tracepoint"):
            self.g.probes.setdefault(src.attach_enter, []).append(
                f"{{\n    u64 a[6] = {{}};\n{_indent(loads)}\n    tp_hook_{hid}(args, a, 0, 0);\n}}")
        elif src.kind == "open":
            for tp in src.attach_exit:
                self.g.probes.setdefault(tp, []).append(
                    f"if (args->ret >= 0) {{\n    u64 a[6] = {{}};\n    a[0] = args->ret;\n    a[1] = args->ret;\n"
                    f"    tp_hook_{hid}(args, a, 0, 0);\n}}")
        else:  # syscall_ret: remember the arguments at the enter, make the event at the exit
            # LRU: an entry whose exit never came (the thread died in the call) ages out
            self.g.pending_maps.append(f'BPF_TABLE("lru_hash", u32, struct tp_pending, pending_{hid}, 16384);')
            pre = ""
            if implicit:
                pre = f"if (!tp_pre_{hid}(args, a))\n        return 0;\n"
                self.g.functions.append(self._prefilter(implicit))
            self.g.probes.setdefault(src.attach_enter, []).append(
                ("if (tp_in_scope()) " if self.g.policy.scoped else "")
                + f"{{\n    struct tp_pending p = {{}};\n    u64 *a = p.a;\n{_indent(loads)}\n"
                f"    {pre}    u32 tid = (u32)bpf_get_current_pid_tgid();\n"
                f"    pending_{hid}.update(&tid, &p);\n}}")
            self.g.probes.setdefault(src.attach_exit[0], []).append(
                f"{{\n    u32 tid = (u32)bpf_get_current_pid_tgid();\n"
                f"    struct tp_pending *p = pending_{hid}.lookup(&tid);\n"
                f"    if (p) {{\n        u64 a[6] = {{}};\n"
                + "".join(f"        a[{i}] = p->a[{i}];\n" for i in range(min(n, 6)))
                # clone3: the flags read after the kernel copied clone_args (resident by now)
                + ("        if (tp_clone3_flags(a) < 0)\n            a[0] = 0;\n" if src.clone3_flags else "")
                + f"        pending_{hid}.delete(&tid);\n        tp_hook_{hid}(args, a, args->ret, 1);\n    }}\n}}")

    def _prefilter(self, implicit: list[tuple[int, list[tuple[Selector, int]]]]) -> str:
        """For return hooks: the FollowFD condition checked at the enter already (cheap exit)."""
        saved = dict(self.slots)
        pre: list[str] = []
        for idx, follow in implicit:
            pre += self.follow_conds(idx, follow)
        self.slots = saved | self.slots
        return f"""
static __always_inline int tp_pre_{self.hid}(void *ctx, u64 *a)
{{
{self.g.scope_check}{_HOOK_PROLOGUE}{_indent(chr(10).join(pre))}
    return ok;
}}"""


def _duration_ns(text: str) -> int:
    """Tetragon's rateLimit: "30s", "5m", "1h" (plain digits: seconds)."""
    unit = {"s": 1, "m": 60, "h": 3600}.get(text[-1:], 1)
    digits = text[:-1] if text[-1:] in "smh" else text
    return int(digits) * unit * 1_000_000_000


def _indent(text: str, n: int = 4) -> str:
    pad = " " * n
    return "\n".join(pad + line if line else line for line in text.splitlines())
