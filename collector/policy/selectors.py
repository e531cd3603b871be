"""Selector code generation: a hook's matchArgs, matchReturnArgs, matchPIDs, matchBinaries,
matchNamespaces, matchCapabilities and their changes, and FollowFD's implicit filters, as C
conditions over the hook's arguments (``a[]``) and string slots (``s->slot[]``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bpf.names import CAPABILITIES
from collector.policy import dns, netsel
from collector.policy.argtypes import INT_ARG_KIND, Field
from collector.policy.csrc import indent
from collector.policy.mechanism import Source
from collector.policy.model import (
    FILE_TYPES,
    INT_OPERATORS,
    NAMESPACES,
    STRING_OPERATORS,
    STRING_TYPES,
    ArgFilter,
    ArgSpec,
    Hook,
    Selector,
)

if TYPE_CHECKING:
    from collector.policy.compiler import ProgramGen

# typed kernel arguments read as paths (Tetragon's file_arg, path_arg, dentry path, linux_binprm_arg):
# type → (the C type of the function's argument, C that fills slot k from a[i])
KERNEL_PATH_TYPES = {
    "file": ("struct file *",
             "if (a[{i}]) s->slen[{k}] = tp_file_path(pb, task, (struct file *)a[{i}], s->slot[{k}], &sf);\n"
             "else sf |= TP_ARGF_ERROR;"),
    "path": ("struct path *",
             "if (a[{i}]) s->slen[{k}] = tp_path_ptr(pb, task, (struct path *)a[{i}], s->slot[{k}], &sf);\n"
             "else sf |= TP_ARGF_ERROR;"),
    "dentry": ("struct dentry *",
               "if (a[{i}]) s->slen[{k}] = tp_dentry_path(pb, (struct dentry *)a[{i}], s->slot[{k}], &sf);\n"
               "else sf |= TP_ARGF_ERROR;"),
    "kiocb": ("struct kiocb *",   # Tetragon's kiocb: the file of ki_filp
              "struct file *kf = 0;\nif (a[{i}]) TP_RD(kf, ((struct kiocb *)a[{i}])->ki_filp);\n"
              "if (kf) s->slen[{k}] = tp_file_path(pb, task, kf, s->slot[{k}], &sf);\n"
              "else sf |= TP_ARGF_ERROR;"),
    "linux_binprm": ("struct linux_binprm *",
                     "struct file *bf = 0;\nif (a[{i}]) TP_RD(bf, ((struct linux_binprm *)a[{i}])->file);\n"
                     "if (bf) s->slen[{k}] = tp_file_path(pb, task, bf, s->slot[{k}], &sf);\n"
                     "else sf |= TP_ARGF_ERROR;"),
}
# FileType/NotFileType values (Tetragon's names) → S_IF* type bits of the inode's i_mode
# the dentry of a kernel-object argument (inode identity: collector/policy/inode_sets.py); the
# names kf/bf are those KERNEL_PATH_TYPES's fill declares
KERNEL_DENTRY = {"file": "tp_file_dentry((struct file *)a[{i}])", "path": "tp_path_dentry((struct path *)a[{i}])",
                 "dentry": "(struct dentry *)a[{i}]", "kiocb": "tp_file_dentry(kf)",
                 "linux_binprm": "tp_file_dentry(bf)"}
# string operators also judged by the inode of a file argument (Postfix has no finite set of files)
INODE_OPERATORS = {"Equal": "equal", "NotEqual": "equal", "In": "equal", "NotIn": "equal",
                   "Prefix": "prefix", "NotPrefix": "prefix"}
FILE_TYPE_BITS = {"sock": 0o140000, "socket": 0o140000, "lnk": 0o120000, "link": 0o120000, "reg": 0o100000,
                  "regular": 0o100000, "blk": 0o60000, "block": 0o60000, "dir": 0o40000, "chr": 0o20000,
                  "char": 0o20000, "fifo": 0o10000, "pipe": 0o10000}
FILE_MODE_C = {"file": "tp_file_mode((struct file *)a[{i}])", "path": "tp_path_mode((struct path *)a[{i}])",
               "dentry": "tp_dentry_mode((struct dentry *)a[{i}])",
               "linux_binprm": "tp_binprm_mode((struct linux_binprm *)a[{i}])"}
NS_INDEX = {n: i for i, n in enumerate(NAMESPACES)}
CAP_TYPE_INDEX = {"Effective": 0, "Inheritable": 1, "Permitted": 2}


# integer argument types: how a raw register/field value (u64) is compared
_UNSIGNED_BITS = {"uint8": 8, "uint16": 16, "uint32": 32, "ulong": 64, "uint64": 64, "size_t": 64, "syscall64": 64,
                  "kernel_cap_t": 64, "cap_inheritable": 64, "cap_permitted": 64, "cap_effective": 64}
CAP_ARG_TYPES = ("kernel_cap_t", "cap_inheritable", "cap_permitted", "cap_effective")  # 64 capability bits
_SIGNED_BITS = {"int": 32, "int32": 32, "sint32": 32, "int16": 16, "sint16": 16, "int8": 8, "sint8": 8}


def int_expr(arg_type: str, raw: str) -> tuple[str, bool]:
    """(C expression, unsigned?) of an integer argument of ``arg_type`` held in u64 ``raw``:
    unsigned types compare as u64 (narrow ones masked to their width), 32/16/8-bit signed types
    sign-extended from their width (a 32-bit syscall's -1 is 0xffffffff in the register), the rest
    as s64."""
    if arg_type in _UNSIGNED_BITS:
        bits = _UNSIGNED_BITS[arg_type]
        return (f"((u64){raw})" if bits == 64 else f"((u64){raw} & {(1 << bits) - 1}ULL)"), True
    if arg_type in _SIGNED_BITS:
        return f"((s64)(s{_SIGNED_BITS[arg_type]}){raw})", False
    return f"((s64){raw})", False


class SelectorGen:
    """C for one hook's selectors: argument values into string slots, and the conditions."""

    def __init__(self, gen: ProgramGen, hid: int, hook: Hook, src: Source) -> None:
        self.g = gen
        self.hid = hid
        self.hook = hook
        self.src = src
        self.slots: dict[str, int] = {}
        self.ino_slots: set[int] = set()   # slots read from a kernel file: s->dent[k] is its dentry
        self.fail = gen.fail
        self.walked: dict[int, Field] = {}   # arguments/data entries a BTF walk replaced (btfwalk.py)

    @property
    def nslots(self) -> int:
        return max(len(self.slots), 1)

    def slot(self, key: str) -> int:
        if key not in self.slots:
            self.slots[key] = len(self.slots)
        return self.slots[key]

    # -- values ---------------------------------------------------------------------------------
    def _field(self, idx: int) -> Field:
        return self.walked[idx] if idx in self.walked else self.src.fields[idx]

    def is_stringy(self, arg: ArgSpec) -> bool:
        return arg.type in FILE_TYPES or arg.type in STRING_TYPES or arg.type == "dns" or (
            self.src.kind == "kfunc" and arg.type in KERNEL_PATH_TYPES)

    def ensure_arg_slot(self, arg: ArgSpec, as_fd: bool = False) -> tuple[str, int]:
        """(C that fills the slot once, slot index) for a string-valued argument."""
        f = self._field(arg.index)
        k = self.slot(f"arg{arg.index}")
        t = "fd" if as_fd else arg.type
        if t == "dns":   # the query name of a DNS message (collector/policy/dns.py, bpf/dns.h)
            why = dns.refusal(self.src.kind, f, self.src.func or self.hook.call)
            if why:
                raise self.fail(f"{arg.path}.type", why)
            self.g.dns = True
            fill = dns.fill_c(arg.index, k)
        elif self.src.kind == "kfunc" and t in KERNEL_PATH_TYPES and f.is_pointer:
            want, read = KERNEL_PATH_TYPES[t]
            if f.ctype != want and f.ctype != "u64":
                raise self.fail(f"{arg.path}.type", f"a {t} argument reads {want}; argument {arg.index} of "
                                                    f"{self.src.func} is {f.ctype} {f.name}")
            fill = read.format(i=arg.index, k=k) + f"\ns->dent[{k}] = {KERNEL_DENTRY[t].format(i=arg.index)};"
            self.ino_slots.add(k)
        elif self.src.kind == "open" or (t in FILE_TYPES and not f.is_pointer and not f.is_data_loc):
            fill = (f"struct file *fl = tp_fd_file(task, (long)a[{arg.index}]);\n"
                    f"if (fl) s->slen[{k}] = tp_file_path(pb, task, fl, s->slot[{k}], &sf);\n"
                    "else sf |= TP_ARGF_ERROR;\n"
                    f"s->dent[{k}] = tp_file_dentry(fl);")
            self.ino_slots.add(k)
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
                f"    s->dent[{k}] = 0;\n"
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

    def int_cond(self, expr: str, f: ArgFilter, path: str, unsigned: bool = False) -> str:
        """``expr`` compared as the argument's type says: signed (s64, ``LL``) or unsigned (u64,
        ``ULL``: uid 4294967295 and values of 2^63 and more compare as the kernel holds them)."""
        op = f.operator
        if op not in INT_OPERATORS:
            raise self.fail(f"{path}.operator", f"operator {op} does not apply to an integer argument")
        lo_ok, hi_ok = (0, 2**64 - 1) if unsigned else (-(2**63), 2**63 - 1)
        suffix = "ULL" if unsigned else "LL"

        def lit(v: int, j: int) -> str:
            if op != "Mask" and not lo_ok <= v <= hi_ok:
                kind = "an unsigned" if unsigned else "a signed 64-bit"
                raise self.fail(f"{path}.values[{j}]", f"{v} is out of range for {kind} argument")
            if v == -(2**63):
                return "(-9223372036854775807LL - 1)"
            return f"{v}{suffix}"

        if op in ("InMap", "NotInMap"):   # values and ranges in the intset hash map: one lookup
            rs = self._ranges(f, path)
            for j, (lo, hi) in enumerate(rs):
                lit(lo, j), lit(hi, j)
            sid = self.g.int_set(rs, f"{path}.values")
            return f"{'!' if op == 'NotInMap' else ''}tp_int_in({sid}, (u64){expr})"
        if op in ("InRange", "NotInRange"):
            rs = self._ranges(f, path)
            any_in = " || ".join(f"({expr} >= {lit(lo, j)} && {expr} <= {lit(hi, j)})"
                                 for j, (lo, hi) in enumerate(rs))
            return f"({any_in})" if op == "InRange" else f"!({any_in})"
        vals = self._ints(f, path)
        if op == "Equal":
            return "(" + " || ".join(f"{expr} == {lit(v, j)}" for j, v in enumerate(vals)) + ")"
        if op == "NotEqual":
            return "(" + " && ".join(f"{expr} != {lit(v, j)}" for j, v in enumerate(vals)) + ")"
        if op in ("GT", "GreaterThan"):
            return f"({expr} > {lit(vals[0], 0)})"
        if op in ("LT", "LessThan"):
            return f"({expr} < {lit(vals[0], 0)})"
        # Mask: any of the bits
        return "(" + " || ".join(f"(((u64){expr}) & {v & (2**64 - 1)}ULL)" for v in vals) + ")"

    def str_cond(self, k: int, op: str, values: list[str], path: str, by_inode: bool = False) -> str:
        """``by_inode``: slot ``k`` holds a kernel file's path (``ino_slots``); Equal/Prefix also
        match the file by its inode (any name of it: hard link, bind mount; a Prefix directory's
        files at any depth up to TP_INO_DEPTH), from the sets collector/policy/inode_sets.py keeps."""
        any_match = self.g.string_set(k, op, values, path)
        walk = "2"    # no inode set: a name that does not match proves nothing about a truncated one
        if by_inode and k in self.ino_slots and op in INODE_OPERATORS:
            how = INODE_OPERATORS[op]
            sid = self.g.inode_set(how, values)
            depth = 1 if how == "equal" else "TP_INO_DEPTH"
            walk = f"tp_ino_walk({sid}, s->dent[{k}], {depth})"
        if op in ("Postfix", "NotPostfix"):   # a truncated value keeps its end: Postfix sees it
            if walk != "2":
                any_match = f"({any_match} || {walk} == 1)"
        else:
            # a truncated value lost its start: never matched by name as if whole; counted
            # (TP_GAP_TRUNC), with its verdict: by inode, or unknown (TP_GAP_TRUNC_MISS)
            any_match = (f"tp_trunc_verdict(s->sflags[{k}], (!tp_trunc_judged(s->sflags[{k}]) && {any_match}) "
                         f"? 1 : {walk})")
        return f"!{any_match}" if op.startswith("Not") else any_match

    def file_type_cond(self, arg: ArgSpec, f: ArgFilter, path: str) -> str:
        """FileType/NotFileType: the type of the argument's inode (a kernel file/path/dentry/
        linux_binprm pointer, or an fd resolved through the task's fd table)."""
        fld = self._field(arg.index)
        if self.src.kind == "kfunc" and arg.type in FILE_MODE_C and fld.is_pointer:
            want = KERNEL_PATH_TYPES[arg.type][0]
            if fld.ctype not in (want, "u64"):
                raise self.fail(f"{arg.path}.type", f"a {arg.type} argument reads {want}; argument {arg.index} of "
                                                    f"{self.src.func} is {fld.ctype} {fld.name}")
            mode = FILE_MODE_C[arg.type].format(i=arg.index)
        elif arg.type in FILE_TYPES and not fld.is_pointer and not fld.is_data_loc and self.src.kind != "open":
            mode = f"tp_file_mode(tp_fd_file(task, (long)a[{arg.index}]))"
        else:
            raise self.fail(f"{path}.operator", f"operator {f.operator} applies to file, path, dentry, linux_binprm "
                                                f"and fd arguments, not to a {arg.type} argument here")
        bits = []
        for j, v in enumerate(f.values):
            if v.lower() not in FILE_TYPE_BITS:
                raise self.fail(f"{path}.values[{j}]", f'unknown file type "{v}" (one of '
                                                       f'{", ".join(FILE_TYPE_BITS)})')
            bits.append(FILE_TYPE_BITS[v.lower()])
        any_of = " || ".join(f"m == {b}" for b in dict.fromkeys(bits))
        neg = "!" if f.operator == "NotFileType" else ""
        return f"({{ u32 m = {mode}; {neg}({any_of}); }})"

    def arg_filter(self, f: ArgFilter, path: str, ret: bool = False) -> list[str]:
        if ret:
            return [f"if (ok) ok = is_ret && {self.int_cond('ret', f, path)};"]
        arg = self.hook.arg(f.index)
        assert arg is not None
        if arg.type in netsel.VIEW_TYPES or f.operator in netsel.NET_OPERATORS:
            return [netsel.filter_line(self, arg, f, path)]
        if f.operator in ("FileType", "NotFileType"):
            return [f"if (ok) ok = {self.file_type_cond(arg, f, path)};"]
        if f.operator not in INT_OPERATORS | STRING_OPERATORS:
            raise self.fail(f"{path}.operator", f"operator {f.operator} is not supported by tetrapipe")
        if self.is_stringy(arg) and f.operator in STRING_OPERATORS:
            ensure, k = self.ensure_arg_slot(arg)
            return [f"if (ok) {{\n{indent(ensure)}\n    ok = {self.str_cond(k, f.operator, f.values, path, True)};\n}}"]
        if arg.type in INT_ARG_KIND or arg.type in ("capability", *CAP_ARG_TYPES) or (
                arg.type in ("fd", "file") and not self._field(arg.index).is_pointer):
            if f.operator in STRING_OPERATORS - INT_OPERATORS:
                raise self.fail(f"{path}.operator", f"operator {f.operator} does not apply to a {arg.type} argument")
            expr, unsigned = int_expr(arg.type, f"a[{f.index}]")
            return [f"if (ok) ok = {self.int_cond(expr, f, path, unsigned)};"]
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
                    # the mark inherited at fork (any depth), then the ancestors the kernel still
                    # links (TP_ANCESTORS: for a fork during the load's seeding)
                    fid = self.g.follow_pids([int(v) for v in pf.values], pf.is_namespace_pid, val, eq)
                    code += (f"if (!m) {{\n    struct tp_fc_key fk = {{.filter = {fid}, "
                             ".tgid = bpf_get_current_pid_tgid() >> 32};\n    m = pf_marks.lookup(&fk) != 0;\n}\n")
                    field_ = "tp_ns_pid(t)" if pf.is_namespace_pid else "0"
                    code += ("struct task_struct *t = task;\n#pragma clang loop unroll(disable)\n"
                             "for (int i = 0; i < TP_ANCESTORS; i++) {\n"
                             "    if (m) break;\n    struct task_struct *pp = 0;\n    TP_RD(pp, t->real_parent);\n"
                             "    if (!pp || pp == t) break;\n    t = pp;\n")
                    code += (f"    v = {field_};\n" if pf.is_namespace_pid else "    TP_RD(v, t->tgid);\n")
                    code += f"    m = ({eq});\n}}\n"
                code += "ok = m;"
            else:
                code = f"u32 v = {val};\nok = !({eq});"
            lines.append(f"if (ok) {{\n{indent(code)}\n}}")
        for key, parent in (("match_binaries", False), ("match_parent_binaries", True)):
            for bf in getattr(s, key):
                ensure, k = self.ensure_exe_slot(parent)
                op = {"In": "Equal", "NotIn": "NotEqual"}.get(bf.operator, bf.operator)
                if not bf.follow_children:
                    cond = self.str_cond(k, op, bf.values, bf.path)
                    lines.append(f"if (ok) {{\n{indent(ensure)}\n    ok = {cond};\n}}")
                    continue
                # followChildren: a mark per process, set at an exec of a matching binary and
                # inherited at fork; the selector matches a marked process or a direct match
                positive = op.removeprefix("Not")
                neg = "!" if op.startswith("Not") else ""
                fid = self.g.follow_children(positive, bf.values, bf.path, self)
                lines.append(
                    f"if (ok) {{\n    struct tp_fc_key fk = {{.filter = {fid}, "
                    ".tgid = bpf_get_current_pid_tgid() >> 32};\n"
                    f"    int m = fc_marks.lookup(&fk) != 0;\n    if (!m) {{\n{indent(ensure, 8)}\n"
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
                         f"    int ch = st ? ({changed}) : 0;\n    if (!st) tp_gap(TP_GAP_NO_STATE);\n"
                         f"    ok = {neg}ch;\n}}")
        for cc in s.match_capability_changes:
            self.g.exec_state = True
            mask = sum(1 << CAPABILITIES.index(c) for c in cc.values)
            t = CAP_TYPE_INDEX[cc.type]
            neg = "!" if cc.operator == "NotIn" else ""
            lines.append("if (ok) {\n    u32 tg = bpf_get_current_pid_tgid() >> 32;\n"
                         "    struct tp_exec_state *st = exec_state.lookup(&tg);\n"
                         f"    int ch = st ? (((st->caps[{t}] ^ tp_caps(task, {t})) & {mask}ULL) != 0) : 0;\n"
                         "    if (!st) tp_gap(TP_GAP_NO_STATE);\n"
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
                inner.append(f"if (ok) ok = {self.str_cond(k, f.operator, f.values, f.path, True)};")
            rest = Selector(match_pids=s.match_pids, match_binaries=s.match_binaries,
                            match_parent_binaries=s.match_parent_binaries, match_namespaces=s.match_namespaces,
                            match_capabilities=s.match_capabilities, path=s.path)
            inner += self.selector_conds(rest)
            alts.append("ok = 1;\n" + "\n".join(inner))
        code = [f"if (ok) {{\n{indent(ensure)}\n    int any = 0;"]
        for alt in alts:
            code.append(f"    if (!any) {{\n{indent(alt, 8)}\n        any = ok;\n    }}")
        code.append("    ok = any;\n}")
        return ["\n".join(code)]
