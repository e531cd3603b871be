/* Typed kernel arguments of policy hooks, read as Tetragon reads them (bpf/records.h has the
 * layouts: struct tp_cred_arg, tp_userns_arg, tp_bpf_attr_arg, tp_perf_event_arg, tp_bpf_map_arg,
 * tp_module_arg, tp_sockaddr_arg, tp_skb_arg). Included after policy.h; the policy compiler
 * (collector/policy/kargs.py) checks each argument's C type against the function's BTF prototype
 * and defines what differs between kernels:
 *   TP_IOV_ITER_IOV   the iov_iter member holding its iovec pointer (__iov since 6.4, iov before)
 *   TP_HAVE_ITER_UBUF 1 where enum iter_type has ITER_UBUF (6.0+)
 *   TP_HAVE_LOAD_INFO 1 where BTF has struct load_info (CONFIG_MODULES)
 *   TP_LOAD_INFO_SIG  1 where struct load_info has sig_ok (CONFIG_MODULE_SIG)
 *   TP_SKB_SECPATH    1 where sk_buff has extensions and enum skb_ext_id has SKB_EXT_SEC_PATH (CONFIG_XFRM)
 * Each writer appends one argument (struct tp_arg + its struct) straight into the per-CPU record
 * buffer and returns the new offset; one that does not fit is left out. `user` (a constant
 * after inlining): 1, the object is in user memory (a syscall's own pointer); 0, kernel memory,
 * and user memory where the kernel read fails (__sys_connect's sockaddr is the caller's).
 */
#ifndef TETRAPIPE_KARGS_H
#define TETRAPIPE_KARGS_H

#ifndef TP_IOV_ITER_IOV
#define TP_IOV_ITER_IOV __iov
#endif
#ifndef TP_HAVE_ITER_UBUF
#define TP_HAVE_ITER_UBUF 1
#endif
#ifndef TP_HAVE_LOAD_INFO
#define TP_HAVE_LOAD_INFO 0
#endif
#ifndef TP_LOAD_INFO_SIG
#define TP_LOAD_INFO_SIG 0
#endif
#ifndef TP_SKB_SECPATH
#define TP_SKB_SECPATH 0
#endif

#define TP_RDX(user, dst, src) ((user) ? bpf_probe_read_user(&(dst), sizeof(dst), &(src)) \
                                       : bpf_probe_read_kernel(&(dst), sizeof(dst), &(src)))
/* where the argument's bytes go: the verifier sees a bounded offset into the record buffer */
#define TP_ARG_OUT(b, off, type) ((type *)((b)->data + TP_BOUND((off), 0x1fff)))

/* header of a fixed-size argument; 0 when it does not fit (the caller then leaves it out) */
static __always_inline u32 tp_arg_begin(struct tp_hook_buf *b, u32 off, u8 type, u8 flags, u32 len)
{
    if (off > TP_DATA_SIZE - 32 - len)
        return 0;
    b->e.nargs++;
    return tp_put_hdr(b, off, type, flags, len, len);
}

static __always_inline void tp_rd_userns(struct tp_userns_arg *o, struct user_namespace *ns)
{
    if (!ns)
        return;
    TP_RD(o->level, ns->level);
    TP_RD(o->uid, ns->owner);
    TP_RD(o->gid, ns->group);
    TP_RD(o->inum, ns->ns.inum);
}

static __always_inline u32 tp_put_userns(struct tp_hook_buf *b, u32 off, struct user_namespace *ns)
{
    u32 d = tp_arg_begin(b, off, TP_ARG_USER_NS, ns ? 0 : TP_ARGF_ERROR, sizeof(struct tp_userns_arg));
    if (!d)
        return off;
    struct tp_userns_arg *o = TP_ARG_OUT(b, d, struct tp_userns_arg);
    __builtin_memset(o, 0, sizeof(*o));
    tp_rd_userns(o, ns);
    return d + sizeof(*o);
}

static __always_inline u32 tp_put_cred(struct tp_hook_buf *b, u32 off, const struct cred *c)
{
    u32 d = tp_arg_begin(b, off, TP_ARG_CRED, c ? 0 : TP_ARGF_ERROR, sizeof(struct tp_cred_arg));
    if (!d)
        return off;
    struct tp_cred_arg *o = TP_ARG_OUT(b, d, struct tp_cred_arg);
    __builtin_memset(o, 0, sizeof(*o));
    if (c) {
        struct user_namespace *ns = 0;
        TP_RD(o->uid, c->uid);
        TP_RD(o->gid, c->gid);
        TP_RD(o->euid, c->euid);
        TP_RD(o->egid, c->egid);
        TP_RD(o->suid, c->suid);
        TP_RD(o->sgid, c->sgid);
        TP_RD(o->fsuid, c->fsuid);
        TP_RD(o->fsgid, c->fsgid);
        TP_RD(o->securebits, c->securebits);
        /* kernel_cap_t: u64 since 6.3, u32 cap[2] before: the same 8 bytes, read whole */
        TP_RD(o->cap_permitted, c->cap_permitted);
        TP_RD(o->cap_effective, c->cap_effective);
        TP_RD(o->cap_inheritable, c->cap_inheritable);
        TP_RD(ns, c->user_ns);
        tp_rd_userns(&o->user_ns, ns);
    }
    return d + sizeof(*o);
}

static __always_inline u32 tp_put_bpf_attr(struct tp_hook_buf *b, u32 off, union bpf_attr *ba, int user)
{
    u32 d = tp_arg_begin(b, off, TP_ARG_BPF_ATTR, ba ? 0 : TP_ARGF_ERROR, sizeof(struct tp_bpf_attr_arg));
    if (!d)
        return off;
    struct tp_bpf_attr_arg *o = TP_ARG_OUT(b, d, struct tp_bpf_attr_arg);
    __builtin_memset(o, 0, sizeof(*o));
    if (ba) {
        if (!user && bpf_probe_read_kernel(&o->prog_type, sizeof(o->prog_type), &ba->prog_type) < 0)
            user = 1;
        TP_RDX(user, o->prog_type, ba->prog_type);
        TP_RDX(user, o->insn_cnt, ba->insn_cnt);
        TP_RDX(user, o->prog_name, ba->prog_name);
    }
    return d + sizeof(*o);
}

static __always_inline u32 tp_put_perf_event(struct tp_hook_buf *b, u32 off, struct perf_event *pe)
{
    u32 d = tp_arg_begin(b, off, TP_ARG_PERF_EVENT, pe ? 0 : TP_ARGF_ERROR, sizeof(struct tp_perf_event_arg));
    if (!d)
        return off;
    struct tp_perf_event_arg *o = TP_ARG_OUT(b, d, struct tp_perf_event_arg);
    __builtin_memset(o, 0, sizeof(*o));
    if (pe) {
        u64 fn = 0;
        TP_RD(o->type, pe->attr.type);
        TP_RD(o->config, pe->attr.config);
        TP_RD(o->probe_offset, pe->attr.probe_offset);
        /* attr.kprobe_func is the caller's pointer (perf_event_open copies the name elsewhere) */
        TP_RD(fn, pe->attr.kprobe_func);
        if (fn && bpf_probe_read_user_str(o->kprobe_func, TP_KSYM_NAME_LEN, (void *)fn) < 0)
            bpf_probe_read_kernel_str(o->kprobe_func, TP_KSYM_NAME_LEN, (void *)fn);
    }
    return d + sizeof(*o);
}

static __always_inline u32 tp_put_bpf_map(struct tp_hook_buf *b, u32 off, struct bpf_map *m)
{
    u32 d = tp_arg_begin(b, off, TP_ARG_BPF_MAP, m ? 0 : TP_ARGF_ERROR, sizeof(struct tp_bpf_map_arg));
    if (!d)
        return off;
    struct tp_bpf_map_arg *o = TP_ARG_OUT(b, d, struct tp_bpf_map_arg);
    __builtin_memset(o, 0, sizeof(*o));
    if (m) {
        TP_RD(o->map_type, m->map_type);
        TP_RD(o->key_size, m->key_size);
        TP_RD(o->value_size, m->value_size);
        TP_RD(o->max_entries, m->max_entries);
        TP_RD(o->name, m->name);
    }
    return d + sizeof(*o);
}

/* struct module (is_load_info 0) or struct load_info (1: its name, its module's taints, sig_ok) */
static __always_inline u32 tp_put_module(struct tp_hook_buf *b, u32 off, void *p, int is_load_info)
{
    u32 d = tp_arg_begin(b, off, TP_ARG_MODULE, p ? 0 : TP_ARGF_ERROR, sizeof(struct tp_module_arg));
    if (!d)
        return off;
    struct tp_module_arg *o = TP_ARG_OUT(b, d, struct tp_module_arg);
    __builtin_memset(o, 0, sizeof(*o));
    if (!p)
        return d + sizeof(*o);
    struct module *mod = 0;
    if (is_load_info) {
#if TP_HAVE_LOAD_INFO
        struct load_info *li = (struct load_info *)p;
        const char *name = 0;
        TP_RD(name, li->name);
        if (name)
            bpf_probe_read_kernel_str(o->name, TP_MODULE_NAME_LEN, name);
        TP_RD(mod, li->mod);
        if (mod)
            TP_RD(o->taints, mod->taints);
#if TP_LOAD_INFO_SIG
        bool ok = 0;
        TP_RD(ok, li->sig_ok);
        o->flags = TP_MODULE_SIG_KNOWN | (ok ? TP_MODULE_SIG_OK : 0);
#endif
#endif
    } else {
        mod = (struct module *)p;
        bpf_probe_read_kernel_str(o->name, TP_MODULE_NAME_LEN, mod->name);
        TP_RD(o->taints, mod->taints);
    }
    return d + sizeof(*o);
}

static __always_inline u32 tp_put_sockaddr(struct tp_hook_buf *b, u32 off, void *sa, int user)
{
    u32 d = tp_arg_begin(b, off, TP_ARG_SOCKADDR, sa ? 0 : TP_ARGF_ERROR, sizeof(struct tp_sockaddr_arg));
    if (!d)
        return off;
    struct tp_sockaddr_arg *o = TP_ARG_OUT(b, d, struct tp_sockaddr_arg);
    __builtin_memset(o, 0, sizeof(*o));
    if (!sa)
        return d + sizeof(*o);
    u16 fam = 0, port = 0;
    if (!user && bpf_probe_read_kernel(&fam, sizeof(fam), sa) < 0)
        user = 1;
    TP_RDX(user, fam, *(u16 *)sa);
    o->family = fam;
    if (fam == 2) {           /* struct sockaddr_in: port at 2, address at 4 */
        TP_RDX(user, port, *(u16 *)(sa + 2));
        if (user)
            bpf_probe_read_user(o->addr, 4, sa + 4);
        else
            bpf_probe_read_kernel(o->addr, 4, sa + 4);
    } else if (fam == 10) {   /* struct sockaddr_in6: port at 2, address at 8 */
        TP_RDX(user, port, *(u16 *)(sa + 2));
        if (user)
            bpf_probe_read_user(o->addr, 16, sa + 8);
        else
            bpf_probe_read_kernel(o->addr, 16, sa + 8);
    }
    o->port = __builtin_bswap16(port);
    return d + sizeof(*o);
}

#if TP_SKB_SECPATH
/* the IPsec state path of a packet xfrm received (Tetragon's sec_path_len/olen): struct sec_path's
 * len and olen, the skb extension at offset[SKB_EXT_SEC_PATH] * 8 when that extension is active */
static __always_inline void tp_rd_secpath(struct tp_skb_arg *o, struct sk_buff *skb)
{
    u8 active = 0, eo = 0;
    struct skb_ext *ext = 0;
    int len = 0, olen = 0;
    TP_RD(active, skb->active_extensions);
    if (!(active & (1 << SKB_EXT_SEC_PATH)))
        return;
    TP_RD(ext, skb->extensions);
    if (!ext)
        return;
    TP_RD(eo, ext->offset[SKB_EXT_SEC_PATH]);
    struct sec_path *sp = (struct sec_path *)((char *)ext + ((u32)eo << 3));
    TP_RD(len, sp->len);
    TP_RD(olen, sp->olen);
    o->secpath_len = len;
    o->secpath_olen = olen;
}
#endif

/* the 5-tuple of an IPv4 or IPv6 packet (TCP/UDP ports), from the skb's network and transport
 * headers as they are set at the hook (Tetragon reads IPv4 only) */
static __always_inline u32 tp_put_skb(struct tp_hook_buf *b, u32 off, struct sk_buff *skb)
{
    u32 d = tp_arg_begin(b, off, TP_ARG_SKB, skb ? 0 : TP_ARGF_ERROR, sizeof(struct tp_skb_arg));
    if (!d)
        return off;
    struct tp_skb_arg *o = TP_ARG_OUT(b, d, struct tp_skb_arg);
    __builtin_memset(o, 0, sizeof(*o));
    if (!skb)
        return d + sizeof(*o);
    unsigned char *head = 0;
    u16 l3 = 0, l4 = 0;
    u8 v = 0, proto = 0;
    TP_RD(o->hash, skb->hash);
    TP_RD(o->len, skb->len);
    TP_RD(o->priority, skb->priority);
    TP_RD(o->mark, skb->mark);
#if TP_SKB_SECPATH
    tp_rd_secpath(o, skb);
#endif
    TP_RD(head, skb->head);
    TP_RD(l3, skb->network_header);
    TP_RD(l4, skb->transport_header);
    if (!head || l3 == 0xffff)
        return d + sizeof(*o);
    bpf_probe_read_kernel(&v, 1, head + l3);
    if ((v >> 4) == 4) {
        o->family = 2;
        bpf_probe_read_kernel(&proto, 1, head + l3 + 9);
        bpf_probe_read_kernel(o->saddr, 4, head + l3 + 12);
        bpf_probe_read_kernel(o->daddr, 4, head + l3 + 16);
        if (l4 == 0xffff || l4 <= l3)
            l4 = l3 + (v & 0xf) * 4;
    } else if ((v >> 4) == 6) {
        o->family = 10;
        bpf_probe_read_kernel(&proto, 1, head + l3 + 6);
        bpf_probe_read_kernel(o->saddr, 16, head + l3 + 8);
        bpf_probe_read_kernel(o->daddr, 16, head + l3 + 24);
        if (l4 == 0xffff || l4 <= l3)
            l4 = l3 + 40;
    } else {
        return d + sizeof(*o);
    }
    o->proto = proto;
    if (proto == 6 || proto == 17) {
        u16 ports[2] = {};
        bpf_probe_read_kernel(ports, sizeof(ports), head + l4);
        o->sport = __builtin_bswap16(ports[0]);
        o->dport = __builtin_bswap16(ports[1]);
    }
    return d + sizeof(*o);
}

/* iov_iter: its first user segment (ITER_UBUF: the buffer; ITER_IOVEC: the first iovec), as
 * Tetragon reads it: the pointer, and its length in *len (both 0 for other iterator kinds: kernel
 * vectors, pages). dns.h reads a msghdr's payload with it too. */
static __always_inline u64 tp_iov_first(struct iov_iter *it, u64 *len)
{
    u8 t = 0xff;
    u64 ptr = 0, size = 0;
    if (it) {
        TP_RD(t, it->iter_type);
        TP_RD(size, it->count);
#if TP_HAVE_ITER_UBUF
        if (t == ITER_UBUF)
            TP_RD(ptr, it->ubuf);
#endif
        if (t == ITER_IOVEC) {
            const struct iovec *iov = 0;
            u64 l = 0;
            TP_RD(iov, it->TP_IOV_ITER_IOV);
            if (iov) {
                TP_RD(ptr, iov->iov_base);
                TP_RD(l, iov->iov_len);
            }
            if (l < size)
                size = l;
        }
    }
    *len = ptr ? size : 0;
    return ptr;
}

/* iov_iter: the bytes of its first user segment */
static __always_inline u32 tp_put_iov_iter(struct tp_hook_buf *b, u32 off, struct iov_iter *it)
{
    u64 size = 0;
    u64 ptr = tp_iov_first(it, &size);
    return tp_put_user_buf(b, off, ptr, (s64)size);
}

/* the whole i_mode of a kiocb's file, for the event's `permission` (the file, path, dentry and
 * binprm readers are policy.h's tp_*_imode, which FileType's type-only readers use too) */
static __always_inline u16 tp_kiocb_imode(struct kiocb *k)
{
    struct file *f = 0;
    if (k)
        TP_RD(f, k->ki_filp);
    return tp_file_imode(f);
}

/* tp_put_slot with the inode's mode before the path (TP_ARGF_MODE) */
static __always_inline u32 tp_put_slot_mode(struct tp_hook_buf *b, struct tp_slots *s, u32 off, u8 type,
                                            int k, u16 mode)
{
    if (off > TP_DATA_SIZE - 32)
        return off;
    u32 len = s->slen[k & (TP_SLOTS - 1)] & (TP_PATH_MAX - 1);
    if (off + 10 + len > TP_DATA_SIZE)
        return off;
    off = tp_put_hdr(b, off, type, (s->sflags[k & (TP_SLOTS - 1)] & 0xff) | TP_ARGF_MODE, len + 2, len + 2);
    bpf_probe_read_kernel(b->data + TP_BOUND(off, 0x1fff), sizeof(mode), &mode);
    off += sizeof(mode);
    u64 n = TP_BOUND(len, 0xfff);
    if (n)
        bpf_probe_read_kernel(b->data + TP_BOUND(off, 0x1fff), n, s->slot[k & (TP_SLOTS - 1)]);
    b->e.nargs++;
    return off + len;
}

#endif
