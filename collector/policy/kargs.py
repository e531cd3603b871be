"""Typed kernel-object arguments (Tetragon's ``cred``, ``kernel_cap_t``, ``cap_*``, ``bpf_attr``,
``perf_event``, ``bpf_map``, ``user_namespace``, ``module``, ``load_info``, ``sockaddr``, ``skb``,
``iov_iter``): which C type each reads, checked against the hook's BTF prototype (or tracepoint
format) at load, and the C that appends it to the hook record (``bpf/kargs.h``).

``kiocb`` (its ``ki_filp``) and ``linux_binprm`` (its ``file``) are paths: selectors.py
``KERNEL_PATH_TYPES``. The enricher turns each record kind into Tetragon's KprobeArgument member
(enricher/policy_events.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from collector import btf_funcs
from collector.policy.argtypes import Field


@dataclass(frozen=True)
class KArg:
    ctypes: tuple[str, ...]   # C types of the argument this type reads (BTF / tracepoint format)
    put: str                  # C statement appending it: {i} argument index, {user} 0/1
    kinds: tuple[str, ...] = ("kfunc", "tracepoint", "syscall", "syscall_ret")


CAP_KINDS = {"kernel_cap_t": "TP_ARG_KERNEL_CAP", "cap_inheritable": "TP_ARG_CAP_INH",
             "cap_permitted": "TP_ARG_CAP_PRM", "cap_effective": "TP_ARG_CAP_EFF"}
CAP_CTYPES = ("kernel_cap_t *", "kernel_cap_t")

TYPES: dict[str, KArg] = {
    "cred": KArg(("struct cred *",), "off = tp_put_cred(b, off, (const struct cred *)a[{i}]);", ("kfunc",)),
    "user_namespace": KArg(("struct user_namespace *",),
                           "off = tp_put_userns(b, off, (struct user_namespace *)a[{i}]);", ("kfunc",)),
    "bpf_attr": KArg(("union bpf_attr *",), "off = tp_put_bpf_attr(b, off, (union bpf_attr *)a[{i}], {user});"),
    "perf_event": KArg(("struct perf_event *",),
                       "off = tp_put_perf_event(b, off, (struct perf_event *)a[{i}]);", ("kfunc",)),
    "bpf_map": KArg(("struct bpf_map *",), "off = tp_put_bpf_map(b, off, (struct bpf_map *)a[{i}]);", ("kfunc",)),
    "module": KArg(("struct module *",), "off = tp_put_module(b, off, (void *)a[{i}], 0);", ("kfunc",)),
    "load_info": KArg(("struct load_info *",), "off = tp_put_module(b, off, (void *)a[{i}], 1);", ("kfunc",)),
    "sockaddr": KArg(("struct sockaddr *", "struct sockaddr_in *", "struct sockaddr_in6 *", "void *"),
                     "off = tp_put_sockaddr(b, off, (void *)a[{i}], {user});"),
    # tracepoints name the packet `void *skbaddr` (net:net_dev_queue, skb:kfree_skb, ...)
    "skb": KArg(("struct sk_buff *", "void *"), "off = tp_put_skb(b, off, (struct sk_buff *)a[{i}]);",
                ("kfunc", "tracepoint")),
    "iov_iter": KArg(("struct iov_iter *",), "off = tp_put_iov_iter(b, off, (struct iov_iter *)a[{i}]);",
                     ("kfunc",)),
}
TYPES.update({t: KArg(CAP_CTYPES, f"off = tp_put_u64(b, off, {k}, a[{{i}}]);", ("kfunc",))
              for t, k in CAP_KINDS.items()})

# the inode's whole i_mode of a path-valued argument at a kernel function (the event's `permission`)
MODE_C = {"file": "tp_file_imode((struct file *)a[{i}])", "kiocb": "tp_kiocb_imode((struct kiocb *)a[{i}])",
          "linux_binprm": "tp_binprm_imode((struct linux_binprm *)a[{i}])",
          "path": "tp_path_imode((struct path *)a[{i}])", "dentry": "tp_dentry_imode((struct dentry *)a[{i}])"}

WHERE = {"kfunc": "kernel functions and LSM hooks", "tracepoint": "tracepoints",
         "syscall": "syscalls", "syscall_ret": "syscalls"}


def norm_ctype(ctype: str) -> str:
    """``const struct cred *`` → ``struct cred *``; ``void*`` → ``void *``."""
    words = [w for w in ctype.replace("*", " * ").split() if w not in ("const", "volatile", "__user")]
    out = " ".join(words)
    while " * *" in out:
        out = out.replace(" * *", " **")
    return out


def check(arg_type: str, kind: str, f: Field, func: str) -> str:
    """"" when argument ``f`` (of ``func``, a hook of source ``kind``) can be read as ``arg_type``,
    else why not."""
    ka = TYPES[arg_type]
    if kind not in ka.kinds:
        where = ", ".join(sorted({WHERE[k] for k in ka.kinds}))
        return f"a {arg_type} argument is read at {where} only"
    ct = norm_ctype(f.ctype)
    if ct == "u64" and kind == "kfunc":   # kprobe without BTF: untyped registers
        return ""
    if ct not in ka.ctypes:
        return (f"a {arg_type} argument reads {' or '.join(ka.ctypes)}; argument {f.name} of {func} "
                f"is {f.ctype}")
    return ""


def put_c(arg_type: str, index: int, user: bool) -> str:
    return TYPES[arg_type].put.format(i=index, user=int(user))


def put_path_c(arg_type: str, index: int, kind: str, slot: int) -> str:
    """C appending a path-valued kernel object's slot with its inode mode ("" when not such a type)."""
    if arg_type not in MODE_C:
        return ""
    return f"off = tp_put_slot_mode(b, s, off, {kind}, {slot}, {MODE_C[arg_type].format(i=index)});"


def cap_fill_c(index: int, f: Field) -> str:
    """A kernel_cap_t passed by pointer: its 8 bytes replace the pointer in ``a[]`` before the hook
    (so selectors compare the capability bits); by value (a u64 register) it is already there."""
    if not norm_ctype(f.ctype).endswith("*"):
        return ""
    return (f"if (a[{index}]) {{ u64 cv = 0; bpf_probe_read_kernel(&cv, sizeof(cv), (void *)a[{index}]); "
            f"a[{index}] = cv; }}\n")


def defines(funcs: btf_funcs.BtfFuncs | None) -> list[str]:
    """``#define`` lines for what differs between kernels (bpf/kargs.h), from BTF."""
    if funcs is None:
        return []
    iov = "__iov" if funcs.has_member("iov_iter", "__iov") else "iov"
    ubuf = funcs.enum_value("ITER_UBUF") is not None
    load_info = funcs.struct_id("load_info") is not None
    sig = load_info and funcs.has_member("load_info", "sig_ok")
    secpath = (funcs.enum_value("SKB_EXT_SEC_PATH") is not None and funcs.has_member("sk_buff", "extensions")
               and funcs.struct_id("sec_path") is not None)
    return [f"#define TP_IOV_ITER_IOV {iov}", f"#define TP_HAVE_ITER_UBUF {int(ubuf)}",
            f"#define TP_HAVE_LOAD_INFO {int(load_info)}", f"#define TP_LOAD_INFO_SIG {int(sig)}",
            f"#define TP_SKB_SECPATH {int(secpath)}"]


def btf_refusal(arg_type: str, funcs: btf_funcs.BtfFuncs | None) -> str:
    """Why this kernel's BTF cannot serve ``arg_type`` ("" when it can)."""
    if funcs is None:
        return ""
    if arg_type == "load_info" and funcs.struct_id("load_info") is None:
        return "this kernel's BTF has no struct load_info (CONFIG_MODULES unset)"
    if arg_type == "iov_iter" and not funcs.has_member("iov_iter", "iter_type"):
        return "this kernel's struct iov_iter has no iter_type (before 5.14)"
    return ""
