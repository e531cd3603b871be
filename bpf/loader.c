/* Loader sensor: one tp_loader record per file a process maps executable. Appended to
 * process.c's text by collector/sensors/ (shares `events`, `drops`, `path_scratch`, helpers).
 *
 * syscalls:sys_enter_mmap remembers (fd, offset) when PROT_EXEC is asked with a file; at
 * sys_exit_mmap the fd is resolved (task->files->fdt->fd[n] → f_path) and walked to a path
 * (path.h). The GNU build id is read from the process's own mapping of the ELF image (the
 * header page, mapped at address - offset by ld.so), which needs that page to be present:
 * if it is not yet, the record waits (per thread) until the thread's next close() or
 * mprotect() — ld.so reads the object's notes before either — and is then sent with or
 * without the build id. Files the kernel maps itself at execve (the binary, the interpreter)
 * have no mmap call and no record.
 */
#define LDR_PROT_EXEC 0x4
#define LDR_MAP_ANONYMOUS 0x20
#define LDR_PHDR_MAX 16
#define LDR_NOTE_MAX 6
#define LDR_NOTE_SEGS 2   /* PT_NOTE segments read: gcc/ld put the build id in the first or second */

struct ldr_args {
    s32 fd;
    u32 pad;
    u64 off;
};

struct ldr_buf {
    struct tp_loader l;
    char path[TP_PATH_MAX];
};

struct ldr_pending {
    u64 base;        /* address of the ELF header in the process */
    u32 size;        /* record size */
    u32 pad;
    struct ldr_buf b;
};

BPF_HASH(ldr_mmap_args, u32, struct ldr_args, 16384);
BPF_PERCPU_ARRAY(ldr_scratch, struct ldr_pending, 1);
BPF_HASH(ldr_pending_rec, u32, struct ldr_pending, 1024);

/* The NT_GNU_BUILD_ID note in the notes of [note, end) of the process's memory: its length
 * (copied to out), 0 if none there, -1 if unreadable. Unrolled, no loop (see ldr_buildid). */
static __always_inline int ldr_note_scan(u64 note, u64 end, u8 *out)
{
#pragma unroll
    for (int n = 0; n < LDR_NOTE_MAX; n++) {
        u32 nh[4] = {}; /* namesz, descsz, type, name[0..3] */
        if (note + 16 > end)
            break;
        if (bpf_probe_read_user(nh, sizeof(nh), (void *)note) < 0)
            return -1;
        u32 namesz = (nh[0] + 3) & ~3U, descsz = (nh[1] + 3) & ~3U;
        if (nh[2] == 3 && nh[0] == 4 && nh[3] == 0x00554e47 /* "GNU\0" */) {
            u32 len = nh[1] > TP_LOADER_BUILDID_MAX ? TP_LOADER_BUILDID_MAX : nh[1];
            len &= 31;
            if (len == 0 || len > TP_LOADER_BUILDID_MAX)
                return 0;
            if (bpf_probe_read_user(out, len, (void *)(note + 12 + namesz)) < 0)
                return -1;
            return len;
        }
        note += 12 + namesz + descsz;
    }
    return 0;
}

/* Reads the NT_GNU_BUILD_ID note of the ELF image at `base`; returns its length, 0 if none.
 * Two steps, so Debian 6.1's verifier can follow it ("sequence of 8193 jumps is too complex"
 * when the note walk sat inside the program header loop): the loop only finds the first
 * LDR_NOTE_SEGS PT_NOTE segments, their notes are scanned after it, unrolled. */
static __always_inline int ldr_buildid(u64 base, u8 *out)
{
    unsigned char eh[64];
    if (bpf_probe_read_user(eh, sizeof(eh), (void *)base) < 0)
        return -1;
    if (eh[0] != 0x7f || eh[1] != 'E' || eh[2] != 'L' || eh[3] != 'F' || eh[4] != 2)
        return 0;
    u16 etype = *(u16 *)&eh[16];
    u64 phoff = *(u64 *)&eh[32];
    u16 phentsize = *(u16 *)&eh[54];
    u16 phnum = *(u16 *)&eh[56];
    if (phentsize != 56)
        return 0;
    u64 load_bias = etype == 2 ? 0 : base; /* ET_EXEC: addresses are absolute */
    u64 seg0 = 0, len0 = 0, seg1 = 0, len1 = 0;
    u32 found = 0;
    for (int i = 0; i < LDR_PHDR_MAX; i++) {
        if (i >= phnum || found >= LDR_NOTE_SEGS)
            break;
        u64 ph[7] = {};  /* p_type|p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align */
        if (bpf_probe_read_user(ph, sizeof(ph), (void *)(base + phoff + i * 56)) < 0)
            return -1;
        if ((u32)ph[0] != 4) /* PT_NOTE */
            continue;
        if (found == 0) {
            seg0 = load_bias + ph[2];
            len0 = ph[4];
        } else {
            seg1 = load_bias + ph[2];
            len1 = ph[4];
        }
        found++;
    }
    int r = 0;
    if (len0)
        r = ldr_note_scan(seg0, seg0 + len0, out);
    if (r == 0 && len1)
        r = ldr_note_scan(seg1, seg1 + len1, out);
    return r;
}

static __always_inline void ldr_send(struct ldr_pending *p)
{
    u32 size = p->size;
    if (size > sizeof(struct ldr_buf))
        size = sizeof(struct ldr_buf);
    if (size < sizeof(struct tp_loader))
        return;
    tp_sensor_output(&p->b, size);
}

/* Sends the pending record of this thread, after one more try at the build id. */
static __always_inline void ldr_flush(u32 tid)
{
    struct ldr_pending *p = ldr_pending_rec.lookup(&tid);
    if (!p)
        return;
    int n = ldr_buildid(p->base, p->b.l.buildid);
    p->b.l.buildid_len = n > 0 ? n : 0;
    ldr_send(p);
    ldr_pending_rec.delete(&tid);
}

TRACEPOINT_PROBE(syscalls, sys_enter_mmap)
{
    if (!(args->prot & LDR_PROT_EXEC) || (args->flags & LDR_MAP_ANONYMOUS) || (int)args->fd < 0)
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct ldr_args a = {.fd = (s32)args->fd, .off = args->off};
    ldr_mmap_args.update(&tid, &a);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_mmap)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct ldr_args *ap = ldr_mmap_args.lookup(&tid);
    if (!ap)
        return 0;
    struct ldr_args a = *ap;
    ldr_mmap_args.delete(&tid);
    long ret = args->ret;
    if (ret < 0 && ret > -4096)
        return 0;

    int zero = 0;
    struct ldr_pending *p = ldr_scratch.lookup(&zero);
    struct tp_path_buf *pb = path_scratch.lookup(&zero);
    if (!p || !pb)
        return 0;
    struct tp_loader *l = &p->b.l;
    __builtin_memset(l, 0, sizeof(*l));

    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    struct file *f = tp_fd_file(task, (long)a.fd);
    if (!f)
        return 0;
    struct inode *ino = 0;
    TP_RD(ino, f->f_inode);
    if (ino) {
        struct super_block *sb = 0;
        TP_RD(l->ino, ino->i_ino);
        TP_RD(sb, ino->i_sb);
        if (sb)
            TP_RD(l->dev, sb->s_dev);
    }
    struct path fp = {}, root = {};
    struct fs_struct *fs = 0;
    TP_RD(fp, f->f_path);
    TP_RD(fs, task->fs);
    if (fs)
        TP_RD(root, fs->root);
    u32 pf = 0;
    u32 plen = tp_path_walk(pb, fp.dentry, fp.mnt, root.dentry, root.mnt, p->b.path, &pf);
    plen &= (TP_PATH_MAX - 1);
    l->flags = pf & 1;
    l->path_len = plen;
    l->pgoff = a.off;
    l->addr = (u64)ret;
    p->base = (u64)ret - a.off;
    p->size = sizeof(struct tp_loader) + plen;
    tp_fill_header(&l->h, TP_REC_LOADER, p->size);

    int n = ldr_buildid(p->base, l->buildid);
    if (n >= 0) {
        l->buildid_len = n;
        ldr_send(p);
        return 0;
    }
    /* header page not present yet: wait for this thread's next close()/mprotect() */
    ldr_flush(tid);
    ldr_pending_rec.update(&tid, p);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_close)
{
    ldr_flush((u32)bpf_get_current_pid_tgid());
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_mprotect)
{
    ldr_flush((u32)bpf_get_current_pid_tgid());
    return 0;
}
