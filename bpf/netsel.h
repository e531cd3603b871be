/* Network arguments seen by selectors (collector/policy/netsel.py): a sock, a socket, an skb or
 * a sockaddr read into a struct tp_sockinfo (collector/sock_hooks.py SOCK_HELPERS_C, pasted
 * before this header) so every network operator (SAddr/DAddr/SPort/DPort/...Priv, Protocol,
 * Family, State) compares one layout. Addresses: IPv4 in saddr[0]/daddr[0], IPv6 in all four
 * words, network byte order; ports in host order. Fields an object does not have stay 0.
 * The address sets' LPM-trie lookup lives in bpf/policy_prog.c (fragment net_lookup: it uses a
 * map, which bcc rewrites only in the main source).
 */
#ifndef TETRAPIPE_NETSEL_H
#define TETRAPIPE_NETSEL_H

/* any AF_INET/AF_INET6 socket, whatever its protocol (tp_sk_info takes TCP only) */
static __always_inline void tp_net_sock(struct sock *sk, struct tp_sockinfo *si)
{
    u16 family = 0, dport = 0;
    struct net *net = 0;
    __builtin_memset(si, 0, sizeof(*si));
    if (!sk)
        return;
    bpf_probe_read_kernel(&family, sizeof(family), &sk->__sk_common.skc_family);
    si->family = family;
    si->cookie = (u64)sk;
    bpf_probe_read_kernel(&si->protocol, sizeof(si->protocol), &sk->sk_protocol);
    bpf_probe_read_kernel(&si->type, sizeof(si->type), &sk->sk_type);
    if (family != TP_SK_AF_INET && family != TP_SK_AF_INET6)
        return;
    bpf_probe_read_kernel(&si->state, 1, (void *)&sk->__sk_common.skc_state);
    bpf_probe_read_kernel(&si->sport, sizeof(si->sport), &sk->__sk_common.skc_num);
    bpf_probe_read_kernel(&dport, sizeof(dport), &sk->__sk_common.skc_dport);
    si->dport = __builtin_bswap16(dport);
    bpf_probe_read_kernel(&si->mark, sizeof(si->mark), &sk->sk_mark);
    bpf_probe_read_kernel(&si->priority, sizeof(si->priority), &sk->sk_priority);
    bpf_probe_read_kernel(&net, sizeof(net), &sk->__sk_common.skc_net.net);
    if (net)
        bpf_probe_read_kernel(&si->netns, sizeof(si->netns), &net->ns.inum);
    if (family == TP_SK_AF_INET) {
        bpf_probe_read_kernel(&si->saddr[0], 4, &sk->__sk_common.skc_rcv_saddr);
        bpf_probe_read_kernel(&si->daddr[0], 4, &sk->__sk_common.skc_daddr);
    } else {
        bpf_probe_read_kernel(si->saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
        bpf_probe_read_kernel(si->daddr, 16, &sk->__sk_common.skc_v6_daddr);
    }
}

/* struct socket: its sock */
static __always_inline void tp_net_socket(struct socket *so, struct tp_sockinfo *si)
{
    struct sock *sk = 0;
    if (so)
        bpf_probe_read_kernel(&sk, sizeof(sk), &so->sk);
    tp_net_sock(sk, si);
}

/* a packet: the IPv4/IPv6 header at the skb's network header, TCP/UDP ports; the socket it
 * belongs to (skb->sk) in cookie, for socket tracking */
static __always_inline void tp_net_skb(struct sk_buff *skb, struct tp_sockinfo *si)
{
    unsigned char *head = 0;
    struct sock *sk = 0;
    u16 l3 = 0, l4 = 0;
    u8 v = 0, proto = 0;
    __builtin_memset(si, 0, sizeof(*si));
    if (!skb)
        return;
    bpf_probe_read_kernel(&sk, sizeof(sk), &skb->sk);
    si->cookie = (u64)sk;
    bpf_probe_read_kernel(&head, sizeof(head), &skb->head);
    bpf_probe_read_kernel(&l3, sizeof(l3), &skb->network_header);
    bpf_probe_read_kernel(&l4, sizeof(l4), &skb->transport_header);
    if (!head || l3 == 0xffff)
        return;
    bpf_probe_read_kernel(&v, 1, head + l3);
    if ((v >> 4) == 4) {
        si->family = TP_SK_AF_INET;
        bpf_probe_read_kernel(&proto, 1, head + l3 + 9);
        bpf_probe_read_kernel(&si->saddr[0], 4, head + l3 + 12);
        bpf_probe_read_kernel(&si->daddr[0], 4, head + l3 + 16);
        if (l4 == 0xffff || l4 <= l3)
            l4 = l3 + (v & 0xf) * 4;
    } else if ((v >> 4) == 6) {
        si->family = TP_SK_AF_INET6;
        bpf_probe_read_kernel(&proto, 1, head + l3 + 6);
        bpf_probe_read_kernel(si->saddr, 16, head + l3 + 8);
        bpf_probe_read_kernel(si->daddr, 16, head + l3 + 24);
        if (l4 == 0xffff || l4 <= l3)
            l4 = l3 + 40;
    } else {
        return;
    }
    si->protocol = proto;
    if (proto == 6 || proto == 17) {
        u16 ports[2] = {};
        bpf_probe_read_kernel(ports, sizeof(ports), head + l4);
        si->sport = __builtin_bswap16(ports[0]);
        si->dport = __builtin_bswap16(ports[1]);
    }
}

/* a sockaddr (user memory when `user`, else kernel memory, then user memory where that fails):
 * its family, and its address and port in both the source and the destination fields (Tetragon
 * names them SAddr/SPort; a connect's sockaddr is the destination) */
static __always_inline void tp_net_sockaddr(void *sa, int user, struct tp_sockinfo *si)
{
    u16 fam = 0, port = 0;
    __builtin_memset(si, 0, sizeof(*si));
    if (!sa)
        return;
    if (user || bpf_probe_read_kernel(&fam, sizeof(fam), sa) < 0) {
        user = 1;
        bpf_probe_read_user(&fam, sizeof(fam), sa);
    }
    si->family = fam;
    if (fam != TP_SK_AF_INET && fam != TP_SK_AF_INET6)
        return;
    if (user) {
        bpf_probe_read_user(&port, sizeof(port), sa + 2);
        if (fam == TP_SK_AF_INET)
            bpf_probe_read_user(&si->daddr[0], 4, sa + 4);
        else
            bpf_probe_read_user(si->daddr, 16, sa + 8);
    } else {
        bpf_probe_read_kernel(&port, sizeof(port), sa + 2);
        if (fam == TP_SK_AF_INET)
            bpf_probe_read_kernel(&si->daddr[0], 4, sa + 4);
        else
            bpf_probe_read_kernel(si->daddr, 16, sa + 8);
    }
    si->dport = __builtin_bswap16(port);
    si->sport = si->dport;
    __builtin_memcpy(si->saddr, si->daddr, 16);
}

#endif
