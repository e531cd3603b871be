/* Shared part of every compiled TracingPolicy program (collector/policy/compiler.py generates the
 * rest: maps sized per policy, one function per hook with its selectors spelled out as C, and
 * the tracepoint probes that call them). Included AFTER the generated map definitions, because
 * bcc rewrites map accesses only in the main file: the helpers here take no map.
 *
 * Limits (records.h has the record layout):
 *   TP_STR_MAX      256 bytes per selector string value (longer values are refused at load)
 *   string sets     one hash lookup per Equal filter, one per distinct value length for
 *                   Prefix/Postfix (at most TP_SET_LENGTHS lengths per filter, checked in Python)
 *   TP_DATA_SIZE   8192 bytes of arguments per record (a last char_buf may add TP_BUF_MAX);
 *                  arguments that do not fit are left out
 *   TP_SLOTS          4 string values (paths, strings, binaries) per hook at most
 *   TP_BUF_MAX     4096 bytes copied of a char_buf argument (more is reported as truncated)
 */
#ifndef TETRAPIPE_POLICY_H
#define TETRAPIPE_POLICY_H

#define TP_STR_MAX 256
#define TP_DATA_SIZE 8192
#define TP_DATA_MASK (TP_DATA_SIZE - 1)
#define TP_BUF_MAX 4096
#define TP_ANCESTORS 64   /* matchPIDs followForks: a bounded loop, not unrolled (collector/policy/actions.py) */

/* indexes of the per-policy ``gaps`` counters (collector/policy/gaps.py: their metrics) */
#define TP_GAP_NO_STATE 0     /* matchNamespace/CapabilityChanges judged a process without saved state */
#define TP_GAP_STATE_FULL 1   /* exec_state full: a process keeps no state */
#define TP_GAP_MARK_FULL 2    /* pf_marks full: a child of a followed process is not marked */
#define TP_GAP_TRUNC 3        /* a truncated string judged by a name filter (not compared by name) */
#define TP_GAP_TRUNC_MISS 4   /* ... not matched, and not proved another file by its inode */
#define TP_GAP_TRUNC_INODE 5  /* ... matched by its inode */
#define TP_GAPS 6

/* v & m as the verifier sees it: clang drops a C mask it can prove redundant, the verifier can't */
#define TP_BOUND(v, m) ({ u64 __x = (v); asm volatile("%[x] &= " #m : [x] "+r"(__x)); __x; })

/* Selector string sets (Tetragon keeps them in BPF maps, not per-value loops): every value of a
 * filter is a key of the program's `strset` hash map: its set, its length, its bytes zero-padded.
 * Equal is one lookup of the whole string; Prefix/Postfix one lookup per distinct value length l
 * of the set, of the string's first/last l bytes. No loop: Debian 6.1's verifier refused the
 * byte compare loops this replaced ("sequence of 8193 jumps is too complex"). */
struct tp_strkey {
    u32 set;
    u32 len;
    char s[TP_STR_MAX];
};

/* InMap/NotInMap: the integer values (ranges expanded) of each filter, keys of `intset` */
struct tp_intkey {
    u32 set;
    u32 pad;
    u64 v;
};

/* Inode identity of file arguments (collector/policy/inode_sets.py): the (device, inode) of the
 * files an Equal/Prefix filter names, keys of `inoset`; the value says how it matches: 1 = the
 * file itself (any of its names: hard links, bind mounts), 2 = anything below it (a Prefix
 * directory, walked up through d_parent at most TP_INO_DEPTH levels inside its file system), and
 * the inode's generation where the file system reports it (FS_IOC_GETVERSION: ext4, xfs, btrfs). */
#define TP_INO_SELF 1
#define TP_INO_UNDER 2
#define TP_INO_GEN 4      /* gen holds the inode's i_generation: a reused inode number is another file */
#define TP_INO_DEPTH 64
struct tp_inokey {
    u32 set;
    u32 dev;
    u64 ino;
};
struct tp_inoval {
    u32 flags;
    u32 gen;
};

struct tp_hook_buf {
    struct tp_hook e;
    char data[TP_DATA_SIZE * 2];   /* arguments are written below TP_DATA_SIZE + TP_BUF_MAX */
};

/* string values of one hook call, filled once each (per-CPU arrays are limited to 32 KiB) */
struct tp_slots {
    char slot[TP_SLOTS][TP_PATH_MAX];
    u32 slen[TP_SLOTS];
    u32 sflags[TP_SLOTS];
    struct dentry *dent[TP_SLOTS];   /* the file's dentry for slots read from a kernel file, else 0 */
};

struct tp_pending {
    u64 a[6];
};

struct tp_exec_state {
    u32 ns[TP_NS_COUNT];
    u64 caps[3];
};

/* At sched_process_fork (current: the parent): the new task is a thread of the current group.
 * copy_process put a new thread at the tail of the group's thread list before the tracepoint;
 * another thread cloned at the same moment can be there instead: then 0, and the caller keeps a
 * per-task copy it did not need (dropped at the thread's exit). Per-process state (exec_state,
 * pf_marks, pf_births) is looked up by tgid: a thread needs no entry of its own. */
static __always_inline int tp_fork_is_thread(u32 child)
{
    struct task_struct *cur = (struct task_struct *)bpf_get_current_task();
    struct signal_struct *sig = 0;
    struct list_head *last = 0;
    u32 pid = 0;
    TP_RD(sig, cur->signal);
    if (!sig)
        return 0;
    TP_RD(last, sig->thread_head.prev);
    if (!last || last == &sig->thread_head)
        return 0;
    struct task_struct *t = tp_container_of(last, struct task_struct, thread_node);
    TP_RD(pid, t->pid);
    return pid == child;
}

/* Path of an open file, walked up to the task's root. */
static __always_inline u32 tp_file_path(struct tp_path_buf *pb, struct task_struct *task,
                                        struct file *f, char *out, u32 *flags)
{
    struct fs_struct *fs = 0;
    struct path root = {}, fp = {};
    TP_RD(fs, task->fs);
    if (fs)
        TP_RD(root, fs->root);
    TP_RD(fp, f->f_path);
    u32 pf = 0;
    u32 n = tp_path_walk(pb, fp.dentry, fp.mnt, root.dentry, root.mnt, out, &pf);
    if (pf & 1)
        *flags |= TP_ARGF_TRUNC;
    return n;
}

/* The dentry of an open file / a struct path (inode identity, tp_ino_in) */
static __always_inline struct dentry *tp_file_dentry(struct file *f)
{
    struct dentry *d = 0;
    if (f)
        TP_RD(d, f->f_path.dentry);
    return d;
}

static __always_inline struct dentry *tp_path_dentry(struct path *p)
{
    struct dentry *d = 0;
    if (p)
        TP_RD(d, p->dentry);
    return d;
}

/* Path of a struct path (security_path_*, vfs_* arguments), walked up to the task's root. */
static __always_inline u32 tp_path_ptr(struct tp_path_buf *pb, struct task_struct *task,
                                       struct path *p, char *out, u32 *flags)
{
    struct fs_struct *fs = 0;
    struct path root = {}, fp = {};
    TP_RD(fs, task->fs);
    if (fs)
        TP_RD(root, fs->root);
    TP_RD(fp, *p);
    u32 pf = 0;
    u32 n = tp_path_walk(pb, fp.dentry, fp.mnt, root.dentry, root.mnt, out, &pf);
    if (pf & 1)
        *flags |= TP_ARGF_TRUNC;
    return n;
}

/* Path of a dentry inside its file system (no mount to cross: as Tetragon's dentry argument). */
static __always_inline u32 tp_dentry_path(struct tp_path_buf *pb, struct dentry *d, char *out, u32 *flags)
{
    u32 pf = 0;
    u32 n = tp_path_walk(pb, d, 0, 0, 0, out, &pf);
    if (pf & 1)
        *flags |= TP_ARGF_TRUNC;
    return n;
}

static __always_inline u32 tp_exe_path(struct tp_path_buf *pb, struct task_struct *task, char *out,
                                       u32 *flags)
{
    struct mm_struct *mm = 0;
    struct file *exe = 0;
    TP_RD(mm, task->mm);
    if (mm)
        TP_RD(exe, mm->exe_file);
    if (!exe) {
        *flags |= TP_ARGF_ERROR;
        return 0;
    }
    return tp_file_path(pb, task, exe, out, flags);
}

/* the whole i_mode (type and permission bits) of a file's inode; 0 when there is none: the
 * event's `permission` (bpf/kargs.h) */
static __always_inline u16 tp_dentry_imode(struct dentry *d)
{
    struct inode *ino = 0;
    u16 m = 0;
    if (d)
        TP_RD(ino, d->d_inode);
    if (ino)
        TP_RD(m, ino->i_mode);
    return m;
}

static __always_inline u16 tp_file_imode(struct file *f)
{
    struct inode *ino = 0;
    u16 m = 0;
    if (f)
        TP_RD(ino, f->f_inode);
    if (ino)
        TP_RD(m, ino->i_mode);
    return m;
}

static __always_inline u16 tp_path_imode(struct path *p)
{
    struct dentry *d = 0;
    if (p)
        TP_RD(d, p->dentry);
    return tp_dentry_imode(d);
}

static __always_inline u16 tp_binprm_imode(struct linux_binprm *bp)
{
    struct file *f = 0;
    if (bp)
        TP_RD(f, bp->file);
    return tp_file_imode(f);
}

/* FileType: the file's type bits (i_mode & S_IFMT) of its inode; 0 when there is none */
static __always_inline u32 tp_dentry_mode(struct dentry *d) { return tp_dentry_imode(d) & 0170000; }
static __always_inline u32 tp_file_mode(struct file *f) { return tp_file_imode(f) & 0170000; }
static __always_inline u32 tp_path_mode(struct path *p) { return tp_path_imode(p) & 0170000; }
static __always_inline u32 tp_binprm_mode(struct linux_binprm *bp) { return tp_binprm_imode(bp) & 0170000; }

static __always_inline u32 tp_ns_pid(struct task_struct *task)
{
    struct task_struct *leader = 0;
    struct pid *tp = 0;
    unsigned int level = 0;
    struct upid up = {};
    TP_RD(leader, task->group_leader);
    if (!leader)
        leader = task;
    TP_RD(tp, leader->thread_pid);
    if (!tp)
        return 0;
    TP_RD(level, tp->level);
    bpf_probe_read_kernel(&up, sizeof(up), &tp->numbers[level & 31]);
    return up.nr;
}

static __always_inline u32 tp_ns_inum(struct task_struct *task, int which)
{
    struct nsproxy *nsp = 0;
    u32 inum = 0;
    TP_RD(nsp, task->nsproxy);
    if (which == TP_NS_USER) {
        const struct cred *cred = 0;
        struct user_namespace *uns = 0;
        TP_RD(cred, task->cred);
        TP_RD(uns, cred->user_ns);
        TP_RD(inum, uns->ns.inum);
        return inum;
    }
    if (which == TP_NS_PID) {
        struct pid *tp = 0;
        unsigned int level = 0;
        struct upid up = {};
        TP_RD(tp, task->thread_pid);
        if (!tp)
            return 0;
        TP_RD(level, tp->level);
        bpf_probe_read_kernel(&up, sizeof(up), &tp->numbers[level & 31]);
        if (up.ns)
            TP_RD(inum, up.ns->ns.inum);
        return inum;
    }
    if (!nsp)
        return 0;
    if (which == TP_NS_UTS) { struct uts_namespace *x = 0; TP_RD(x, nsp->uts_ns); if (x) TP_RD(inum, x->ns.inum); }
    else if (which == TP_NS_IPC) { struct ipc_namespace *x = 0; TP_RD(x, nsp->ipc_ns); if (x) TP_RD(inum, x->ns.inum); }
    else if (which == TP_NS_MNT) { struct mnt_namespace *x = 0; TP_RD(x, nsp->mnt_ns); if (x) TP_RD(inum, x->ns.inum); }
    else if (which == TP_NS_PID_FOR_CHILDREN) { struct pid_namespace *x = 0; TP_RD(x, nsp->pid_ns_for_children); if (x) TP_RD(inum, x->ns.inum); }
    else if (which == TP_NS_NET) { struct net *x = 0; TP_RD(x, nsp->net_ns); if (x) TP_RD(inum, x->ns.inum); }
    else if (which == TP_NS_TIME) { struct time_namespace *x = 0; TP_RD(x, nsp->time_ns); if (x) TP_RD(inum, x->ns.inum); }
    else if (which == TP_NS_TIME_FOR_CHILDREN) { struct time_namespace *x = 0; TP_RD(x, nsp->time_ns_for_children); if (x) TP_RD(inum, x->ns.inum); }
    else if (which == TP_NS_CGROUP) { struct cgroup_namespace *x = 0; TP_RD(x, nsp->cgroup_ns); if (x) TP_RD(inum, x->ns.inum); }
    return inum;
}

/* which: 0 effective, 1 inheritable, 2 permitted */
static __always_inline u64 tp_caps(struct task_struct *task, int which)
{
    const struct cred *cred = 0;
    u64 v = 0;
    TP_RD(cred, task->cred);
    /* kernel_cap_t is a u64 `val` since 6.3 and `u32 cap[2]` before: the same 8 bytes (x86-64,
     * little-endian), read whole so the C compiles against either kernel's BTF */
    if (which == 0) TP_RD(v, cred->cap_effective);
    else if (which == 1) TP_RD(v, cred->cap_inheritable);
    else TP_RD(v, cred->cap_permitted);
    return v;
}

static __always_inline u32 tp_user_ns_level(struct task_struct *task)
{
    const struct cred *cred = 0;
    struct user_namespace *uns = 0;
    u32 level = 0;
    TP_RD(cred, task->cred);
    TP_RD(uns, cred->user_ns);
    TP_RD(level, uns->level);
    return level;
}

/* clone3(uargs, size), arguments a[0], a[1]: a[0] becomes clone_args.flags, the u64 at offset 0
 * of the caller's struct (0 when size does not cover it). -1, a[0] unchanged, when the memory
 * cannot be read here: bpf_probe_read_user does not fault pages in. */
static __always_inline int tp_clone3_flags(u64 *a)
{
    u64 flags = 0;
    if (a[1] >= sizeof(flags) && bpf_probe_read_user(&flags, sizeof(flags), (void *)a[0]) < 0)
        return -1;
    a[0] = flags;
    return 0;
}

/* argument writers: each returns the new offset; an argument that does not fit is skipped */
static __always_inline u32 tp_put_hdr(struct tp_hook_buf *b, u32 off, u8 type, u8 flags, u32 len,
                                      u32 orig)
{
    struct tp_arg a = {.type = type, .flags = flags, .len = len, .orig_size = orig};
    bpf_probe_read_kernel(b->data + TP_BOUND(off, 0x1fff), sizeof(a), &a);
    return off + sizeof(a);
}

static __always_inline u32 tp_put_u64(struct tp_hook_buf *b, u32 off, u8 type, u64 v)
{
    if (off > TP_DATA_SIZE - 32)
        return off;
    off = tp_put_hdr(b, off, type, 0, 8, 8);
    bpf_probe_read_kernel(b->data + TP_BOUND(off, 0x1fff), 8, &v);
    b->e.nargs++;
    return off + 8;
}

static __always_inline u32 tp_put_slot(struct tp_hook_buf *b, struct tp_slots *s, u32 off, u8 type,
                                       int k)
{
    if (off > TP_DATA_SIZE - 32)
        return off;
    u32 len = s->slen[k & (TP_SLOTS - 1)] & (TP_PATH_MAX - 1);
    if (off + 8 + len > TP_DATA_SIZE)
        return off;
    off = tp_put_hdr(b, off, type, s->sflags[k & (TP_SLOTS - 1)], len, len);
    u64 n = TP_BOUND(len, 0xfff);
    if (n)
        bpf_probe_read_kernel(b->data + TP_BOUND(off, 0x1fff), n, s->slot[k & (TP_SLOTS - 1)]);
    b->e.nargs++;
    return off + len;
}

static __always_inline u32 tp_put_user_kind(struct tp_hook_buf *b, u32 off, u8 kind, u64 ptr, s64 size)
{
    if (off > TP_DATA_SIZE - 32)
        return off;
    u8 flags = 0;
    u32 orig = size > 0 ? (u32)size : 0;
    u32 len = orig;
    if (len > TP_BUF_MAX) {
        len = TP_BUF_MAX;
        flags |= TP_ARGF_TRUNC;
    }
    if (off + 8 + len > TP_DATA_SIZE) {
        len = 0;
        flags |= TP_ARGF_TRUNC;
    }
    u64 n = TP_BOUND(len, 0x1fff);
    if (n && bpf_probe_read_user(b->data + TP_BOUND(off + 8, 0x1fff), n, (void *)ptr) < 0) {
        len = 0;
        flags |= TP_ARGF_ERROR;
    }
    off = tp_put_hdr(b, off, kind, flags, len, orig);
    b->e.nargs++;
    return off + len;
}

static __always_inline u32 tp_put_user_buf(struct tp_hook_buf *b, u32 off, u64 ptr, s64 size)
{
    return tp_put_user_kind(b, off, TP_ARG_BYTES, ptr, size);
}

#endif
