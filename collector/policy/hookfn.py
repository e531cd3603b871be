"""Program assembly per hook: the hook function ``tp_hook_<id>`` (selectors, actions, the
event record) and the probe statements that call it from each attach point."""

from __future__ import annotations

from bpf.names import ACTION_NUMBERS
from collector import btf_funcs, sock_hooks, uprobes
from collector.policy import btfwalk, compat_x86, doom, enforcers, kargs, netsel, uring, usdt
from collector.policy.argtypes import INT_ARG_KIND, Field
from collector.policy.csrc import fragment, indent
from collector.policy.model import INT32_ARR_MAX, ArgSpec, Selector
from collector.policy.selectors import SelectorGen

SOURCE_NAMES = {"syscall_ret": "syscall", "kfunc": "kernel-function"}
# integer-valued kernel argument types (a capability number, reported as capability_arg)
KERNEL_INT_TYPES = frozenset({"capability"})
SYSCALL_REGS = ("di", "si", "dx", "r10", "r8", "r9")   # x86-64 syscall arguments in struct pt_regs
SIG_FAILED_MAX = 1024  # thread groups whose signal the kernel could not send, until the collector sends it
SEL_SLOTS = 6  # counters per hook: selectors 0-4, and 5 = hook without selectors
# the action recorded when a selector lists several: the strongest one
ACTION_RANK = ["Sigkill", "Signal", "Override", "NotifyEnforcer", "NoPost", "FollowFD", "UnfollowFD", "CopyFD",
               "GetUrl", "DnsLookup", "Post", "TrackSock", "UntrackSock"]


class HookGen(SelectorGen):
    """C for one hook: its function ``tp_hook_<id>`` and the probe statements that call it."""

    # -- the function ---------------------------------------------------------------------------
    def function(self, implicit: list[tuple[int, list[tuple[Selector, int]]]]) -> str:
        hook = self.hook
        hid = self.hid
        self.walk_c = btfwalk.hook_fills(self)   # resolve/extractParam/data: before the selectors read a[]
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
            sel_code.append("if (sel < 0) {\n    ok = 1;\n" + "\n".join(indent(c) for c in conds)
                            + f"\n    if (ok) {{ sel = {i}; act = {ACTION_NUMBERS[main]}; }}\n}}")
        pre += netsel.view_fills(self)   # network arguments the selectors compare, read once
        result = "ovr" if self.src.override else "0"
        # order: the signal and the override first (a rate limit or NoPost only spares the event,
        # never the action), then the rate limit, then NoPost
        effects = netsel.effects(self)   # the socket's owner, TrackSock/UntrackSock: before any return
        signals = False
        for i, _main, sig in actions:
            if sig and not self.g.monitor:
                # bpf_send_signal's error (-EBUSY: this CPU's deferred-signal slot is taken,
                # -EPERM: an exiting task) travels in the record: the collector kills from user
                # space then, and counts it (a signal never fails silently)
                # a Sigkill also refuses the killed group's later reads/writes where the kernel
                # lets us (collector/policy/doom.py): what it has in flight never lands
                mark = indent(doom.mark(self.g)) + "\n" if sig == 9 else ""
                effects.append(f"if (sel == {i}) {{\n    sigerr = bpf_send_signal({sig});\n"
                               f"    if (sigerr) {{\n        u32 sg = {sig}, stg = bpf_get_current_pid_tgid() >> 32;\n"
                               f"        sig_failed.update(&stg, &sg);\n    }}\n{mark}}}")
                signals = True
        if signals and not self.g.sig_failed:
            self.g.sig_failed = True
            self.g.pending_maps.append(f'BPF_TABLE("lru_hash", u32, u32, sig_failed, {SIG_FAILED_MAX});  '
                                       "/* tgid → signal bpf_send_signal could not send: sent by the collector */")
        for i, s in enumerate(hook.selectors):
            effects += [enforcers.notify_c(self.g, i, a) for a in s.match_actions if a.action == "NotifyEnforcer"]
        effects = [e for e in effects if e]
        overrides = self.src.override and not self.g.monitor
        for i, s in enumerate(hook.selectors):
            ov = next((a for a in s.match_actions if a.action == "Override"), None)
            if ov is not None and overrides:
                # argError as Tetragon takes it: a negative errno (0 or absent: -EPERM)
                effects.append(f"if (sel == {i}) ovr = {ov.arg_error or -1};")
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
                f"    u64 *last = ratelimit.lookup(&k);\n    if (last && now - *last < {ns}ULL)\n"
                f"        return {result};\n"
                "    ratelimit.update(&k, &now);\n}")
        for i, s in enumerate(hook.selectors):
            # NoPost beside any other action (Sigkill included): the action is taken, no event
            if any(a.action == "NoPost" for a in s.match_actions):
                effects.append(f"if (sel == {i}) {{ return {result}; }}")
        ser = "\n".join(x for x in (self.serialize(), self.stacks_c()) if x)
        flags = "TP_HOOK_MONITOR" if self.g.monitor else "0"
        if signals:
            flags += " | (sigerr ? TP_HOOK_SIGNAL_FAILED : 0)"
        fn = "\n" + fragment(
            "hook_function", hid=hid, scope_check=self.g.scope_check, prologue=fragment("hook_prologue"),
            pre=indent("\n".join(pre)), selectors=indent("\n".join(sel_code)),
            count_base=hid * SEL_SLOTS, count_last=SEL_SLOTS - 1, effects=indent("\n".join(effects)),
            policy_id=self.g.policy_id, flags=flags, serialize=indent(ser),
            # tcp_close: the socket's owner (a[5]) is the event's process, not the interrupted task
            owner=("\n    if (a[5])\n        id = (a[5] << 32) | a[5];"
                   if self.src.kind == "sock" and hook.call == "tcp_close" else netsel.owner_c(self)),
            decls=("\n    int ovr = 0;" if self.src.override else "") + ("\n    long sigerr = 0;" if signals else ""),
            result=result).rstrip("\n")
        self._probes(implicit)
        self._compat_probes(bool(implicit))
        if self.src.kind in ("syscall", "syscall_ret", "open", "sock"):
            uring.probes(self, self.src.attach_enter.removeprefix("syscalls:sys_enter_"))
        return fn

    def stacks_c(self) -> str:
        """Post's kernelStackTrace/userStackTrace: the stack's id in the policy's stack_traces map
        after the arguments (records.h TP_ARG_KSTACK/USTACK), symbolised by the collector's drain
        (collector/stacks.py)."""
        out = []
        for i, s in enumerate(self.hook.selectors):
            post = [a for a in s.match_actions if a.action == "Post"]
            lines = []
            if any(a.kernel_stack_trace for a in post):
                lines.append("off = tp_put_u64(b, off, TP_ARG_KSTACK, (u64)(s64)stack_traces.get_stackid(ctx, 0));")
            if any(a.user_stack_trace for a in post):
                lines.append("off = tp_put_u64(b, off, TP_ARG_USTACK, "
                             "(u64)(s64)stack_traces.get_stackid(ctx, BPF_F_USER_STACK));")
            if lines:
                self.g.stacks = True
                out.append(f"if (sel == {i}) {{\n" + indent("\n".join(lines)) + "\n}")
        return "\n".join(out)

    def int32_arr(self, arg: ArgSpec, f: Field) -> str:
        """int32_arr (pipe's and socketpair's int[2]): ``size`` ints (or as many as the argument
        sizeArgIndex names, at most INT32_ARR_MAX) read from user memory; with returnCopy at the
        return, only where the call succeeded (the kernel filled the array)."""
        if not f.is_pointer:
            raise self.fail(f"{arg.path}.type", f"an int32_arr argument cannot be read from {f.ctype} {f.name}")
        n = str(arg.size) if arg.size else f"((u64)a[{arg.size_arg_index - 1}] > {INT32_ARR_MAX} ? " \
            f"{INT32_ARR_MAX} : (s64)a[{arg.size_arg_index - 1}])"
        size = f"({n}) * 4"
        if arg.return_copy:
            size = f"(is_ret && ret >= 0 ? {size} : 0)"
        return f"off = tp_put_user_kind(b, off, TP_ARG_INT32_ARR, a[{arg.index}], {size});"

    def serialize(self) -> str:
        out = []
        for arg in self.hook.args + self.hook.data:   # data entries follow the arguments in the record
            f = self._field(arg.index)
            if (arg.type == "sock" and self.src.kind == "sock") or (
                    arg.type in netsel.SOCK_CTYPES and self.src.kind == "kfunc"):
                why = netsel.ctype_refusal(arg, f.ctype, self.src.func) if self.src.kind == "kfunc" else ""
                if why:
                    raise self.fail(f"{arg.path}.type", f"{why} {f.name}")
                out.append(sock_hooks.put_sock_c(arg.index))
                continue
            if arg.type == "nop" and self.src.kind == "kfunc":
                continue   # Tetragon's nop: the argument is not read
            if arg.type in KERNEL_INT_TYPES and self.src.kind == "kfunc":
                out.append(f"off = tp_put_u64(b, off, TP_ARG_CAPABILITY, a[{arg.index}]);")
            elif arg.type in INT_ARG_KIND:
                out.append(f"off = tp_put_u64(b, off, {INT_ARG_KIND[arg.type]}, a[{arg.index}]);")
            elif self.is_stringy(arg):
                ensure, k = self.ensure_arg_slot(arg)
                kind = {"fd": "TP_ARG_FILE", "file": "TP_ARG_FILE", "path": "TP_ARG_PATH", "dentry": "TP_ARG_PATH",
                        "linux_binprm": "TP_ARG_BINPRM", "kiocb": "TP_ARG_FILE"}.get(arg.type, "TP_ARG_STRING")
                with_mode = kargs.put_path_c(arg.type, arg.index, kind, k) \
                    if self.src.kind == "kfunc" and f.is_pointer else ""
                self.g.kargs = self.g.kargs or bool(with_mode)
                out.append(f"{ensure}\n{with_mode or f'off = tp_put_slot(b, s, off, {kind}, {k});'}")
            elif arg.type in kargs.TYPES:
                why = kargs.check(arg.type, self.src.kind, f, self.src.func or self.hook.call) or \
                    kargs.btf_refusal(arg.type, btf_funcs.vmlinux() if self.g.features.btf else None)
                if why:
                    raise self.fail(f"{arg.path}.type", why)
                self.g.kargs = True
                out.append(kargs.put_c(arg.type, arg.index, self.user_memory))
            elif arg.type == "int32_arr":
                out.append(self.int32_arr(arg, f))
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
                where = SOURCE_NAMES.get(self.src.kind, self.src.kind)
                raise self.fail(f"{arg.path}.type", f"argument type {arg.type} is not supported at "
                                                    f"{where} hooks by tetrapipe (yet)")
        return "\n".join(out)

    def _probes(self, implicit: list[tuple[int, list[tuple[Selector, int]]]]) -> None:
        hid = self.hid
        src = self.src
        n = len(src.fields)
        loads = "\n".join(f"a[{i}] = (u64)args->{'data_loc_' if f.is_data_loc else ''}{f.name};"
                          for i, f in enumerate(src.fields[:6]))
        if src.kind == "kfunc":
            self._kfunc_probes(implicit)
            return
        if src.kind == "uprobe":
            self.g.uprobe_entries.append(usdt.entry_c(hid, f"tp_uprobe_{hid}", self.hook) if src.target.usdt
                                         else uprobes.entry_probe_c(hid, f"tp_uprobe_{hid}"))
            return
        if src.kind == "sock":
            if self.hook.call == "tcp_connect":
                self.g.pending_maps.append(f"BPF_HASH(pending_{hid}, u32, u32, 16384);")
            if self.hook.call == "tcp_close":   # socket → owner tgid (LRU: sockets never closed age out)
                self.g.pending_maps.append(f'BPF_TABLE("lru_hash", u64, u32, pending_{hid}, 65536);')
            for tp, stmt in sock_hooks.probe_c(self.hook.call, f"tp_hook_{hid}(args, a, 0, 0);",
                                               f"pending_{hid}").items():
                self.g.probes.setdefault(tp, []).append(stmt)
        elif src.kind == "syscall" and src.clone3_flags:
            # the flags at the enter; if that memory is not resident (bpf_probe_read_user does
            # not fault pages in), at the exit, after the kernel's copy_from_user brought it in
            self.g.pending_maps.append(f'BPF_TABLE("lru_hash", u32, struct tp_pending, late_{hid}, 4096);')
            self.g.probes.setdefault(src.attach_enter, []).append(
                f"{{\n    u64 a[6] = {{}};\n{indent(loads)}\n"
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
            translate = ""
            if src.kind == "tracepoint" and src.attach_enter.startswith("raw_syscalls:"):
                translate = indent(self.compat_nr_c()) + "\n"
            self.g.probes.setdefault(src.attach_enter, []).append(
                f"{{\n    u64 a[6] = {{}};\n{indent(loads)}\n{translate}    tp_hook_{hid}(args, a, 0, 0);\n}}")
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
                + f"{{\n    struct tp_pending p = {{}};\n    u64 *a = p.a;\n{indent(loads)}\n"
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

    # -- 32-bit syscalls (x86-64 with IA32 emulation) -----------------------------------------
    def _compat_probes(self, implicit: bool) -> None:
        """The same hook for the i386 twins of its syscalls, from raw_syscalls:sys_enter/exit with
        the task's TS_COMPAT: syscalls:* tracepoints never see a 32-bit call."""
        src, hid = self.src, self.hid
        if not self.g.compat:
            return
        if src.kind == "sock" and self.hook.call == "tcp_connect":
            self._compat_connect()
            return
        if src.kind == "open":
            names = [tp.split("sys_exit_", 1)[1] for tp in src.attach_exit]
        elif src.kind in ("syscall", "syscall_ret") and src.attach_enter.startswith("syscalls:sys_enter_"):
            names = [src.attach_enter.split("sys_enter_", 1)[1]]
        else:
            return
        nrs = sorted({n for name in names for n in compat_x86.i386_numbers(name)})
        if not nrs:
            self.g.notices.append(f"{self.hook.path}: no 32-bit (i386) twin of {', '.join(names)}: "
                                  "32-bit calls are not seen")
            return
        self.g.compat_used = True
        ids = "(" + " || ".join(f"args->id == {n}" for n in nrs) + ")"
        n = min(len(src.fields), 6)
        loads = "".join(f"    a[{i}] = (u32)args->args[{i}];\n" for i in range(n))
        clone3 = "    if (tp_clone3_flags(a) < 0)\n        a[0] = 0;\n" if src.clone3_flags else ""
        enter, exit_ = "raw_syscalls:sys_enter", "raw_syscalls:sys_exit"
        if src.kind == "open":
            self.g.probes.setdefault(exit_, []).append(
                f"if (args->ret >= 0 && {ids} && tp_compat()) {{\n    u64 a[6] = {{}};\n"
                f"    a[0] = args->ret;\n    a[1] = args->ret;\n    tp_hook_{hid}(args, a, 0, 0);\n}}")
        elif src.kind == "syscall":
            self.g.probes.setdefault(enter, []).append(
                f"if ({ids} && tp_compat()) {{\n    u64 a[6] = {{}};\n{loads}{clone3}"
                f"    tp_hook_{hid}(args, a, 0, 0);\n}}")
        else:
            keep = f"tp_pre_{hid}(args, a)" if implicit else "1"
            self.g.probes.setdefault(enter, []).append(
                f"if ({ids} && tp_compat()) {{\n    struct tp_pending p = {{}};\n    u64 *a = p.a;\n{loads}"
                f"    u32 tid = (u32)bpf_get_current_pid_tgid();\n    if ({keep})\n"
                f"        pending_{hid}.update(&tid, &p);\n}}")
            self.g.probes.setdefault(exit_, []).append(
                f"if ({ids} && tp_compat()) {{\n    u32 tid = (u32)bpf_get_current_pid_tgid();\n"
                f"    struct tp_pending *p = pending_{hid}.lookup(&tid);\n    if (p) {{\n        u64 a[6] = {{}};\n"
                + "".join(f"        a[{i}] = p->a[{i}];\n" for i in range(n))
                + (indent(clone3) + "\n" if clone3 else "") + f"        pending_{hid}.delete(&tid);\n"
                f"        tp_hook_{hid}(args, a, args->ret, 1);\n    }}\n}}")

    def _compat_connect(self) -> None:
        """tcp_connect for 32-bit connect(362) and socketcall(102, SYS_CONNECT): the fd at the
        enter (socketcall: from its argument array in user memory), the socket at the exit."""
        hid = self.hid
        self.g.compat_used = True
        self.g.probes.setdefault("raw_syscalls:sys_enter", []).append(
            "if ((args->id == 362 || args->id == 102) && tp_compat()) {\n"
            "    u32 fd = (u32)args->args[0];\n    int ok = args->id == 362;\n"
            "    if (args->id == 102 && args->args[0] == 3) {   /* SYS_CONNECT: args[1] → u32 [fd, addr, len] */\n"
            "        u32 sa[3] = {};\n"
            "        ok = bpf_probe_read_user(sa, sizeof(sa), (void *)(u64)(u32)args->args[1]) == 0;\n"
            "        fd = sa[0];\n    }\n"
            "    u32 tid = (u32)bpf_get_current_pid_tgid();\n"
            f"    if (ok)\n        pending_{hid}.update(&tid, &fd);\n}}")
        run = sock_hooks.probe_c("tcp_connect", f"tp_hook_{hid}(args, a, 0, 0);", f"pending_{hid}")
        body = run["syscalls:sys_exit_connect"]
        self.g.probes.setdefault("raw_syscalls:sys_exit", []).append(
            f"if ((args->id == 362 || args->id == 102) && tp_compat()) {body}")

    def compat_nr_c(self) -> str:
        """For a raw_syscalls tracepoint hook: a 32-bit call's i386 number becomes the x86-64
        number policies name (those its matchArgs on index 0 compare), any other 2^32 + its own."""
        if not self.g.compat:
            return ""
        wanted: set[int] = set()
        for s in self.hook.selectors:
            for f in s.match_args:
                if f.index != 0:
                    continue
                for v in f.values:
                    lo, _, hi = v.partition(":")
                    try:
                        a, b = int(lo, 0), int(hi or lo, 0)
                    except ValueError:
                        continue
                    wanted.update(range(a, min(b, a + 1024) + 1))
        table = {n32: n64 for n32, n64 in compat_x86.i386_to_x86_64().items() if n64 in wanted}
        self.g.compat_used = True
        chain = "".join(f"    {'else ' if i else ''}if (c == {n32}) a[0] = {n64};\n"
                        for i, (n32, n64) in enumerate(sorted(table.items())))
        chain += ("    else " if table else "    ") + "a[0] = (1ULL << 32) | c;\n"
        return f"if (tp_compat()) {{\n    u64 c = a[0];\n{chain}}}\n"

    def _kfunc_probes(self, implicit: list[tuple[int, list[tuple[Selector, int]]]]) -> None:
        """Kernel functions: the statements of the fentry/fexit/LSM/fmod_ret/kprobe program that
        calls this hook (one program per function and mechanism, shared by the policy's hooks)."""
        hid, src = self.hid, self.src
        n = min(len(src.fields), 6)
        if src.mech in ("kprobe", "kretprobe", "kprobe+bpf_override_return"):
            loads = "\n".join(f"a[{i}] = PT_REGS_PARM{i + 1}(ctx);" for i in range(n))
        elif src.mech == "rawtp":   # struct bpf_raw_tracepoint_args
            loads = "\n".join(f"a[{i}] = ctx->args[{i}];" for i in range(n))
        else:
            loads = "\n".join(f"a[{i}] = ctx[{i}];" for i in range(n))
        if src.wrapper:   # __x64_sys_*(struct pt_regs *regs): the syscall's arguments are in *regs
            first = "PT_REGS_PARM1(ctx)" if src.mech.startswith("kprobe") else "ctx[0]"
            loads = (f"struct pt_regs *sr = (struct pt_regs *){first};\n"
                     + "\n".join(f"TP_RD(a[{i}], sr->{reg});" for i, reg in enumerate(SYSCALL_REGS[:n])))
        # sock arguments: the struct sock read into a struct tp_sockinfo on the stack first
        sockfill = "".join(netsel.kfunc_fill(a.index, a.type) for a in self.hook.args if a.index in self.sock_args)
        if sockfill:
            self.g.sock = True
        # kernel_cap_t by pointer: the capability bits replace the pointer (selectors compare them)
        sockfill += "".join(kargs.cap_fill_c(a.index, src.fields[a.index]) for a in self.hook.args
                            if a.type in kargs.CAP_KINDS and a.index < len(src.fields))
        sockfill = self.walk_c + sockfill
        na = btfwalk.array_size(self.hook)

        def call(ret: str = "0", is_ret: int = 0, result: str = "") -> str:
            return f"{sockfill}{result}tp_hook_{hid}(ctx, a, {ret}, {is_ret});"

        if src.mech in ("fentry", "kprobe", "rawtp"):
            body = f"u64 a[{na}] = {{}};\n{loads}\n{call()}"
        elif src.mech == "fexit":
            ret = _ret_c(src.func, f"ctx[{len(src.fields)}]") if self._has_ret() else "0"
            if self._has_ret() and self._ret_type().endswith("*"):
                # a returned pointer (sk_alloc's sock) is a typed pointer to the verifier, which
                # refuses the record's byte stores of it: read it as a plain value
                loads += (f"\nu64 rv = 0;\nbpf_probe_read_kernel(&rv, sizeof(rv), &ctx[{len(src.fields)}]);")
                ret = "(s64)rv"
            body = f"u64 a[{na}] = {{}};\n{loads}\n{call(ret, 1)}"
        elif src.mech in ("lsm", "fmod_ret", "kprobe+bpf_override_return"):
            body = f"u64 a[{na}] = {{}};\n{loads}\n{call(result='int r = ')}\nif (r)\n    ovr = r;"
        else:   # kretprobe: the arguments remembered at the entry, the event made at the return
            self.g.pending_maps.append(f'BPF_TABLE("lru_hash", u32, struct tp_pending, pending_{hid}, 16384);')
            pre = ""
            if implicit:
                pre = f"if (!tp_pre_{hid}(ctx, a))\n    return 0;\n"
                self.g.functions.append(self._prefilter(implicit))
            self.g.kfuncs.setdefault(("kprobe", src.func), []).append(
                ("if (tp_in_scope()) " if self.g.policy.scoped else "")
                + f"{{\n    struct tp_pending p = {{}};\n    u64 *a = p.a;\n{indent(loads)}\n"
                f"{indent(pre)}\n    u32 tid = (u32)bpf_get_current_pid_tgid();\n"
                f"    pending_{hid}.update(&tid, &p);\n}}")
            body = (f"u32 tid = (u32)bpf_get_current_pid_tgid();\n"
                    f"struct tp_pending *p = pending_{hid}.lookup(&tid);\n"
                    f"if (p) {{\n    u64 a[6] = {{}};\n"
                    + "".join(f"    a[{i}] = p->a[{i}];\n" for i in range(n))
                    + f"    pending_{hid}.delete(&tid);\n"
                    f"{indent(call(_ret_c(src.func, 'PT_REGS_RC(ctx)'), 1))}\n}}")
        self.g.kfuncs.setdefault((src.mech, src.func), []).append("{\n" + indent(body) + "\n}")

    def _ret_type(self) -> str:
        funcs = btf_funcs.vmlinux()
        proto = funcs.proto(self.src.func) if funcs else None
        return proto.ret if proto is not None else ""

    def _has_ret(self) -> bool:
        funcs = btf_funcs.vmlinux()
        proto = funcs.proto(self.src.func) if funcs else None
        return proto is not None and proto.ret != "void"

    @property
    def user_memory(self) -> bool:
        """The hook's pointer arguments point into user memory (a syscall's own arguments)."""
        return self.src.kind in ("syscall", "syscall_ret") or self.src.wrapper

    @property
    def sock_args(self) -> list[int]:
        return [a.index for a in self.hook.args if a.type in netsel.SOCK_CTYPES and self.src.kind == "kfunc"]

    def _prefilter(self, implicit: list[tuple[int, list[tuple[Selector, int]]]]) -> str:
        """For return hooks: the FollowFD condition checked at the enter already (cheap exit)."""
        saved = dict(self.slots)
        pre: list[str] = []
        for idx, follow in implicit:
            pre += self.follow_conds(idx, follow)
        self.slots = saved | self.slots
        return "\n" + fragment("prefilter_function", hid=self.hid, scope_check=self.g.scope_check,
                                prologue=fragment("hook_prologue"), pre=indent("\n".join(pre))).rstrip("\n")


INT32_RETURNS = {"int": "s32", "signed int": "s32", "s32": "s32", "__s32": "s32", "unsigned int": "u32",
                 "u32": "u32", "__u32": "u32", "unsigned": "u32"}


def _ret_c(func: str, raw: str) -> str:
    """C of ``func``'s return value as s64: an int return sits in the low 32 bits of the register
    (the upper half is not its sign), so it is sign- (or zero-) extended from 32 bits first."""
    funcs = btf_funcs.vmlinux()
    proto = funcs.proto(func) if funcs is not None else None
    width = INT32_RETURNS.get(proto.ret.replace("const ", "").strip()) if proto is not None else None
    return f"(s64)({width}){raw}" if width else f"(s64){raw}"


def _duration_ns(text: str) -> int:
    """Tetragon's rateLimit: "30s", "5m", "1h", any case (plain digits: seconds); as Tetragon keeps
    it in a u32 of milliseconds, at most 0xffffffff ms (49.7 days)."""
    unit = {"s": 1, "m": 60, "h": 3600}.get(text[-1:].lower(), 1)
    digits = text[:-1] if text[-1:].lower() in ("s", "m", "h") else text
    return min(int(digits) * unit * 1000, 0xFFFFFFFF) * 1_000_000
