/* UDP sensor: a record for every datagram a process sends on an AF_INET/AF_INET6 UDP socket.
 * Appended to process.c's text by collector/sensors/ (shares its ring buffer, drop counter and
 * header helpers), like network.c.
 *
 * send:    sock:sock_send_length fires after every sendmsg on any socket (send, sendto, sendmsg,
 *          sendmmsg per message, write on a socket), in the sender's context, with the sock and
 *          the result; it filters on protocol UDP first. The socket gives the 5-tuple of a
 *          connected socket (and the source port the send bound).
 * dest:    an unconnected send names its destination in the message, which the socket does not
 *          hold: cgroup/sendmsg4 and sendmsg6 programs (attached to the cgroup v2 root by
 *          collector/sensors/udp.py; they always allow) remember it per thread for the
 *          tracepoint that follows in the same call.
 * Only sends that returned >= 0 (the kernel took the datagram) are reported.
 */
#define UDP_AF_INET 2
#define UDP_AF_INET6 10
#define UDP_IPPROTO_UDP 17

struct udp_dst {
    u64 sk;                    /* kernel address of the socket the destination belongs to */
    u32 family;
    u16 port;                  /* host byte order */
    u16 pad;
    u32 addr[4];               /* network byte order */
};

BPF_TABLE("lru_hash", u32, struct udp_dst, udp_dst, 16384);

static __always_inline int udp_stash(struct bpf_sock_addr *ctx, u32 family)
{
    struct bpf_sock *bsk = ctx->sk;
    u64 addr = 0;
    /* the socket's address as a number (no arithmetic on the typed pointer is allowed) */
    if (bsk)
        bpf_probe_read_kernel(&addr, sizeof(addr), &bsk);
    struct udp_dst d = {};
    d.sk = addr;
    d.family = family;
    d.port = __builtin_bswap16((u16)ctx->user_port);
    if (family == UDP_AF_INET) {
        d.addr[0] = ctx->user_ip4;
    } else {
        d.addr[0] = ctx->user_ip6[0];
        d.addr[1] = ctx->user_ip6[1];
        d.addr[2] = ctx->user_ip6[2];
        d.addr[3] = ctx->user_ip6[3];
    }
    u32 tid = (u32)bpf_get_current_pid_tgid();
    udp_dst.update(&tid, &d);
    return 1;                  /* always allow */
}

int tp_udp_sendmsg4(struct bpf_sock_addr *ctx)
{
    return udp_stash(ctx, UDP_AF_INET);
}

int tp_udp_sendmsg6(struct bpf_sock_addr *ctx)
{
    return udp_stash(ctx, UDP_AF_INET6);
}

TRACEPOINT_PROBE(sock, sock_send_length)
{
    if (args->protocol != UDP_IPPROTO_UDP)
        return 0;
    if (args->family != UDP_AF_INET && args->family != UDP_AF_INET6)
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct udp_dst dst = {};
    int named = 0;
    struct udp_dst *d = udp_dst.lookup(&tid);
    if (d) {
        dst = *d;
        udp_dst.delete(&tid);
        named = dst.sk == (u64)args->sk;
    }
    if (args->ret < 0)
        return 0;

    struct sock *sk = (struct sock *)args->sk;
    struct tp_sock s = {};
    struct sock_common cm = {};
    u16 type = 0;
    /* one read of the common part (addresses, ports, state, netns) instead of one per field */
    bpf_probe_read_kernel(&cm, sizeof(cm), &sk->__sk_common);
    TP_RD(type, sk->sk_type);
    TP_RD(s.mark, sk->sk_mark);
    TP_RD(s.priority, sk->sk_priority);
    struct net *net = cm.skc_net.net;
    if (net)
        TP_RD(s.netns, net->ns.inum);
    u16 dport = cm.skc_dport, num = cm.skc_num;
    u8 state = cm.skc_state;
    if (args->family == UDP_AF_INET) {
        __builtin_memcpy(s.saddr, &cm.skc_rcv_saddr, 4);
        __builtin_memcpy(s.daddr, &cm.skc_daddr, 4);
    } else {
        __builtin_memcpy(s.saddr, &cm.skc_v6_rcv_saddr, 16);
        __builtin_memcpy(s.daddr, &cm.skc_v6_daddr, 16);
    }
    s.dport = __builtin_bswap16(dport);
    if (named) {               /* the destination the message named */
        s.dport = dst.port;
        if (dst.family == UDP_AF_INET && args->family == UDP_AF_INET6) {
            u32 mapped[4] = {0, 0, __builtin_bswap32(0xffff), dst.addr[0]};
            __builtin_memcpy(s.daddr, mapped, 16);
        } else if (dst.family == UDP_AF_INET) {
            __builtin_memcpy(s.daddr, dst.addr, 4);
        } else {
            __builtin_memcpy(s.daddr, dst.addr, 16);
        }
    }
    if (!s.dport)
        return 0;              /* no destination known (the cgroup programs are not attached) */
    s.op = TP_SOCK_UDP_SEND;
    s.state = state;
    s.family = args->family;
    s.type = type;
    s.protocol = UDP_IPPROTO_UDP;
    s.sport = num;
    s.cookie = (u64)args->sk;
    tp_fill_header(&s.h, TP_REC_SOCK, sizeof(s));
    tp_sensor_output(&s, sizeof(s));
    return 0;
}
