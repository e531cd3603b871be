/* Process lifecycle: exec, exit (last thread of a group) and fork (new thread group).
 * Loaded by collector/loader.py with bcc; records are laid out in records.h.
 * Limits: see records.h. A record that does not fit in the ring buffer is counted in `drops`.
 */
#include "records.h"
#include "path.h"

#define TP_SIGNAL_GROUP_EXIT 0x00000004
/* fields that differ between kernel versions: collector/kernel_variants.py picks these at load */
#ifndef TP_KERNFS_PARENT
#define TP_KERNFS_PARENT __parent
#endif
#ifndef TP_HAVE_EXIT_GROUP_DEAD
#define TP_HAVE_EXIT_GROUP_DEAD 1
#endif

BPF_RINGBUF_OUTPUT(events, TP_RINGBUF_PAGES);
BPF_PERCPU_ARRAY(drops, u64, 1);

struct exec_buf {
    struct tp_exec e;
    char data[5 * TP_PATH_MAX];
};
BPF_PERCPU_ARRAY(exec_scratch, struct exec_buf, 1);
BPF_PERCPU_ARRAY(path_scratch, struct tp_path_buf, 1);

static __always_inline void tp_count_drop(void)
{
    int zero = 0;
    u64 *d = drops.lookup(&zero);
    if (d)
        (*d)++;
}

static __always_inline void tp_fill_header(struct tp_header *h, u16 kind, u32 size)
{
    u64 id = bpf_get_current_pid_tgid();
    h->kind = kind;
    h->version = 1;
    h->size = size;
    h->pid = id >> 32;
    h->tid = (u32)id;
    h->ktime = bpf_ktime_get_ns();
}

static __always_inline void tp_fill_creds(struct tp_exec *e, struct task_struct *task)
{
    const struct cred *cred = 0;
    TP_RD(cred, task->cred);
    TP_RD(e->uid, cred->uid.val);
    TP_RD(e->gid, cred->gid.val);
    TP_RD(e->euid, cred->euid.val);
    TP_RD(e->egid, cred->egid.val);
    TP_RD(e->suid, cred->suid.val);
    TP_RD(e->sgid, cred->sgid.val);
    TP_RD(e->fsuid, cred->fsuid.val);
    TP_RD(e->fsgid, cred->fsgid.val);
    TP_RD(e->securebits, cred->securebits);
    /* kernel_cap_t is 8 bytes: { u64 val } since 6.3, { u32 cap[2] } (same bits) before */
    TP_RD(e->cap_permitted, cred->cap_permitted);
    TP_RD(e->cap_effective, cred->cap_effective);
    TP_RD(e->cap_inheritable, cred->cap_inheritable);
    TP_RD(e->auid, task->loginuid.val);

    struct user_namespace *uns = 0;
    TP_RD(uns, cred->user_ns);
    TP_RD(e->ns[TP_NS_USER], uns->ns.inum);
    TP_RD(e->user_ns_level, uns->level);
}

static __always_inline void tp_fill_ns(struct tp_exec *e, struct task_struct *task)
{
    struct nsproxy *nsp = 0;
    TP_RD(nsp, task->nsproxy);
    if (nsp) {
        struct uts_namespace *uts = 0; struct ipc_namespace *ipc = 0;
        struct mnt_namespace *mnt = 0; struct pid_namespace *pidc = 0;
        struct net *net = 0; struct time_namespace *tns = 0, *tnsc = 0;
        struct cgroup_namespace *cg = 0;
        TP_RD(uts, nsp->uts_ns); TP_RD(e->ns[TP_NS_UTS], uts->ns.inum);
        TP_RD(ipc, nsp->ipc_ns); TP_RD(e->ns[TP_NS_IPC], ipc->ns.inum);
        TP_RD(mnt, nsp->mnt_ns); TP_RD(e->ns[TP_NS_MNT], mnt->ns.inum);
        TP_RD(pidc, nsp->pid_ns_for_children);
        if (pidc) TP_RD(e->ns[TP_NS_PID_FOR_CHILDREN], pidc->ns.inum);
        TP_RD(net, nsp->net_ns); TP_RD(e->ns[TP_NS_NET], net->ns.inum);
        TP_RD(tns, nsp->time_ns); if (tns) TP_RD(e->ns[TP_NS_TIME], tns->ns.inum);
        TP_RD(tnsc, nsp->time_ns_for_children);
        if (tnsc) TP_RD(e->ns[TP_NS_TIME_FOR_CHILDREN], tnsc->ns.inum);
        TP_RD(cg, nsp->cgroup_ns); if (cg) TP_RD(e->ns[TP_NS_CGROUP], cg->ns.inum);
    }
    struct pid *tp = 0;
    TP_RD(tp, task->thread_pid);
    if (tp) {
        unsigned int level = 0;
        TP_RD(level, tp->level);
        struct upid up = {};
        bpf_probe_read_kernel(&up, sizeof(up), &tp->numbers[level & 31]);
        e->nspid = up.nr;
        if (up.ns)
            TP_RD(e->ns[TP_NS_PID], up.ns->ns.inum);
    }
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    int zero = 0;
    struct exec_buf *b = exec_scratch.lookup(&zero);
    if (!b)
        return 0;
    struct tp_exec *e = &b->e;
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    struct task_struct *parent = 0;
    u32 flags = 0;

    __builtin_memset(e, 0, sizeof(*e));
    TP_RD(parent, task->real_parent);
    TP_RD(e->ppid, parent->tgid);
    TP_RD(e->parent_start_time, parent->start_time);
    TP_RD(e->start_time, task->start_time);
    e->cgroup_id = bpf_get_current_cgroup_id();
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    tp_fill_creds(e, task);
    tp_fill_ns(e, task);

    /* the executed file: inode, links, mode (for setuid/setgid) */
    struct mm_struct *mm = 0;
    TP_RD(mm, task->mm);
    if (mm) {
        struct file *exe = 0;
        TP_RD(exe, mm->exe_file);
        if (exe) {
            struct inode *ino = 0;
            TP_RD(ino, exe->f_inode);
            TP_RD(e->exe_ino, ino->i_ino);
            TP_RD(e->exe_nlink, ino->__i_nlink);
            u16 mode = 0;
            TP_RD(mode, ino->i_mode);
            e->exe_mode = mode;
        }
    }

    /* 1. filename, as the tracepoint has it */
    u32 off = 0;
    unsigned short loc = args->data_loc_filename & 0xFFFF;
    int r = bpf_probe_read_kernel_str(b->data, TP_PATH_MAX, (void *)args + loc);
    if (r <= 0) {
        flags |= TP_F_ERR_FILENAME;
        r = 1;
    }
    /* the kernel takes at most PATH_MAX - 1 = 4095 bytes of file name (getname), so r == 4096
     * is a name of exactly 4095 bytes, whole; only a longer one would be cut */
    if (r > TP_PATH_MAX)
        flags |= TP_F_TRUNC_FILENAME;
    u32 flen = (r - 1) & (TP_PATH_MAX - 1);
    e->filename_len = flen;
    off = flen;

    /* 2. arguments from the new mm's argument area */
    u32 alen = 0;
    if (mm) {
        unsigned long as = 0, ae = 0;
        TP_RD(as, mm->arg_start);
        TP_RD(ae, mm->arg_end);
        unsigned long n = ae > as ? ae - as : 0;
        if (n >= TP_ARGS_MAX) {
            flags |= TP_F_TRUNC_ARGS;
            n = TP_ARGS_MAX - 1;
        }
        alen = n & (TP_ARGS_MAX - 1);
        if (alen && bpf_probe_read_user(b->data + (off & 0x3fff), alen, (void *)as) < 0) {
            flags |= TP_F_ERR_ARGS;
            alen = 0;
        }
    } else {
        flags |= TP_F_NO_MM;
    }
    e->args_len = alen;
    off += alen;

    /* 3. cwd, walked from task->fs->pwd up to task->fs->root */
    struct fs_struct *fs = 0;
    TP_RD(fs, task->fs);
    u32 clen = 0;
    struct tp_path_buf *pb = path_scratch.lookup(&zero);
    if (fs && pb) {
        struct path pwd = {}, root = {};
        TP_RD(pwd, fs->pwd);
        TP_RD(root, fs->root);
        u32 pf = 0;
        clen = tp_path_walk(pb, pwd.dentry, pwd.mnt, root.dentry, root.mnt,
                            b->data + (off & 0x3fff), &pf);
        if (pf & 1) flags |= TP_F_TRUNC_CWD;
        if (pf & 2) flags |= TP_F_ROOT_CWD;
    } else {
        flags |= TP_F_ERR_CWD;
    }
    clen &= (TP_PATH_MAX - 1);
    e->cwd_len = clen;
    off += clen;

    /* 4. leaf name of the task's cgroup v2 */
    struct css_set *cs = 0;
    struct cgroup *cgrp = 0;
    struct kernfs_node *kn = 0;
    const char *kname = 0;
    TP_RD(cs, task->cgroups);
    if (cs) TP_RD(cgrp, cs->dfl_cgrp);
    if (cgrp) TP_RD(kn, cgrp->kn);
    if (kn) TP_RD(kname, kn->name);
    u32 glen = 0;
    if (kname) {
        int g = bpf_probe_read_kernel_str(b->data + (off & 0x3fff), TP_CGNAME_MAX, kname);
        if (g > 1)
            glen = (g - 1) & (TP_CGNAME_MAX - 1);
    }
    e->cgroup_name_len = glen;
    off += glen;

    /* 5. names of up to TP_CG_ANCESTORS ancestors of that cgroup, nearest first, NUL separated:
     * kubelet names the pod's cgroup, the runtime the container's (which may be a parent when
     * the container made cgroups of its own). The enricher may run elsewhere: it cannot look. */
    u32 alen2 = 0;
#pragma clang loop unroll(disable)
    for (int i = 0; i < TP_CG_ANCESTORS; i++) {
        if (!kn)
            break;
        struct kernfs_node *up = 0;
        TP_RD(up, kn->TP_KERNFS_PARENT);
        kn = up;
        if (!kn)
            break;
        kname = 0;
        TP_RD(kname, kn->name);
        if (!kname)
            break;
        u32 at = (off + alen2) & 0x3fff;
        int g = bpf_probe_read_kernel_str(b->data + at, TP_CGNAME_MAX, kname);
        if (g <= 1)
            break;
        alen2 += g & (TP_CGNAME_MAX - 1 + TP_CGNAME_MAX); /* name + its NUL */
    }
    if (alen2)
        alen2 -= 1; /* no trailing NUL */
    alen2 &= 0x3ff;
    e->cgroup_ancestors_len = alen2;
    off += alen2;

    e->flags = flags;
    u32 size = sizeof(struct tp_exec) + (off & 0x3fff);
    if (size > sizeof(*b))
        size = sizeof(*b);
    tp_fill_header(&e->h, TP_REC_EXEC, size);
    if (events.ringbuf_output(b, size, 0) < 0)
        tp_count_drop();
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
#if TP_HAVE_EXIT_GROUP_DEAD
    if (!args->group_dead)
        return 0;
#else
    /* older kernels' tracepoint has no group_dead: do_exit() has already decremented
     * signal->live when it fires, so the group is dead when that reached 0 (two threads of one
     * process exiting at the same instant may both see 0 and report the exit twice) */
    {
        struct signal_struct *sg = 0;
        int live = 1;
        TP_RD(sg, task->signal);
        if (sg)
            TP_RD(live, sg->live.counter);
        if (live)
            return 0;
    }
#endif
    struct tp_exit x = {};
    struct task_struct *parent = 0;
    struct signal_struct *sig = 0;
    unsigned int sflags = 0;
    int code = 0;

    TP_RD(code, task->exit_code);
    TP_RD(sig, task->signal);
    if (sig) {
        TP_RD(sflags, sig->flags);
        if (sflags & TP_SIGNAL_GROUP_EXIT)
            TP_RD(code, sig->group_exit_code);
    }
    x.exit_code = code;
    TP_RD(parent, task->real_parent);
    TP_RD(x.ppid, parent->tgid);
    TP_RD(x.start_time, task->start_time);
    tp_fill_header(&x.h, TP_REC_EXIT, sizeof(x));
    if (events.ringbuf_output(&x, sizeof(x), 0) < 0)
        tp_count_drop();
    return 0;
}

RAW_TRACEPOINT_PROBE(sched_process_fork)
{
    struct task_struct *parent = (struct task_struct *)ctx->args[0];
    struct task_struct *child = (struct task_struct *)ctx->args[1];
    struct tp_fork f = {};
    u32 cpid = 0, ctgid = 0;

    TP_RD(cpid, child->pid);
    TP_RD(ctgid, child->tgid);
    if (cpid != ctgid)
        return 0; /* a new thread, not a new process */
    TP_RD(f.ppid, parent->tgid);
    TP_RD(f.start_time, child->start_time);
    f.cgroup_id = bpf_get_current_cgroup_id();
    tp_fill_header(&f.h, TP_REC_FORK, sizeof(f));
    f.h.pid = ctgid;
    f.h.tid = cpid;
    if (events.ringbuf_output(&f, sizeof(f), 0) < 0)
        tp_count_drop();
    return 0;
}
