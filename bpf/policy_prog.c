/* Fixed C of the programs collector/policy/compiler.py generates per policy: fragments pasted
 * into each program by collector/policy/csrc.py (bcc rewrites map calls only in the main
 * source, so code using the program's maps cannot be an included header). "// @@ name" starts
 * a fragment; ${name} marks are filled from Python. Not compiled on its own. */

// @@ hook_prologue
    int zero = 0;
    struct tp_hook_buf *b = hook_scratch.lookup(&zero);
    struct tp_path_buf *pb = path_scratch.lookup(&zero);
    struct tp_slots *s = slot_scratch.lookup(&zero);
    u32 *on = enabled.lookup(&zero);
    if (!b || !pb || !s || !on || !*on)
        return 0;
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    u32 have = 0;
    int ok = 1;

// @@ hook_function
static __always_inline int tp_hook_${hid}(void *ctx, u64 *a, s64 ret, u32 is_ret)
{
${scope_check}${prologue}    int sel = -1;
    u32 act = 0;${decls}
${pre}
    if (!ok)
        return 0;
${selectors}
    if (sel < 0)
        return 0;
    tp_count(${count_base} + (sel == 255 ? ${count_last} : sel));
${effects}
    u64 id = bpf_get_current_pid_tgid();${owner}
    b->e.h.kind = TP_REC_HOOK;
    b->e.h.version = 1;
    b->e.h.pid = id >> 32;
    b->e.h.tid = (u32)id;
    b->e.h.ktime = bpf_ktime_get_ns();
    b->e.policy_id = ${policy_id}U;
    b->e.hook_id = ${hid};
    b->e.selector = sel;
    b->e.action = act;
    b->e.flags = ${flags} | (is_ret == 1 ? TP_HOOK_RETURN : 0) | (is_ret == 2 ? TP_HOOK_IO_URING : 0);
    b->e.nargs = 0;
    b->e.ret = ret;
    u32 off = 0;
${serialize}
    off = TP_BOUND(off, 0x3fff);
    b->e.data_len = off;
    b->e.h.size = sizeof(struct tp_hook) + off;
    if (tp_emit(b, sizeof(struct tp_hook) + off) < 0)
        tp_drop();
    return ${result};
}

// @@ prefilter_function
static __always_inline int tp_pre_${hid}(void *ctx, u64 *a)
{
${scope_check}${prologue}${pre}
    return ok;
}

// @@ program_helpers
/* What a selector could not judge, counted per policy (``gaps``; collector/policy/gaps.py names
 * each index in metrics): the collector reads it every second. */
static __always_inline void tp_gap(u32 idx) { u64 *c = gaps.lookup(&idx); if (c) (*c)++; }
/* a truncated string (a path deeper than TP_PATH_DEPTH components or longer than TP_PATH_MAX
 * bytes) is never compared by name as if whole: counted, and the name comparison skipped */
static __always_inline int tp_trunc_judged(u32 flags)
{
    if (!(flags & TP_ARGF_TRUNC))
        return 0;
    tp_gap(TP_GAP_TRUNC);
    return 1;
}
/* a name filter's verdict r: 1 matched (by name, or by inode), 0 proved not the file (by inode),
 * 2 not matched and not provable (no inode set, or the Prefix directory not found among the
 * ancestors walked). A truncated string's verdict is counted: matched by inode, or unknown */
static __always_inline int tp_trunc_verdict(u32 flags, int r)
{
    if (flags & TP_ARGF_TRUNC) {
        if (r == 1)
            tp_gap(TP_GAP_TRUNC_INODE);
        else if (r == 2)
            tp_gap(TP_GAP_TRUNC_MISS);
    }
    return r == 1;
}
/* the set's key in per-CPU scratch, zeroed (a key is 264 bytes: too big for the stack budget) */
static __always_inline struct tp_strkey *tp_setkey(u32 set)
{
    int zero = 0;
    struct tp_strkey *key = strkey_scratch.lookup(&zero);
    if (key) {
        __builtin_memset(key, 0, sizeof(*key));
        key->set = set;
    }
    return key;
}
/* the l bytes of str at off are a value of the key's set. l is a constant at every call and
 * the calls of one set go by rising l, so the bytes past l are still zero (tp_setkey) */
static __always_inline int tp_set_at(struct tp_strkey *key, const char *str, u32 off, u32 l)
{
    key->len = l;
    bpf_probe_read_kernel(key->s, l, str + TP_BOUND(off, 0xfff));
    return strset.lookup(key) != 0;
}
/* the whole string (n bytes) is a value of the key's set */
static __always_inline int tp_set_eq(struct tp_strkey *key, const char *str, u32 n)
{
    u64 m = TP_BOUND(n, 0x1fff);   /* opaque to clang: it keeps the check the verifier needs */
    if (m > TP_STR_MAX)
        return 0;
    key->len = m;
    bpf_probe_read_kernel(key->s, m, str);
    return strset.lookup(key) != 0;
}
static __always_inline int tp_int_in(u32 set, u64 v)
{
    struct tp_intkey k = {.set = set, .v = v};
    return intset.lookup(&k) != 0;
}
/* the file of dentry d is in inode set `set`: itself (TP_INO_SELF), or, with depth > 1, one of its
 * first depth-1 ancestors in its file system is a Prefix directory (TP_INO_UNDER). The device is
 * the file system's (s_dev: bind mounts and hard links share it with the protected name).
 * 1: it is; 0: it is not; 2: not found among TP_INO_DEPTH ancestors and the file system's root
 * not reached (a file deeper than that under the directory is possible: tp_trunc_verdict). */
static __always_inline int tp_ino_walk(u32 set, struct dentry *d, int depth)
{
    struct tp_inokey k = {.set = set};
    struct inode *ino = 0;
    struct super_block *sb = 0;
    if (!d)
        return 0;
    TP_RD(ino, d->d_inode);
    if (!ino)
        return 0;
    TP_RD(sb, ino->i_sb);
    if (sb)
        TP_RD(k.dev, sb->s_dev);
#pragma clang loop unroll(disable)
    for (int i = 0; i < TP_INO_DEPTH; i++) {
        if (i >= depth)
            return 0;
        ino = 0;
        TP_RD(ino, d->d_inode);
        if (!ino)
            return 0;
        TP_RD(k.ino, ino->i_ino);
        struct tp_inoval *v = inoset.lookup(&k);
        if (v && (v->flags & (i == 0 ? TP_INO_SELF : TP_INO_UNDER))) {
            u32 gen = 0;
            TP_RD(gen, ino->i_generation);
            if (!(v->flags & TP_INO_GEN) || v->gen == gen)
                return 1;
        }
        struct dentry *p = 0;
        TP_RD(p, d->d_parent);
        if (!p || p == d)
            return 0;
        d = p;
    }
    return 2;
}
static __always_inline void tp_count(u32 idx) { u64 *c = sel_counts.lookup(&idx); if (c) (*c)++; }
static __always_inline void tp_drop(void) { int z = 0; u64 *d = drops.lookup(&z); if (d) (*d)++; }
static __always_inline int tp_emit(struct tp_hook_buf *b, u32 size) { return events.ringbuf_output(b, size, 0); }

// @@ exec_state_save
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
    if (exec_state.update(&tgid, &st))
        tp_gap(TP_GAP_STATE_FULL);
}

// @@ follow_children_exec
{
    int zero = 0;
    struct tp_path_buf *pb = path_scratch.lookup(&zero);
    struct tp_slots *s = slot_scratch.lookup(&zero);
    u32 *on = enabled.lookup(&zero);
    if (pb && s && on && *on) {
        struct task_struct *task = (struct task_struct *)bpf_get_current_task();
        u32 sf = 0;
        s->slen[0] = tp_exe_path(pb, task, s->slot[0], &sf);
        s->sflags[0] = sf;
        if (${cond}) {
            struct tp_fc_key fk = {.filter = ${fid}, .tgid = bpf_get_current_pid_tgid() >> 32};
            u8 one = 1;
            fc_marks.update(&fk, &one);
        }
    }
}

// @@ follow_children_fork
{
    struct tp_fc_key fk = {.filter = ${fid}, .tgid = bpf_get_current_pid_tgid() >> 32};
    if (fc_marks.lookup(&fk)) {
        u8 one = 1;
        fk.tgid = args->child_pid;
        fc_marks.update(&fk, &one);
    }
}

// @@ exec_state_fork
{
    /* a new process starts with its parent's state: a change is judged against the exec before */
    u32 tg = bpf_get_current_pid_tgid() >> 32;
    struct tp_exec_state *st = exec_state.lookup(&tg);
    if (st && !tp_fork_is_thread(args->child_pid)) {
        struct tp_exec_state c = *st;
        u32 child = args->child_pid;
        if (exec_state.update(&child, &c))
            tp_gap(TP_GAP_STATE_FULL);
    }
}

// @@ follow_pids_births
{
    /* while the policy loads (not enabled yet): every fork, child → parent, so the seeding from
     * /proc links a child whose parent exited before it was marked (collector/policy/proc_state.py) */
    int zero = 0;
    u32 *on = enabled.lookup(&zero);
    if (on && !*on && !tp_fork_is_thread(args->child_pid)) {
        u32 child = args->child_pid, parent = bpf_get_current_pid_tgid() >> 32;
        pf_births.update(&child, &parent);
    }
}

// @@ follow_pids_fork
{
    /* matchPIDs followForks: a child of a followed process is followed (the mark is inherited
     * at fork and dropped at exit), whatever the depth; processes older than the policy are
     * marked from /proc at load (collector/policy/proc_state.py) */
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    struct tp_fc_key fk = {.filter = ${fid}, .tgid = bpf_get_current_pid_tgid() >> 32};
    u32 v = ${val};
    (void)task;
    int m = (${eq}) || pf_marks.lookup(&fk) != 0;
    if (m && !tp_fork_is_thread(args->child_pid)) {
        u8 one = 1;
        fk.tgid = args->child_pid;
        if (pf_marks.update(&fk, &one))
            tp_gap(TP_GAP_MARK_FULL);
    }
}

// @@ state_exit
{
    /* per-process state leaves with the process (a reused pid must not inherit it); a thread's
     * copy (sched_process_fork fires for threads too) leaves with the thread */
    u64 id = bpf_get_current_pid_tgid();
    u32 tg = id >> 32, tid = (u32)id;
    ${keys}
    if (tid != tg)
        ${map}.delete(&tk);
    if (${group_dead})
        ${map}.delete(&pk);
}

// @@ compat_helpers
/* The current syscall is a 32-bit one (int 0x80, or a 32-bit binary): x86's TS_COMPAT, which
 * in_ia32_syscall() tests. syscalls:sys_enter_* and sys_exit_* never fire for those
 * (ARCH_TRACE_IGNORE_COMPAT_SYSCALLS); raw_syscalls:* do, with the i386 number. */
static __always_inline int tp_compat(void)
{
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    u32 st = 0;
    bpf_probe_read_kernel(&st, sizeof(st), &t->thread_info.status);
    return (st & 0x0002) != 0;
}

// @@ uring_helpers
/* io_uring requests (collector/policy/uring.py): fields of struct io_kiocb read from the
 * tracepoint's req. cqe.fd is the request's fd as submitted (an index for fixed files). */
static __always_inline u8 tp_uring_op(void *r)
{
    struct io_kiocb *req = (struct io_kiocb *)r;
    u8 op = 0;
    bpf_probe_read_kernel(&op, sizeof(op), &req->opcode);
    return op;
}
static __always_inline int tp_uring_fd(void *r)
{
    struct io_kiocb *req = (struct io_kiocb *)r;
    int fd = -1;
    bpf_probe_read_kernel(&fd, sizeof(fd), &req->cqe.fd);
    return fd;
}
/* CONNECT at its completion: the socket of the request's file (req->file: an fd's or a registered
 * file's; cqe.fd is overwritten by the completion's flags by then) */
static __always_inline struct sock *tp_uring_sk(void *r)
{
    struct io_kiocb *req = (struct io_kiocb *)r;
    struct file *f = 0;
    struct inode *ino = 0;
    struct socket *so = 0;
    struct sock *sk = 0;
    u16 mode = 0;
    bpf_probe_read_kernel(&f, sizeof(f), &req->file);
    if (!f)
        return 0;
    bpf_probe_read_kernel(&ino, sizeof(ino), &f->f_inode);
    if (ino)
        bpf_probe_read_kernel(&mode, sizeof(mode), &ino->i_mode);
    if ((mode & 00170000) != 0140000)   /* S_IFSOCK */
        return 0;
    bpf_probe_read_kernel(&so, sizeof(so), &f->private_data);
    if (so)
        bpf_probe_read_kernel(&sk, sizeof(sk), &so->sk);
    return sk;
}
/* READ/WRITE: the buffer and its length as the syscall's arguments 1 and 2 */
static __always_inline void tp_uring_rw(void *r, u64 *a)
{
    struct io_kiocb *req = (struct io_kiocb *)r;
    struct io_rw *rw = (struct io_rw *)&req->cmd;
    u64 addr = 0;
    u32 len = 0;
    bpf_probe_read_kernel(&addr, sizeof(addr), &rw->addr);
    bpf_probe_read_kernel(&len, sizeof(len), &rw->len);
    a[1] = addr;
    a[2] = len;
}
static __always_inline int tp_uring_splice_in(void *r)
{
    struct io_kiocb *req = (struct io_kiocb *)r;
    struct io_splice *sp = (struct io_splice *)&req->cmd;
    int fd = -1;
    bpf_probe_read_kernel(&fd, sizeof(fd), &sp->splice_fd_in);
    return fd;
}

// @@ kfunc_fentry
KFUNC_PROBE(${func})
{
${body}
    return 0;
}

// @@ kfunc_fexit
KRETFUNC_PROBE(${func})
{
${body}
    return 0;
}

// @@ kfunc_rawtp
RAW_TRACEPOINT_PROBE(${func})
{
${body}
    return 0;
}

// @@ kfunc_lsm
LSM_PROBE(${func})
{
    int ovr = 0;
${body}
    return ovr;
}

// @@ kfunc_fmod_ret
KMOD_RET(${func})
{
    int ovr = 0;
${body}
    return ovr;
}

// @@ kfunc_kprobe
int tp_kprobe__${func}(struct pt_regs *ctx)
{
${body}
    return 0;
}

// @@ kfunc_kretprobe
int tp_kretprobe__${func}(struct pt_regs *ctx)
{
${body}
    return 0;
}

// @@ kfunc_kprobe_override
int tp_kprobe__${func}(struct pt_regs *ctx)
{
    int ovr = 0;
${body}
    if (ovr)
        bpf_override_return(ctx, (unsigned long)(long)ovr);
    return 0;
}

// @@ net_lookup
/* address sets of network selectors (collector/policy/netsel.py): one LPM-trie lookup of the
 * set id, the family and the address; an IPv4-mapped IPv6 address (::ffff:a.b.c.d, a dual-stack
 * socket reaching IPv4) is looked up as the IPv4 address it is */
struct tp_lpm_key {
    u32 prefixlen;
    u32 set;
    u8 family;
    u8 pad[3];
    u32 addr[4];
};
BPF_LPM_TRIE(netaddr, struct tp_lpm_key, u8, ${size});
BPF_PERCPU_ARRAY(netkey_scratch, struct tp_lpm_key, 1);

static __always_inline int tp_net_in(u32 set, u16 family, u32 *a)
{
    int zero = 0;
    struct tp_lpm_key *k = netkey_scratch.lookup(&zero);
    if (!k)
        return 0;
    __builtin_memset(k, 0, sizeof(*k));
    k->prefixlen = 64 + 128;
    k->set = set;
    k->family = family;
    if (family == TP_SK_AF_INET6 && a[0] == 0 && a[1] == 0 && a[2] == ${v4mapped}) {
        k->family = TP_SK_AF_INET;
        k->addr[0] = a[3];
    } else if (family == TP_SK_AF_INET) {
        k->addr[0] = a[0];
    } else if (family == TP_SK_AF_INET6) {
        k->addr[0] = a[0];
        k->addr[1] = a[1];
        k->addr[2] = a[2];
        k->addr[3] = a[3];
    } else {
        return 0;
    }
    return netaddr.lookup(k) != 0;
}
