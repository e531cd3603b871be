/* The roads no policy hook judges, counted (issue #12, README "Enforcement"): loaded by
 * collector/policy/uncaught.py while a policy names protected files or judges connects. It acts
 * on nothing; it reports to the collector, which classifies each report into a road and counts it
 * in tetrapipe_enforcement_uncaught_total{road,policy}.
 *
 * Protected objects, filled from Python: file names (uc_names: the last component of a policy's
 * Equal/Postfix path, bit 1 = write-protected, bit 2 = read-protected) and directories (uc_dirs:
 * the inode of a Prefix directory, looked up 16 ancestors up).
 *   - an inode of a protected file dirtied inside a syscall no write-type hook judges (truncate by
 *     name, O_TRUNC/creat at the open, link, rename) or by io_uring (io_uring_enter, an io worker):
 *     UC_DIRTY with the syscall number (uc_nrs says which numbers to report);
 *   - an open (syscall exits, io_uring OPENAT completions) whose file is a protected file under
 *     another mount (bind mount) or another name of its inode (hard link): UC_OPEN, with the
 *     file's path in its file system and the path walked to the task's root;
 *   - rename(2) over a name, reported with the name and the directory it is relative to (UC_RENAME);
 *   - a connect no socket hook sees: 32-bit connect and socketcall where the policies cannot serve
 *     them (UC_CONNECT; io_uring CONNECT is served by them: collector/policy/uring.py).
 * Limits: names up to 31 bytes; 16 ancestors; 4 aliases of an inode; the kernel stack's pt_regs
 * at UC_THREAD_SIZE (x86-64: 16 KiB) gives the syscall number.
 */
#include "records.h"
#include "path.h"

#define UC_NAME 32
#define UC_ANC 16
#define UC_ALIASES 4
#ifndef UC_THREAD_SIZE
#define UC_THREAD_SIZE 16384
#endif
#define UC_DIRTY 1
#define UC_OPEN 2
#define UC_RENAME 3
#define UC_CONNECT 4
#define UC_VIA_URING 1
#define UC_VIA_ALIAS 2
#define UC_VIA_COMPAT 4
#define UC_VIA_DYING 8      /* by an io worker of a thread group killed already (SIGNAL_GROUP_EXIT) */

struct uc_name { char s[UC_NAME]; };
struct uc_ino { u64 dev; u64 ino; };
struct uc_event {
    u32 kind, pid, tid, via;
    s64 nr;
    u64 ktime;
    u32 fflags, nlink, addr, port;
    u32 inlen, fulllen;
    char infs[TP_PATH_MAX];
    char full[TP_PATH_MAX];
};
struct uc_rename { s64 dfd; u64 name; };

BPF_HASH(uc_names, struct uc_name, u32, 256);
BPF_HASH(uc_dirs, struct uc_ino, u32, 256);
BPF_ARRAY(uc_nrs, u8, 1024);                 /* nr (+512 for a 32-bit call) → report it */
BPF_HASH(uc_renames, u32, struct uc_rename, 4096);
BPF_RINGBUF_OUTPUT(uc_events, 64);
BPF_PERCPU_ARRAY(uc_scratch, struct uc_event, 1);
BPF_PERCPU_ARRAY(path_scratch, struct tp_path_buf, 1);
BPF_PERCPU_ARRAY(uc_drops, u64, 1);
/* thread → inode of the file its last write-type io_uring request took by fd (io_uring_file_get):
 * the policies judge those requests there (collector/policy/uring.py); an inode dirtied by
 * io_uring without it was written through a registered (fixed) file */
BPF_TABLE("lru_hash", u32, u64, uc_uring_file, 4096);

static __always_inline int uc_compat(struct task_struct *t)
{
    u32 st = 0;
    bpf_probe_read_kernel(&st, sizeof(st), &t->thread_info.status);
    return (st & 0x0002) != 0;
}

/* the syscall the task is in: orig_ax of the user registers at the top of its kernel stack */
static __always_inline s64 uc_nr(struct task_struct *t)
{
    void *stack = 0;
    s64 nr = -1;
    TP_RD(stack, t->stack);
    struct pt_regs *r = (struct pt_regs *)(stack + UC_THREAD_SIZE) - 1;
    TP_RD(nr, r->orig_ax);
    return nr;
}

/* bits of uc_names for the dentry's own name, or 3 when an ancestor is a protected directory */
static __always_inline u32 uc_protected(struct dentry *d, int walk)
{
    struct uc_name n = {};
    struct qstr q = {};
    TP_RD(q, d->d_name);
    bpf_probe_read_kernel_str(n.s, sizeof(n.s), q.name);
    u32 *bits = uc_names.lookup(&n);
    if (bits)
        return *bits;
    if (!walk)
        return 0;
    struct super_block *sb = 0;
    u32 dev = 0;
    TP_RD(sb, d->d_sb);
    TP_RD(dev, sb->s_dev);
#pragma clang loop unroll(disable)
    for (int i = 0; i < UC_ANC; i++) {
        struct dentry *p = 0;
        struct inode *in = 0;
        TP_RD(p, d->d_parent);
        if (!p || p == d)
            break;
        d = p;
        struct uc_ino k = {.dev = dev};
        TP_RD(in, d->d_inode);
        TP_RD(k.ino, in->i_ino);
        if (uc_dirs.lookup(&k))
            return 3;
    }
    return 0;
}

static __always_inline struct uc_event *uc_start(u32 kind, u32 via)
{
    int zero = 0;
    struct uc_event *e = uc_scratch.lookup(&zero);
    if (!e)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    e->kind = kind;
    e->pid = id >> 32;
    e->tid = (u32)id;
    e->via = via;
    e->nr = -1;
    e->ktime = bpf_ktime_get_ns();
    e->fflags = e->nlink = e->addr = e->port = 0;
    e->inlen = e->fulllen = 0;
    return e;
}

static __always_inline void uc_send(struct uc_event *e)
{
    if (uc_events.ringbuf_output(e, sizeof(*e), 0) < 0) {
        int zero = 0;
        u64 *d = uc_drops.lookup(&zero);
        if (d)
            (*d)++;
    }
}

static __always_inline void uc_infs(struct uc_event *e, struct dentry *d)
{
    int zero = 0;
    struct tp_path_buf *pb = path_scratch.lookup(&zero);
    u32 pf = 0;
    if (pb)
        e->inlen = tp_path_walk(pb, d, 0, 0, 0, e->infs, &pf);
}

static __always_inline void uc_full(struct uc_event *e, struct task_struct *t, struct path *fp)
{
    int zero = 0;
    struct tp_path_buf *pb = path_scratch.lookup(&zero);
    struct fs_struct *fs = 0;
    struct path root = {};
    u32 pf = 0;
    TP_RD(fs, t->fs);
    if (fs)
        TP_RD(root, fs->root);
    if (pb)
        e->fulllen = tp_path_walk(pb, fp->dentry, fp->mnt, root.dentry, root.mnt, e->full, &pf);
}

/* an inode of a protected file dirtied: its content, size or links changed */
RAW_TRACEPOINT_PROBE(writeback_mark_inode_dirty)
{
    struct inode *inode = (struct inode *)ctx->args[0];
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    u32 tflags = 0;
    TP_RD(tflags, t->flags);
    int worker = (tflags & 0x10) != 0;     /* PF_IO_WORKER: an io_uring request run async */
    int compat = uc_compat(t);
    s64 nr = uc_nr(t);
    int uring = worker || nr == 426;       /* an io worker, the SQPOLL thread, io_uring_enter */
    if (uring) {
        u32 tid = (u32)bpf_get_current_pid_tgid();
        u64 *judged = uc_uring_file.lookup(&tid);
        if (judged && *judged == (u64)inode)
            return 0;
    }
    if (!worker) {
        u32 idx = ((u32)nr & 511) + (compat ? 512 : 0);
        u8 *want = uc_nrs.lookup(&idx);
        if (nr < 0 || nr > 511 || !want || !*want)
            return 0;
    }
    struct hlist_node *first = 0;
    TP_RD(first, inode->i_dentry.first);
    if (!first)
        return 0;
    struct dentry *d = tp_container_of(first, struct dentry, d_u.d_alias);
    if (!(uc_protected(d, 1) & 1))
        return 0;
    u32 dying = 0;
    if (worker) {   /* a request in flight when its process was killed: run by the worker anyway */
        struct signal_struct *sig = 0;
        TP_RD(sig, t->signal);
        if (sig)
            TP_RD(dying, sig->flags);
        dying = (dying & 0x4) ? UC_VIA_DYING : 0;   /* SIGNAL_GROUP_EXIT */
    }
    struct uc_event *e = uc_start(UC_DIRTY, (uring ? UC_VIA_URING : 0) | (compat ? UC_VIA_COMPAT : 0) | dying);
    if (!e)
        return 0;
    e->nr = nr;
    uc_infs(e, d);
    uc_send(e);
    return 0;
}

/* the file behind a new fd: a protected file under another mount or another name */
static __always_inline int uc_opened(long fd, u32 via)
{
    if (fd < 0)
        return 0;
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    struct file *f = tp_fd_file(t, fd);
    if (!f)
        return 0;
    u32 mode = 0, fflags = 0, nlink = 0;
    struct path fp = {};
    struct inode *inode = 0;
    TP_RD(mode, f->f_mode);
    TP_RD(fflags, f->f_flags);
    TP_RD(fp, f->f_path);
    TP_RD(inode, f->f_inode);
    TP_RD(nlink, inode->i_nlink);
    u32 want = (mode & 0x2) ? 3 : 2;       /* FMODE_WRITE: write- and read-protected files */
    struct dentry *hit = 0;
    if (uc_protected(fp.dentry, mode & 0x2) & want) {
        hit = fp.dentry;
    } else if (nlink > 1) {
        struct hlist_node *n = 0;
        TP_RD(n, inode->i_dentry.first);
#pragma clang loop unroll(disable)
        for (int i = 0; i < UC_ALIASES && n; i++) {
            struct dentry *a = tp_container_of(n, struct dentry, d_u.d_alias);
            if (a != fp.dentry && (uc_protected(a, mode & 0x2) & want)) {
                hit = a;
                via |= UC_VIA_ALIAS;
                break;
            }
            TP_RD(n, n->next);
        }
    }
    if (!hit)
        return 0;
    struct uc_event *e = uc_start(UC_OPEN, via | (uc_compat(t) ? UC_VIA_COMPAT : 0));
    if (!e)
        return 0;
    e->fflags = fflags;
    e->nlink = nlink;
    e->nr = uc_nr(t);
    uc_infs(e, hit);
    uc_full(e, t, &fp);
    uc_send(e);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat) { return uc_opened(args->ret, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_open) { return uc_opened(args->ret, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_creat) { return uc_opened(args->ret, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_openat2) { return uc_opened(args->ret, 0); }

/* io_uring completions: an OPENAT's new fd (the io worker shares the submitter's files) */
RAW_TRACEPOINT_PROBE(io_uring_complete)
{
    struct io_kiocb *req = (struct io_kiocb *)ctx->args[1];
    struct io_uring_cqe *cqe = (struct io_uring_cqe *)ctx->args[2];
    u8 op = 0;
    s32 res = -1;
    TP_RD(op, req->opcode);
    if (op != 18 && op != 28)              /* IORING_OP_OPENAT, IORING_OP_OPENAT2 */
        return 0;
    TP_RD(res, cqe->res);
    return uc_opened(res, UC_VIA_URING);
}

/* a write-type io_uring request takes its file by fd: the policies judge it (see uc_uring_file) */
RAW_TRACEPOINT_PROBE(io_uring_file_get)
{
    struct io_kiocb *req = (struct io_kiocb *)ctx->args[0];
    int fd = (int)ctx->args[1];
    u8 op = 0;
    TP_RD(op, req->opcode);
    /* WRITEV 2, WRITE_FIXED 5, FALLOCATE 17, WRITE 23, SPLICE 30, TEE 33, FTRUNCATE 55, WRITEV_FIXED 61 */
    if (op != 2 && op != 5 && op != 17 && op != 23 && op != 30 && op != 33 && op != 55 && op != 61)
        return 0;
    struct file *f = tp_fd_file((struct task_struct *)bpf_get_current_task(), fd);
    if (!f)
        return 0;
    u64 inode = 0;
    TP_RD(inode, f->f_inode);
    u32 tid = (u32)bpf_get_current_pid_tgid();
    uc_uring_file.update(&tid, &inode);
    return 0;
}

static __always_inline void uc_connect(struct sockaddr_in *ua, u32 via)
{
    struct sockaddr_in sa = {};
    if (bpf_probe_read_user(&sa, sizeof(sa), ua) < 0 || sa.sin_family != 2)
        return;
    if ((sa.sin_addr.s_addr & 0xff) == 127)   /* loopback */
        return;
    struct uc_event *e = uc_start(UC_CONNECT, via);
    if (!e)
        return;
    e->addr = sa.sin_addr.s_addr;
    e->port = sa.sin_port;
    uc_send(e);
}


#if UC_CONNECT_ROADS   /* only while a policy judges connects: raw_syscalls runs for every syscall */
/* 32-bit connect(362) and socketcall(102, SYS_CONNECT): syscalls:* never fire for them */
TRACEPOINT_PROBE(raw_syscalls, sys_enter)
{
    long id = args->id;
    if (id != 102 && id != 362)
        return 0;
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    if (!uc_compat(t))
        return 0;
    u32 ua = 0;
    if (id == 102) {
        u32 a[3] = {};
        if (args->args[0] != 3 || bpf_probe_read_user(a, sizeof(a), (void *)args->args[1]) < 0)
            return 0;
        ua = a[1];
    } else {
        ua = (u32)args->args[1];
    }
    uc_connect((struct sockaddr_in *)(u64)ua, UC_VIA_COMPAT);
    return 0;
}
#endif

/* rename(2) over a name: the name (read at the exit, resident then) and its directory */
static __always_inline int uc_rename_enter(s64 dfd, const char *name)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct uc_rename r = {.dfd = (int)dfd, .name = (u64)name};  /* an int in a 64-bit slot */
    uc_renames.update(&tid, &r);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_rename) { return uc_rename_enter(-100, args->newname); }
TRACEPOINT_PROBE(syscalls, sys_enter_renameat) { return uc_rename_enter(args->newdfd, args->newname); }
TRACEPOINT_PROBE(syscalls, sys_enter_renameat2) { return uc_rename_enter(args->newdfd, args->newname); }

static __always_inline int uc_rename_exit(long ret)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct uc_rename *r = uc_renames.lookup(&tid);
    if (!r)
        return 0;
    struct uc_rename rr = *r;
    uc_renames.delete(&tid);
    if (ret != 0)
        return 0;
    struct uc_event *e = uc_start(UC_RENAME, 0);
    if (!e)
        return 0;
    long n = bpf_probe_read_user_str(e->infs, TP_PATH_MAX, (void *)rr.name);
    if (n <= 0)
        return 0;
    e->inlen = n - 1;
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    if (e->infs[0] != '/') {               /* relative: to the dirfd, or the cwd */
        struct path dir = {};
        if (rr.dfd == -100) {
            struct fs_struct *fs = 0;
            TP_RD(fs, t->fs);
            if (fs)
                TP_RD(dir, fs->pwd);
        } else {
            struct file *f = tp_fd_file(t, rr.dfd);
            if (!f)
                return 0;
            TP_RD(dir, f->f_path);
        }
        uc_full(e, t, &dir);
    }
    uc_send(e);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_rename) { return uc_rename_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_renameat) { return uc_rename_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_renameat2) { return uc_rename_exit(args->ret); }
