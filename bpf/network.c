/* Network sensor: TCP connect, accept and close, from tracepoints only (this kernel has no
 * kprobes). Appended to process.c's text by collector/sensors/, so it shares its ring buffer
 * (`events`), drop counter and header helpers, and records stay ordered with exec/exit.
 *
 * connect: syscalls:sys_enter_connect remembers the fd per thread; sys_exit_connect (0 or
 *          -EINPROGRESS) resolves fd → file → socket → sock and reports the 5-tuple.
 * accept:  syscalls:sys_exit_accept / sys_exit_accept4 resolve the returned fd the same way.
 * close:   sock:inet_sock_set_state with newstate TCP_CLOSE. It can run in softirq context, so
 *          the owner comes from net_owner (sock address → pid/tid), filled at connect/accept;
 *          only sockets seen there are reported.
 * Only AF_INET/AF_INET6 stream sockets with IPPROTO_TCP are reported.
 */
#define NET_AF_INET 2
#define NET_AF_INET6 10
#define NET_IPPROTO_TCP 6
#define NET_TCP_CLOSE 7
#define NET_EINPROGRESS 115
#define NET_S_IFMT 00170000
#define NET_S_IFSOCK 0140000

struct net_owner {
    u32 pid;
    u32 tid;
};

BPF_HASH(net_connect_fd, u32, u32, 16384);
BPF_TABLE("lru_hash", u64, struct net_owner, net_owner, 65536);

static __always_inline struct sock *net_fd_sock(int fd)
{
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    struct file *f = tp_fd_file(task, fd);
    struct inode *ino = 0;
    struct socket *so = 0;
    struct sock *sk = 0;
    u16 mode = 0;

    if (!f)
        return 0;
    TP_RD(ino, f->f_inode);
    if (!ino)
        return 0;
    TP_RD(mode, ino->i_mode);
    if ((mode & NET_S_IFMT) != NET_S_IFSOCK)
        return 0;
    TP_RD(so, f->private_data);
    if (!so)
        return 0;
    TP_RD(sk, so->sk);
    return sk;
}

/* Fills everything but the header from the sock; 0 when it is not a TCP/IP socket. */
static __always_inline int net_fill(struct tp_sock *s, struct sock *sk, u8 op)
{
    u16 family = 0, type = 0, proto = 0, num = 0, dport = 0;
    u8 state = 0;
    struct net *net = 0;

    TP_RD(family, sk->__sk_common.skc_family);
    if (family != NET_AF_INET && family != NET_AF_INET6)
        return 0;
    TP_RD(proto, sk->sk_protocol);
    if (proto != NET_IPPROTO_TCP)
        return 0;
    TP_RD(type, sk->sk_type);
    bpf_probe_read_kernel(&state, 1, (void *)&sk->__sk_common.skc_state);
    TP_RD(num, sk->__sk_common.skc_num);
    TP_RD(dport, sk->__sk_common.skc_dport);
    TP_RD(s->mark, sk->sk_mark);
    TP_RD(s->priority, sk->sk_priority);
    TP_RD(net, sk->__sk_common.skc_net.net);
    if (net)
        TP_RD(s->netns, net->ns.inum);
    if (family == NET_AF_INET) {
        bpf_probe_read_kernel(s->saddr, 4, &sk->__sk_common.skc_rcv_saddr);
        bpf_probe_read_kernel(s->daddr, 4, &sk->__sk_common.skc_daddr);
    } else {
        bpf_probe_read_kernel(s->saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
        bpf_probe_read_kernel(s->daddr, 16, &sk->__sk_common.skc_v6_daddr);
    }
    s->op = op;
    s->state = state;
    s->family = family;
    s->type = type;
    s->protocol = proto;
    s->sport = num;
    s->dport = __builtin_bswap16(dport);
    s->cookie = (u64)sk;
    return 1;
}

static __always_inline void net_report(struct sock *sk, u8 op)
{
    struct tp_sock s = {};
    if (!sk || !net_fill(&s, sk, op))
        return;
    tp_fill_header(&s.h, TP_REC_SOCK, sizeof(s));
    struct net_owner o = {.pid = s.h.pid, .tid = s.h.tid};
    u64 key = (u64)sk;
    net_owner.update(&key, &o);
    tp_sensor_output(&s, sizeof(s));
}

TRACEPOINT_PROBE(syscalls, sys_enter_connect)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u32 fd = (u32)args->fd;
    net_connect_fd.update(&tid, &fd);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u32 *fdp = net_connect_fd.lookup(&tid);
    if (!fdp)
        return 0;
    int fd = (int)*fdp;
    net_connect_fd.delete(&tid);
    if (args->ret != 0 && args->ret != -NET_EINPROGRESS)
        return 0;
    net_report(net_fd_sock(fd), TP_SOCK_CONNECT);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_accept4)
{
    if (args->ret < 0)
        return 0;
    net_report(net_fd_sock((int)args->ret), TP_SOCK_ACCEPT);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_accept)
{
    if (args->ret < 0)
        return 0;
    net_report(net_fd_sock((int)args->ret), TP_SOCK_ACCEPT);
    return 0;
}

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->newstate != NET_TCP_CLOSE || args->protocol != NET_IPPROTO_TCP)
        return 0;
    u64 key = (u64)args->skaddr;
    struct net_owner *o = net_owner.lookup(&key);
    if (!o)
        return 0;
    struct net_owner owner = *o;
    net_owner.delete(&key);
    struct tp_sock s = {};
    if (!net_fill(&s, (struct sock *)args->skaddr, TP_SOCK_CLOSE))
        return 0;
    /* the port may already be released: take the tuple the tracepoint recorded */
    s.state = NET_TCP_CLOSE;
    s.sport = args->sport;
    s.dport = args->dport;
    if (s.family == NET_AF_INET) {
        __builtin_memcpy(s.saddr, args->saddr, 4);
        __builtin_memcpy(s.daddr, args->daddr, 4);
    } else {
        __builtin_memcpy(s.saddr, args->saddr_v6, 16);
        __builtin_memcpy(s.daddr, args->daddr_v6, 16);
    }
    tp_fill_header(&s.h, TP_REC_SOCK, sizeof(s));
    s.h.pid = owner.pid;
    s.h.tid = owner.tid;
    tp_sensor_output(&s, sizeof(s));
    return 0;
}
