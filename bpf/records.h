/* tetrapipe raw record layouts: the one contract between the kernel programs and the decoder.
 *
 * Every record written into the BPF ring buffer starts with struct tp_header. Numbers are
 * little-endian, structs are packed. The Python mirror is bpf/records.py; the layout id that
 * ships with every batch is a hash of this file, so a change here is a new layout.
 *
 * Variable-length strings follow the fixed part, in the order the *_len fields are listed.
 * Limits (a longer value is cut and its TP_F_TRUNC_* flag set):
 *   TP_PATH_MAX   4096 bytes for binary, cwd and file paths
 *   TP_ARGS_MAX   4096 bytes of NUL-separated arguments (argv[0] included)
 *   TP_CGNAME_MAX  128 bytes of the leaf cgroup name, and of each ancestor name
 *   TP_CG_ANCESTORS  3 cgroup ancestors named (parent, grandparent, great-grandparent)
 *   TP_PATH_DEPTH   32 path components walked for cwd and file paths
 */
#ifndef TETRAPIPE_RECORDS_H
#define TETRAPIPE_RECORDS_H

#define TP_PATH_MAX 4096
#define TP_ARGS_MAX 4096
#define TP_CGNAME_MAX 128
#define TP_PATH_DEPTH 32
#define TP_NS_COUNT 10
#define TP_CG_ANCESTORS 3

/* record kinds */
#define TP_REC_EXEC 1    /* sched:sched_process_exec */
#define TP_REC_EXIT 2    /* sched:sched_process_exit, last thread of the group */
#define TP_REC_FORK 3    /* raw tracepoint sched_process_fork, new thread group only */
#define TP_REC_PROCFS 4  /* made by the collector from /proc at start: same body as EXEC */
#define TP_REC_HOOK 5    /* a policy hook fired (syscall tracepoint, tracepoint, ...) */
#define TP_REC_POLICY 6  /* made by the collector: policy catalog (UTF-8 JSON body), see below */

/* exec flags */
#define TP_F_TRUNC_FILENAME (1 << 0)
#define TP_F_TRUNC_ARGS (1 << 1)
#define TP_F_TRUNC_CWD (1 << 2)
#define TP_F_ERR_ARGS (1 << 3)
#define TP_F_ERR_CWD (1 << 4)
#define TP_F_ROOT_CWD (1 << 5)
#define TP_F_ERR_FILENAME (1 << 6)
#define TP_F_NO_MM (1 << 7)

/* namespace order in tp_exec.ns[] */
#define TP_NS_UTS 0
#define TP_NS_IPC 1
#define TP_NS_MNT 2
#define TP_NS_PID 3
#define TP_NS_PID_FOR_CHILDREN 4
#define TP_NS_NET 5
#define TP_NS_TIME 6
#define TP_NS_TIME_FOR_CHILDREN 7
#define TP_NS_CGROUP 8
#define TP_NS_USER 9

struct tp_header {
    __u16 kind;
    __u16 version;   /* 1 */
    __u32 size;      /* bytes of the whole record, header included */
    __u32 pid;       /* thread group id, host pid namespace */
    __u32 tid;
    __u64 ktime;     /* bpf_ktime_get_ns() when the record was made */
} __attribute__((packed));

struct tp_exec {
    struct tp_header h;
    __u32 ppid;
    __u32 flags;
    __u64 start_time;          /* task->start_time (fork time, ns since boot) */
    __u64 parent_start_time;
    __u64 cgroup_id;
    __u32 uid, gid, euid, egid, suid, sgid, fsuid, fsgid;
    __u32 auid;
    __u32 securebits;
    __u64 cap_permitted, cap_effective, cap_inheritable;
    __u32 ns[TP_NS_COUNT];
    __u32 user_ns_level;       /* 0 = initial user namespace */
    __u32 nspid;               /* pid inside the task's own pid namespace */
    __u64 exe_ino;
    __u32 exe_nlink;
    __u32 exe_mode;
    char comm[16];
    __u16 filename_len;
    __u16 args_len;
    __u16 cwd_len;
    __u16 cgroup_name_len;
    __u16 cgroup_ancestors_len;
    /* then: filename, args (NUL separated), cwd, leaf cgroup name, then the names of the leaf's
     * ancestors, nearest first, NUL separated (pod and container ids live in these names) */
} __attribute__((packed));

struct tp_exit {
    struct tp_header h;
    __u32 exit_code;           /* task->exit_code: status << 8 | signal */
    __u32 ppid;
    __u64 start_time;
} __attribute__((packed));

struct tp_fork {
    struct tp_header h;        /* pid/tid = the new child */
    __u32 ppid;                /* the parent's thread group id */
    __u32 flags;
    __u64 start_time;          /* child start_time */
    __u64 cgroup_id;
} __attribute__((packed));

/* REC_HOOK: a policy hook fired. The body names the policy (random id per load, described by the
 * last REC_POLICY record with that id), the hook (its position in the policy), the selector that
 * matched (255 = the hook has no selectors) and the action taken (Tetragon's KprobeAction number;
 * with TP_HOOK_MONITOR the action was only reported). Then nargs arguments, each a struct tp_arg
 * followed by len bytes: TP_ARG_INT/UINT/SIZE/LONG carry 8 little-endian bytes, the others bytes. */
#define TP_HOOK_MONITOR (1 << 0)
#define TP_HOOK_RETURN (1 << 1)    /* ret holds the return value */
#define TP_HOOK_IO_URING (1 << 2)  /* an io_uring request judged as the syscall: ret holds its opcode */
#define TP_HOOK_SIGNAL_FAILED (1 << 3)  /* the Sigkill/Signal action's bpf_send_signal failed (no signal sent) */
#define TP_HOOK_NO_SELECTOR 255

#define TP_ARG_INT 1
#define TP_ARG_UINT 2
#define TP_ARG_SIZE 3
#define TP_ARG_LONG 4
#define TP_ARG_STRING 5
#define TP_ARG_BYTES 6
#define TP_ARG_FILE 7
#define TP_ARG_PATH 8
#define TP_ARG_SOCK 9              /* struct tp_sockinfo (collector/sock_hooks.py) */
/* typed kernel objects (bpf/kargs.h reads them; collector/policy/kargs.py checks them against BTF) */
#define TP_ARG_CRED 10             /* struct tp_cred_arg: commit_creds(struct cred *) and the like */
#define TP_ARG_KERNEL_CAP 11       /* 8 bytes: a kernel_cap_t (its 64 capability bits) */
#define TP_ARG_CAP_INH 12          /* 8 bytes: kernel_cap_t declared cap_inheritable */
#define TP_ARG_CAP_PRM 13          /* 8 bytes: kernel_cap_t declared cap_permitted */
#define TP_ARG_CAP_EFF 14          /* 8 bytes: kernel_cap_t declared cap_effective */
#define TP_ARG_USER_NS 15          /* struct tp_userns_arg */
#define TP_ARG_BPF_ATTR 16         /* struct tp_bpf_attr_arg (BPF_PROG_LOAD's fields) */
#define TP_ARG_PERF_EVENT 17       /* struct tp_perf_event_arg */
#define TP_ARG_BPF_MAP 18          /* struct tp_bpf_map_arg */
#define TP_ARG_MODULE 19           /* struct tp_module_arg (struct module or struct load_info) */
#define TP_ARG_SOCKADDR 20         /* struct tp_sockaddr_arg */
#define TP_ARG_SKB 21              /* struct tp_skb_arg */
#define TP_ARG_BINPRM 22           /* linux_binprm: the path of its file, bytes as TP_ARG_FILE */
#define TP_ARG_CAPABILITY 23       /* 8 bytes: a capability number (Tetragon's capability type) */
#define TP_ARG_INT32_ARR 24        /* int32_arr: the ints read from user memory, little-endian */
/* Post's kernelStackTrace/userStackTrace: after the arguments, not counted as one of them. The
 * kernel writes 8 bytes, the s64 id bpf_get_stackid returned in the policy's stack_traces map (<0:
 * its error); the collector's drain (collector/stacks.py) replaces them by the symbolised frames
 * and sets TP_ARGF_SYMBOLS: per frame u64 address, u64 offset, u16 symbol length, u16 module
 * length, the symbol, the module (little-endian, no padding) */
#define TP_ARG_KSTACK 25
#define TP_ARG_USTACK 26

#define TP_ARGF_TRUNC (1 << 0)     /* len < orig_size: the value was cut */
#define TP_ARGF_ERROR (1 << 1)     /* the value could not be read (len 0) */
#define TP_ARGF_MODE (1 << 2)      /* TP_ARG_FILE/PATH/BINPRM at kernel functions: the data begins with the
                                    * inode's 16-bit i_mode (little-endian, 0: no inode), the path follows */
#define TP_ARGF_SYMBOLS (1 << 3)   /* TP_ARG_KSTACK/USTACK: frames (symbolised by the collector), not an id */

struct tp_hook {
    struct tp_header h;
    __u32 policy_id;
    __u16 hook_id;
    __u8 selector;
    __u8 action;
    __u8 flags;
    __u8 nargs;
    __u16 data_len;            /* bytes of arguments after this struct */
    __s64 ret;
} __attribute__((packed));

struct tp_arg {
    __u8 type;
    __u8 flags;
    __u16 len;
    __u32 orig_size;           /* char_buf: bytes the call had; else len */
} __attribute__((packed));

struct tp_userns_arg {
    __s32 level;               /* 0 = the initial user namespace */
    __u32 uid;                 /* owner */
    __u32 gid;                 /* group */
    __u32 inum;
} __attribute__((packed));

struct tp_cred_arg {
    __u32 uid, gid, euid, egid, suid, sgid, fsuid, fsgid;
    __u32 securebits;
    __u32 pad;
    __u64 cap_permitted, cap_effective, cap_inheritable;
    struct tp_userns_arg user_ns;
} __attribute__((packed));

struct tp_bpf_attr_arg {
    __u32 prog_type;
    __u32 insn_cnt;
    char prog_name[16];        /* BPF_OBJ_NAME_LEN, NUL padded */
} __attribute__((packed));

#define TP_KSYM_NAME_LEN 128
struct tp_perf_event_arg {
    __u64 config;
    __u64 probe_offset;
    __u32 type;
    __u32 pad;
    char kprobe_func[TP_KSYM_NAME_LEN];   /* attr.kprobe_func as a string, "" when unreadable */
} __attribute__((packed));

struct tp_bpf_map_arg {
    __u32 map_type, key_size, value_size, max_entries;
    char name[16];
} __attribute__((packed));

#define TP_MODULE_SIG_KNOWN (1 << 0)   /* load_info with sig_ok in this kernel */
#define TP_MODULE_SIG_OK (1 << 1)
#define TP_MODULE_NAME_LEN 64
struct tp_module_arg {
    __u32 flags;               /* TP_MODULE_SIG_* */
    __u32 pad;
    __u64 taints;              /* module->taints: the kernel's TAINT_* bits */
    char name[TP_MODULE_NAME_LEN];
} __attribute__((packed));

struct tp_sockaddr_arg {
    __u16 family;              /* sa_family */
    __u16 port;                /* host byte order; AF_INET/AF_INET6 only */
    __u32 pad;
    __u8 addr[16];             /* AF_INET: first 4 bytes, network order */
} __attribute__((packed));

struct tp_skb_arg {
    __u32 hash, len, priority, mark;
    __u32 sport, dport;        /* host byte order (TCP/UDP) */
    __u32 proto;               /* IP protocol number */
    __u32 secpath_len, secpath_olen;   /* 0: not read (see README) */
    __u16 family;              /* AF_INET 2, AF_INET6 10, 0 = not IP */
    __u16 pad;
    __u8 saddr[16];            /* network order; AF_INET: first 4 bytes */
    __u8 daddr[16];
} __attribute__((packed));

/* REC_POLICY: struct tp_header (pid = tid = 0) followed by UTF-8 JSON: {"policy_id", "name",
 * "namespace", "mode", "state" ("loaded" | "deleted"), "hooks": [{"id", "kind", "function_name",
 * "subsys", "event", "args": [{"index", "type", "label"}], "return_arg", "message", "tags"}]}.
 * Sent at collector start, on every load and unload, and periodically. */

/* ---- sensors (collector/sensors/): record kinds appended after the process and hook kinds ---- */
#define TP_REC_SOCK 20     /* network sensor: TCP connect / accept / close */
#define TP_REC_LOADER 21   /* loader sensor: a file mapped executable by a process */

#define TP_SOCK_CONNECT 1  /* sys_exit_connect succeeded (0 or -EINPROGRESS) on a TCP socket */
#define TP_SOCK_ACCEPT 2   /* sys_exit_accept/accept4 returned a TCP socket */
#define TP_SOCK_CLOSE 3    /* sock:inet_sock_set_state → TCP_CLOSE of a socket seen at 1 or 2 */
#define TP_SOCK_UDP_SEND 4 /* UDP sensor: sock:sock_send_length on a UDP socket (bpf/udp.c) */

struct tp_sock {
    struct tp_header h;        /* pid/tid: the owner (for CLOSE: recorded at connect/accept) */
    __u8 op;                   /* TP_SOCK_* */
    __u8 state;                /* TCP state (include/net/tcp_states.h) when the record was made */
    __u16 family;              /* AF_INET 2, AF_INET6 10 */
    __u16 type;                /* SOCK_STREAM 1, ... */
    __u16 protocol;            /* IPPROTO_TCP 6, ... */
    __u16 sport;               /* host byte order */
    __u16 dport;               /* host byte order */
    __u32 netns;               /* inode number of the socket's network namespace */
    __u32 mark;
    __u32 priority;
    __u32 pad;
    __u64 cookie;              /* kernel address of struct sock, as Tetragon's sock_arg cookie */
    __u8 saddr[16];            /* AF_INET: first 4 bytes */
    __u8 daddr[16];
} __attribute__((packed));

#define TP_LOADER_BUILDID_MAX 20

struct tp_loader {
    struct tp_header h;
    __u64 ino;                 /* inode number of the mapped file */
    __u32 dev;                 /* superblock s_dev (kernel encoding: major << 20 | minor) */
    __u32 flags;               /* 1 = path truncated */
    __u64 pgoff;               /* file offset of the mapping, bytes */
    __u64 addr;                /* start address of the mapping */
    __u8 buildid_len;          /* 0 when no GNU build id note was readable */
    __u8 buildid[TP_LOADER_BUILDID_MAX];
    __u8 pad;
    __u16 path_len;
    /* then: path (no NUL) */
} __attribute__((packed));

/* ---- connect enforcement (bpf/connect_deny.c): a connect refused by cgroup/connect4/6 ---- */
#define TP_REC_CONNECT_DENY 22

struct tp_connect_deny {
    struct tp_header h;        /* pid/tid: the caller of connect() */
    __u32 policy_id;           /* the policy whose rule refused (named by its REC_POLICY record) */
    __u16 hook_id;             /* its tcp_connect hook */
    __u8 selector;             /* the selector that matched */
    __u8 action;               /* KprobeAction number (Override 5) */
    __s32 ret;                 /* what connect() returns: -EPERM */
    __u8 state;                /* socket state (TCP_CLOSE 7 before a connect) */
    __u8 pad;
    __u16 family;              /* of the destination: AF_INET 2 (also ::ffff:a.b.c.d), AF_INET6 10 */
    __u16 type;                /* SOCK_STREAM 1, SOCK_DGRAM 2, ... */
    __u16 protocol;            /* IPPROTO_TCP 6, ... */
    __u16 sport;               /* host byte order; 0 when not bound yet */
    __u16 dport;               /* host byte order */
    __u32 netns;               /* inode number of the socket's network namespace */
    __u32 mark;
    __u32 priority;
    __u64 cookie;              /* kernel address of struct sock, as Tetragon's sock_arg cookie */
    __u32 saddr[4];            /* network byte order; AF_INET: first word */
    __u32 daddr[4];
} __attribute__((packed));

#endif
