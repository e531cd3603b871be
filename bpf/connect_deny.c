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
 */
#include <linux/bpf.h>

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

static __always_inline int cd_addr_in(struct cd_rule *r, struct cd_dest *d)
{
    u32 n = r->naddrs;
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < CD_MAX_ADDRS; i++) {
        if (i >= n)
            break;
        struct cd_cidr *c = &r->addrs[i];
        if (c->family != d->family)
            continue;
        if ((d->ip[0] & c->mask[0]) == c->addr[0] && (d->ip[1] & c->mask[1]) == c->addr[1] &&
            (d->ip[2] & c->mask[2]) == c->addr[2] && (d->ip[3] & c->mask[3]) == c->addr[3])
            return 1;
    }
    return 0;
}

static __always_inline int cd_port_in(struct cd_rule *r, u16 port)
{
    u32 n = r->nports;
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < CD_MAX_PORTS; i++) {
        if (i >= n)
            break;
        if (port >= r->port_lo[i] && port <= r->port_hi[i])
            return 1;
    }
    return 0;
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

/* 1 = allow, 0 = refuse (connect() fails with EPERM) */
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
            return 0;
        }
    }
    return 1;
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
    return cd_decide(d);
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
    return cd_decide(d);
}
