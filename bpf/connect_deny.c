/* Connect enforcement: cgroup/connect4 and cgroup/connect6 programs that refuse a connect()
 * (the caller gets EPERM) when one of the rules in `cd_rules` matches. Loaded and attached to a
 * cgroup (v2) by collector/connect_deny.py; the rules come from Python (the policy engine turns
 * a selector with DAddr/DPort/... matchArgs, matchBinaries and a deny action into one rule).
 *
 * A rule matches when every condition it sets holds (as inside one Tetragon selector):
 *   family / protocol (0 = any), destination address in (or, with addr_negate, not in) one of
 *   its CIDRs, destination port in (or not in) one of its ranges, DPortPriv (port < 1024), and
 *   the caller's executable (device, inode of mm->exe_file) in / not in the rule's binaries
 *   (`cd_binaries`, filled from paths stat'ed in Python).
 * IPv4-mapped IPv6 destinations (::ffff:a.b.c.d) are matched as IPv4.
 * Denials are counted per rule in `cd_denied` (per CPU).
 *
 * Each refusal is also reported (unless the rule's selector says NoPost): a struct
 * tp_connect_deny record (records.h) in the ring buffer `cd_events`, drained by the collector like
 * the sensors' buffer; records that do not fit are counted in `cd_drops`. It names the policy,
 * hook and selector of the rule, the caller (pid/tid) and the socket (family, type, protocol,
 * state, source and destination, cookie = kernel address of the sock, network namespace).
 */
#include <linux/bpf.h>
#include "records.h"

#ifndef CD_RINGBUF_PAGES
#define CD_RINGBUF_PAGES 16
#endif
#define CD_EPERM 1
/* bpf_set_retval (cgroup programs, Linux 5.18+): a refusal returns this error instead of EPERM */
static long (*cd_set_retval)(int retval) = (void *)187;

#define CD_MAX_RULES 16
#define CD_MAX_ADDRS 8
#define CD_MAX_PORTS 8
#define CD_AF_INET 2
#define CD_AF_INET6 10

struct cd_cidr {
    u32 family;
    u32 addr[4];               /* network byte order, already masked */
    u32 mask[4];
};

struct cd_rule {
    u32 used;
    u32 family;                /* 0 = any */
    u32 protocol;              /* 0 = any, else IPPROTO_* */
    u32 naddrs;
    u32 addr_negate;
    u32 nports;
    u32 port_negate;
    u32 port_priv;             /* 1: DPortPriv (port < 1024), 2: NotDPortPriv */
    u32 binary_mode;           /* 0 any, 1 In cd_binaries, 2 NotIn */
    u32 pad;
    struct cd_cidr addrs[CD_MAX_ADDRS];
    u16 port_lo[CD_MAX_PORTS];
    u16 port_hi[CD_MAX_PORTS];
    u32 policy_id;             /* reported in the record: the policy, hook and selector */
    u16 hook_id;
    u8 selector;
    u8 action;                 /* KprobeAction number (Override 5) */
    u32 post;                  /* 1: report each refusal in cd_events (0: NoPost) */
    s32 error;                 /* what connect() returns (the selector's argError): -EPERM, ... */
};

struct cd_bin_key {
    u32 rule;
    u32 dev;                   /* kernel encoding: major << 20 | minor */
    u64 ino;
};

struct cd_dest {
    u32 family;
    u32 protocol;
    u32 ip[4];
    u16 port;                  /* host byte order */
    u16 pad;
    u32 dev;
    u64 ino;
};

BPF_ARRAY(cd_rules, struct cd_rule, CD_MAX_RULES);
BPF_HASH(cd_binaries, struct cd_bin_key, u8, 4096);
BPF_PERCPU_ARRAY(cd_denied, u64, CD_MAX_RULES);
BPF_PERCPU_ARRAY(cd_scratch, struct cd_dest, 1);
BPF_RINGBUF_OUTPUT(cd_events, CD_RINGBUF_PAGES);
BPF_PERCPU_ARRAY(cd_drops, u64, 1);
BPF_PERCPU_ARRAY(cd_rec_scratch, struct tp_connect_deny, 1);

/* Both loops run their full constant count, with no early exit, so clang unrolls them: a loop
 * that stops at `i >= n` becomes a count clang derives from min(n, 8), whose bound Debian 6.1's
 * verifier loses ("invalid access to map value" past the rule). */
static __always_inline int cd_addr_in(struct cd_rule *r, struct cd_dest *d)
{
    u32 n = r->naddrs;
    int hit = 0;
#pragma unroll
    for (u32 i = 0; i < CD_MAX_ADDRS; i++) {
        struct cd_cidr *c = &r->addrs[i];
        if (i < n && c->family == d->family &&
            (d->ip[0] & c->mask[0]) == c->addr[0] && (d->ip[1] & c->mask[1]) == c->addr[1] &&
            (d->ip[2] & c->mask[2]) == c->addr[2] && (d->ip[3] & c->mask[3]) == c->addr[3])
            hit = 1;
    }
    return hit;
}

static __always_inline int cd_port_in(struct cd_rule *r, u16 port)
{
    u32 n = r->nports;
    int hit = 0;
#pragma unroll
    for (u32 i = 0; i < CD_MAX_PORTS; i++) {
        if (i < n && port >= r->port_lo[i] && port <= r->port_hi[i])
            hit = 1;
    }
    return hit;
}

static __always_inline int cd_rule_matches(u32 idx, struct cd_rule *r, struct cd_dest *d)
{
    if (!r->used)
        return 0;
    if (r->family && r->family != d->family)
        return 0;
    if (r->protocol && r->protocol != d->protocol)
        return 0;
    if (r->naddrs && cd_addr_in(r, d) == (int)r->addr_negate)
        return 0;
    if (r->nports && cd_port_in(r, d->port) == (int)r->port_negate)
        return 0;
    if (r->port_priv == 1 && d->port >= 1024)
        return 0;
    if (r->port_priv == 2 && d->port < 1024)
        return 0;
    if (r->binary_mode) {
        struct cd_bin_key k = {.rule = idx, .dev = d->dev, .ino = d->ino};
        int in = cd_binaries.lookup(&k) != 0;
        if ((r->binary_mode == 1) != in)
            return 0;
    }
    return 1;
}

static __always_inline void cd_exe(struct cd_dest *d)
{
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    struct mm_struct *mm = 0;
    struct file *exe = 0;
    struct inode *ino = 0;
    struct super_block *sb = 0;
    bpf_probe_read_kernel(&mm, sizeof(mm), &task->mm);
    if (!mm)
        return;
    bpf_probe_read_kernel(&exe, sizeof(exe), &mm->exe_file);
    if (!exe)
        return;
    bpf_probe_read_kernel(&ino, sizeof(ino), &exe->f_inode);
    if (!ino)
        return;
    bpf_probe_read_kernel(&d->ino, sizeof(d->ino), &ino->i_ino);
    bpf_probe_read_kernel(&sb, sizeof(sb), &ino->i_sb);
    if (sb)
        bpf_probe_read_kernel(&d->dev, sizeof(d->dev), &sb->s_dev);
}

/* the matching rule's index, or -1 (allow) */
static __always_inline int cd_decide(struct cd_dest *d)
{
    cd_exe(d);
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < CD_MAX_RULES; i++) {
        u32 idx = i;
        struct cd_rule *r = cd_rules.lookup(&idx);
        if (!r || !r->used)
            break;              /* rules are packed from index 0 */
        if (cd_rule_matches(idx, r, d)) {
            u64 *c = cd_denied.lookup(&idx);
            if (c)
                (*c)++;
            return (int)idx;
        }
    }
    return -1;
}

/* A refusal → one tp_connect_deny record (the rule says whether to post it). */
static __always_inline void cd_report(struct bpf_sock_addr *ctx, struct cd_dest *d, struct cd_rule *r,
                                      int error)
{
    int zero = 0;
    struct tp_connect_deny *e = cd_rec_scratch.lookup(&zero);
    if (!e || !r->post)
        return;
    __builtin_memset(e, 0, sizeof(*e));
    u64 id = bpf_get_current_pid_tgid();
    e->h.kind = TP_REC_CONNECT_DENY;
    e->h.version = 1;
    e->h.size = sizeof(*e);
    e->h.pid = id >> 32;
    e->h.tid = (u32)id;
    e->h.ktime = bpf_ktime_get_ns();
    e->policy_id = r->policy_id;
    e->hook_id = r->hook_id;
    e->selector = r->selector;
    e->action = r->action;
    e->ret = error;
    e->family = d->family;
    e->protocol = d->protocol;
    e->dport = d->port;
    e->daddr[0] = d->ip[0];
    e->daddr[1] = d->ip[1];
    e->daddr[2] = d->ip[2];
    e->daddr[3] = d->ip[3];
    /* The socket through the kernel's struct sock, by probe reads from its address taken as a
     * number: the verifier refuses any arithmetic on the typed ctx->sk pointer. */
    struct bpf_sock *bsk = ctx->sk;
    u64 addr = 0;
    if (bsk)
        bpf_probe_read_kernel(&addr, sizeof(addr), &bsk);
    struct sock *ks = (struct sock *)addr;
    if (ks) {
        u16 type = 0, num = 0, skfam = 0;
        u8 state = 0;
        struct net *net = 0;
        e->cookie = addr;
        bpf_probe_read_kernel(&type, sizeof(type), &ks->sk_type);
        bpf_probe_read_kernel(&state, 1, (void *)&ks->__sk_common.skc_state);
        bpf_probe_read_kernel(&num, sizeof(num), &ks->__sk_common.skc_num);
        bpf_probe_read_kernel(&skfam, sizeof(skfam), &ks->__sk_common.skc_family);
        bpf_probe_read_kernel(&e->mark, sizeof(e->mark), &ks->sk_mark);
        bpf_probe_read_kernel(&e->priority, sizeof(e->priority), &ks->sk_priority);
        e->type = type;
        e->state = state;
        e->sport = num;
        if (skfam == CD_AF_INET) {
            bpf_probe_read_kernel(&e->saddr[0], 4, &ks->__sk_common.skc_rcv_saddr);
        } else if (d->family == CD_AF_INET) {   /* v4-mapped destination of an AF_INET6 socket */
            bpf_probe_read_kernel(&e->saddr[0], 4, (u8 *)&ks->__sk_common.skc_v6_rcv_saddr + 12);
        } else {
            bpf_probe_read_kernel(e->saddr, 16, &ks->__sk_common.skc_v6_rcv_saddr);
        }
        bpf_probe_read_kernel(&net, sizeof(net), &ks->__sk_common.skc_net.net);
        if (net)
            bpf_probe_read_kernel(&e->netns, sizeof(e->netns), &net->ns.inum);
    }
    if (cd_events.ringbuf_output(e, sizeof(*e), 0) < 0) {
        u64 *c = cd_drops.lookup(&zero);
        if (c)
            (*c)++;
    }
}

static __always_inline int cd_verdict(struct bpf_sock_addr *ctx, struct cd_dest *d)
{
    int idx = cd_decide(d);
    if (idx < 0)
        return 1;
    u32 ridx = (u32)idx;
    struct cd_rule *r = cd_rules.lookup(&ridx);
    if (!r)
        return 0;
    int error = -CD_EPERM;
    if (r->error < 0 && r->error != -CD_EPERM && r->error >= -4095) {
        cd_set_retval(r->error);
        error = r->error;
    }
    cd_report(ctx, d, r, error);
    return 0;               /* refuse: connect() fails with EPERM or the rule's error */
}

int cd_connect4(struct bpf_sock_addr *ctx)
{
    int zero = 0;
    struct cd_dest *d = cd_scratch.lookup(&zero);
    if (!d)
        return 1;
    __builtin_memset(d, 0, sizeof(*d));
    d->family = CD_AF_INET;
    d->protocol = ctx->protocol;
    d->ip[0] = ctx->user_ip4;
    d->port = __builtin_bswap16((u16)ctx->user_port);
    return cd_verdict(ctx, d);
}

int cd_connect6(struct bpf_sock_addr *ctx)
{
    int zero = 0;
    struct cd_dest *d = cd_scratch.lookup(&zero);
    if (!d)
        return 1;
    __builtin_memset(d, 0, sizeof(*d));
    u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];
    d->protocol = ctx->protocol;
    d->port = __builtin_bswap16((u16)ctx->user_port);
    if (w0 == 0 && w1 == 0 && w2 == __builtin_bswap32(0xffff)) {
        d->family = CD_AF_INET;      /* ::ffff:a.b.c.d */
        d->ip[0] = w3;
    } else {
        d->family = CD_AF_INET6;
        d->ip[0] = w0;
        d->ip[1] = w1;
        d->ip[2] = w2;
        d->ip[3] = w3;
    }
    return cd_verdict(ctx, d);
}
