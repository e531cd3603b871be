"""The typed TracingPolicy model the parser produces and the compiler consumes.

Names follow Tetragon's CRD (pkg/k8s/apis/cilium.io/v1alpha1): a policy has hooks (``kprobes:``,
``tracepoints:``, ``lsmhooks:``), each with typed arguments and up to five selectors; inside one
selector every filter must match (AND), the first matching selector's actions apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bpf.names import ACTION_NUMBERS

MAX_SELECTORS = 5
DATA_BASE = 6        # a hook's data entries are read into a[DATA_BASE + k] (matchData index k)
MAX_DATA = 4         # data entries per hook
INT32_ARR_MAX = 32   # ints read of an int32_arr argument at most

ARG_TYPES = frozenset({
    "int", "sint8", "int8", "uint8", "sint16", "int16", "uint16", "int32", "sint32", "uint32",
    "ulong", "uint64", "int64", "sint64", "long", "size_t", "auto", "char_buf", "char_iovec",
    "string", "const_buf", "data_loc", "fd", "file", "filename", "path", "dentry", "skb", "sock",
    "sockaddr", "socket", "sockaddr_un", "net_device", "nop", "bpf_attr", "bpf_prog", "bpf_map",
    "bpf_cmd", "perf_event", "user_namespace", "capability", "kernel_cap_t", "cap_inheritable",
    "cap_permitted", "cap_effective", "cred", "kiocb", "iov_iter", "load_info", "module",
    "syscall64", "linux_binprm", "int32_arr", "dns",
})
INT_TYPES = frozenset({"int", "sint8", "int8", "uint8", "sint16", "int16", "uint16", "int32", "sint32",
                       "uint32", "ulong", "uint64", "int64", "sint64", "long", "size_t", "auto", "syscall64"})
STRING_TYPES = frozenset({"string", "filename", "data_loc"})
FILE_TYPES = frozenset({"fd", "file", "path"})

ARG_OPERATORS = frozenset({
    "Equal", "NotEqual", "Prefix", "NotPrefix", "Postfix", "NotPostfix", "GreaterThan", "GT",
    "LessThan", "LT", "Mask", "InRange", "NotInRange", "SubString", "SubStringIgnCase", "InMap",
    "NotInMap", "CapabilitiesGained", "CelExpr", "FileType", "NotFileType", "SPort", "NotSPort",
    "SPortPriv", "NotSportPriv", "NotSPortPriv", "DPort", "NotDPort", "DPortPriv", "NotDPortPriv",
    "SAddr", "NotSAddr", "DAddr", "NotDAddr", "Protocol", "Family", "State", "Capability",
})
SERVED_ARG_OPERATORS = frozenset({
    "Equal", "NotEqual", "Prefix", "NotPrefix", "Postfix", "NotPostfix", "GreaterThan", "GT",
    "LessThan", "LT", "Mask", "InRange", "NotInRange", "InMap", "NotInMap", "FileType", "NotFileType",
    # network operators on sock/socket/skb/sockaddr (collector/policy/netsel.py)
    "SPort", "NotSPort", "SPortPriv", "NotSportPriv", "NotSPortPriv", "DPort", "NotDPort", "DPortPriv",
    "NotDPortPriv", "SAddr", "NotSAddr", "DAddr", "NotDAddr", "Protocol", "Family", "State",
})
STRING_OPERATORS = frozenset({"Equal", "NotEqual", "Prefix", "NotPrefix", "Postfix", "NotPostfix"})
INT_OPERATORS = frozenset({"Equal", "NotEqual", "GreaterThan", "GT", "LessThan", "LT", "Mask",
                           "InRange", "NotInRange", "InMap", "NotInMap"})
PID_OPERATORS = frozenset({"In", "NotIn"})
BINARY_OPERATORS = frozenset({"In", "NotIn", "Prefix", "NotPrefix", "Postfix", "NotPostfix"})
SET_OPERATORS = frozenset({"In", "NotIn"})
NAMESPACES = ("Uts", "Ipc", "Mnt", "Pid", "PidForChildren", "Net", "Time", "TimeForChildren",
              "Cgroup", "User")
CAP_TYPES = ("Effective", "Inheritable", "Permitted")

ACTIONS = frozenset({
    "Post", "Sigkill", "Override", "GetUrl", "DnsLookup", "NoPost", "Signal", "TrackSock",
    "UntrackSock", "NotifyEnforcer", "CleanupEnforcerNotification", "Set",
    "FollowFD", "UnfollowFD", "CopyFD",  # removed from Tetragon's CRD; accepted for compatibility
})
# Tetragon's KprobeAction enum numbers (api/v1/tetragon/tetragon.proto)


@dataclass
class ArgSpec:
    index: int
    type: str
    size_arg_index: int = 0      # counts from 1, as Tetragon's sizeArgIndex
    return_copy: bool = False
    max_data: bool = False
    size: int = 0                # int32_arr: how many ints (Tetragon's size)
    label: str = ""
    path: str = ""               # where in the YAML, for errors
    resolve: str = ""            # resolve/extractParam: a BTF member chain walked from the value
    btf_type: str = ""           # btfType: the struct the value points to (else the argument's own type)
    source: str = ""             # data entries: "current_task" (else the hook's argument ``start``)
    start: int = -1              # data entries without source: the hook argument the walk starts from


@dataclass
class ArgFilter:
    index: int
    operator: str
    values: list[str]
    path: str = ""


@dataclass
class PidFilter:
    operator: str
    values: list[int]
    follow_forks: bool = False
    is_namespace_pid: bool = False
    path: str = ""


@dataclass
class BinaryFilter:
    operator: str
    values: list[str]
    follow_children: bool = False
    path: str = ""


@dataclass
class NamespaceFilter:
    namespace: str
    operator: str
    values: list[str]            # inode numbers or "host_ns"
    path: str = ""


@dataclass
class CapabilityFilter:
    type: str
    operator: str
    values: list[str]
    is_namespace_capability: bool = False
    path: str = ""


@dataclass
class NamespaceChangeFilter:
    operator: str
    values: list[str]            # namespace names
    path: str = ""


@dataclass
class Action:
    action: str
    arg_sig: int = 0
    arg_error: int = 0
    arg_fd: int = -1
    arg_name: int = -1
    arg_sock: int = -1           # TrackSock/UntrackSock: the sock argument
    arg_url: str = ""            # GetUrl: the URL fetched (collector/policy/tetragon_actions.py)
    arg_fqdn: str = ""           # DnsLookup: the name looked up
    rate_limit: str = ""
    rate_limit_scope: str = ""
    kernel_stack_trace: bool = False   # Post: the kernel stack in the event (collector/stacks.py)
    user_stack_trace: bool = False     # Post: the user stack in the event
    path: str = ""

    @property
    def number(self) -> int:
        return ACTION_NUMBERS[self.action]


@dataclass
class Selector:
    match_args: list[ArgFilter] = field(default_factory=list)
    match_return_args: list[ArgFilter] = field(default_factory=list)
    match_pids: list[PidFilter] = field(default_factory=list)
    match_binaries: list[BinaryFilter] = field(default_factory=list)
    match_parent_binaries: list[BinaryFilter] = field(default_factory=list)
    match_namespaces: list[NamespaceFilter] = field(default_factory=list)
    match_capabilities: list[CapabilityFilter] = field(default_factory=list)
    match_namespace_changes: list[NamespaceChangeFilter] = field(default_factory=list)
    match_capability_changes: list[CapabilityFilter] = field(default_factory=list)
    match_actions: list[Action] = field(default_factory=list)
    match_return_actions: list[Action] = field(default_factory=list)
    path: str = ""

    def action_names(self) -> list[str]:
        return [a.action for a in self.match_actions]


@dataclass
class Hook:
    kind: str                    # "kprobe", "tracepoint", "lsmhook", "uprobe"
    index: int                   # position in its list (hook id inside the policy is separate)
    call: str = ""               # kprobes: function; lsmhooks: hook name
    syscall: bool = False
    return_: bool = False
    args: list[ArgSpec] = field(default_factory=list)
    return_arg: ArgSpec | None = None
    return_arg_action: str = ""  # "TrackSock"/"UntrackSock" (collector/policy/netsel.py), "" = Post
    selectors: list[Selector] = field(default_factory=list)
    message: str = ""
    tags: list[str] = field(default_factory=list)
    ignore_call_not_found: bool = False
    data: list[ArgSpec] = field(default_factory=list)   # data entries: index = DATA_BASE + k
    subsystem: str = ""          # tracepoints
    event: str = ""
    path: str = ""
    binary: str = ""             # uprobes: the ELF file (call = the symbol, "" for an offset)
    raw: bool = False            # raw tracepoints: args by TP_PROTO position (collector/policy/rawtp.py)
    offset: int = -1             # uprobes: file offset given in the policy (-1: from the symbol)
    ref_ctr: int = 0             # uprobes: refCtrOffsets' entry for that offset (a USDT semaphore)
    in_container: bool = False   # uprobes: resolvePathInContainer (collector/policy/uprobe_paths.py)
    usdt: bool = False           # spec.usdts: call = "provider:name" (collector/policy/usdt.py)

    def arg(self, index: int) -> ArgSpec | None:
        """The argument (or, from DATA_BASE on, the data entry) of ``index``."""
        return next((a for a in self.args + self.data if a.index == index), None)

    @property
    def function_name(self) -> str:
        return self.call if self.kind != "tracepoint" else f"{self.subsystem}/{self.event}"


LABEL_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
CONTAINER_SELECTOR_KEYS = ("name", "repo")   # containerSelector: the container's name, image repository


@dataclass
class LabelRequirement:
    key: str
    operator: str                # one of LABEL_OPERATORS
    values: list[str] = field(default_factory=list)

    def matches(self, labels: dict[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        return self.key not in labels or labels[self.key] not in self.values  # NotIn


@dataclass
class LabelSelector:
    """A Kubernetes label selector (matchLabels AND matchExpressions); empty selects everything."""

    match_labels: dict[str, str] = field(default_factory=dict)
    match_expressions: list[LabelRequirement] = field(default_factory=list)

    def matches(self, labels: dict[str, str]) -> bool:
        return (all(labels.get(k) == v for k, v in self.match_labels.items())
                and all(r.matches(labels) for r in self.match_expressions))


@dataclass
class Enforcer:
    """One ``spec.enforcers`` (or legacy ``spec.killers``) entry: the calls where a thread that a
    NotifyEnforcer action marked gets its error and/or signal (collector/policy/enforcers.py)."""

    calls: list[str]             # kernel functions (syscalls as their wrapper names, __x64_sys_dup)
    path: str = ""


@dataclass
class Policy:
    name: str
    kind: str                    # TracingPolicy, TracingPolicyNamespaced (ExecPolicy is translated)
    namespace: str = ""
    mode: str = "enforce"        # enforce | monitor
    hooks: list[Hook] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    pod_selector: LabelSelector | None = None
    container_selector: LabelSelector | None = None
    source: str = ""             # file the policy came from, "" for the control socket
    lines: dict[str, int] = field(default_factory=dict, repr=False)
    loader: bool = False         # spec.loader: process_loader events while the policy is loaded
    enforcers: list[Enforcer] = field(default_factory=list)   # spec.enforcers / spec.killers

    @property
    def scoped(self) -> bool:
        """Applies only to processes of (some) pods: namespaced, or a pod/container selector."""
        return (self.kind == "TracingPolicyNamespaced" or self.pod_selector is not None
                or self.container_selector is not None)

    def line_of(self, path: str) -> int:
        """The YAML line of ``path`` or of its nearest ancestor (0 when unknown)."""
        while path:
            if path in self.lines:
                return self.lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return self.lines.get("", 0)


class PolicyError(ValueError):
    """A policy that cannot be loaded: where (YAML path and line) and why."""

    def __init__(self, path: str, reason: str, line: int = 0, source: str = "") -> None:
        self.path = path
        self.reason = reason
        self.line = line
        self.source = source
        super().__init__(self.text())

    def text(self) -> str:
        where = ""
        if self.source or self.line:
            where = f"{self.source or '<policy>'}" + (f":{self.line}" if self.line else "") + ": "
        return f"{where}{self.path + ': ' if self.path else ''}{self.reason}"
