/* Bounded dentry walk: the kernel has no bpf_d_path for tracepoints, so paths are rebuilt by
 * walking d_parent and crossing mounts, at most TP_PATH_DEPTH steps. Names are prepended into a
 * per-CPU buffer from its middle backwards (one loop: the verifier walks it cheaply), then the
 * result is copied out. Shared by the process programs (cwd) and the policy programs (fd paths).
 * Needs: BPF_PERCPU_ARRAY(path_scratch, struct tp_path_buf, 1) in the including program.
 */
#ifndef TETRAPIPE_PATH_H
#define TETRAPIPE_PATH_H

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

#define tp_container_of(ptr, type, member) ((type *)((void *)(ptr) - __builtin_offsetof(type, member)))
#define TP_RD(dst, src) bpf_probe_read_kernel(&(dst), sizeof(dst), &(src))
#define TP_PATH_MASK (TP_PATH_MAX - 1)

struct tp_path_buf {
    char buf[TP_PATH_MAX * 2];
    u32 pos;   /* kept in map memory: the verifier does not track it, so loop states prune */
};

/* Writes "/a/b/c" to out (TP_PATH_MAX bytes at least). Returns the length; sets *flags bits:
 * 1 = truncated (deeper than TP_PATH_DEPTH or longer than TP_PATH_MAX), 2 = the root itself. */
static __always_inline u32 tp_path_walk(struct tp_path_buf *pb, struct dentry *dentry,
                                        struct vfsmount *vfsmnt, struct dentry *root_dentry,
                                        struct vfsmount *root_mnt, char *out, u32 *flags)
{
    struct mount *mnt = tp_container_of(vfsmnt, struct mount, mnt);
    int done = 0;

    pb->pos = TP_PATH_MAX;
#pragma clang loop unroll(disable)
    for (int i = 0; i < TP_PATH_DEPTH; i++) {
        struct dentry *mnt_root = 0, *parent = 0;
        if (dentry == root_dentry && vfsmnt == root_mnt) { done = 1; break; }
        TP_RD(mnt_root, vfsmnt->mnt_root);
        if (dentry == mnt_root) {
            struct mount *mnt_parent = 0;
            TP_RD(mnt_parent, mnt->mnt_parent);
            if (mnt_parent == mnt || !mnt_parent) { done = 1; break; }
            TP_RD(dentry, mnt->mnt_mountpoint);
            mnt = mnt_parent;
            vfsmnt = &mnt->mnt;
            continue;
        }
        TP_RD(parent, dentry->d_parent);
        if (parent == dentry || !parent) { done = 1; break; }
        struct qstr q = {};
        TP_RD(q, dentry->d_name);
        u32 len = q.len & 255;
        u32 pos = pb->pos;
        if (len + 1 > pos) break;
        pos -= len;
        bpf_probe_read_kernel(pb->buf + (pos & TP_PATH_MASK), len, q.name);
        pos -= 1;
        pb->buf[pos & TP_PATH_MASK] = '/';
        pb->pos = pos;
        dentry = parent;
    }
    if (!done)
        *flags |= 1;
    u32 pos = pb->pos & (TP_PATH_MAX * 2 - 1);
    if (pos > TP_PATH_MAX)
        pos = TP_PATH_MAX;
    u32 len = TP_PATH_MAX - pos;
    if (len == 0) {
        out[0] = '/';
        *flags |= 2;
        return 1;
    }
    len &= TP_PATH_MASK;
    bpf_probe_read_kernel(out, len, pb->buf + (pos & TP_PATH_MASK));
    return len;
}

/* The struct file behind fd in task's fd table, or 0. */
static __always_inline struct file *tp_fd_file(struct task_struct *task, long fd)
{
    struct files_struct *files = 0;
    struct fdtable *fdt = 0;
    struct file **fdarr = 0;
    struct file *f = 0;
    unsigned int max = 0;
    if (fd < 0)
        return 0;
    TP_RD(files, task->files);
    if (!files)
        return 0;
    TP_RD(fdt, files->fdt);
    if (!fdt)
        return 0;
    TP_RD(max, fdt->max_fds);
    if ((unsigned long)fd >= max)
        return 0;
    TP_RD(fdarr, fdt->fd);
    bpf_probe_read_kernel(&f, sizeof(f), &fdarr[fd]);
    return f;
}

#endif
