/* Tetragon's `dns` argument: the query name of a DNS message a UDP socket sends, decoded in the
 * kernel so Equal/Prefix/Postfix selectors act on the name (collector/policy/dns.py). The message
 * is the payload of a struct msghdr (udp_sendmsg/udpv6_sendmsg's msg): its first user segment
 * (ITER_UBUF, or the first iovec of ITER_IOVEC), read by kargs.h's tp_iov_first. The 12-byte
 * header must be a standard query (QR 0, opcode 0, at least one question); the first question's
 * QNAME is walked label by label (one bounded loop of at most TP_DNS_LABELS labels, each copied
 * whole) into the dotted, lower-cased name ("www.example.com"). A name that is not whole in the
 * segment, a compression pointer or an extended label give no name and TP_ARGF_ERROR (never
 * matched). Included after kargs.h.
 */
#ifndef TETRAPIPE_DNS_H
#define TETRAPIPE_DNS_H

#define TP_DNS_QNAME 256          /* a QNAME is at most 255 bytes (RFC 1035 3.1) */
#define TP_DNS_RAW 2048           /* where the raw QNAME is read in the slot (the name goes at 0) */
#define TP_DNS_LABELS 128         /* a 255-byte name has at most 127 labels */

/* ASCII upper case to lower case over the whole raw QNAME, in place, before the labels are walked:
 * a fixed count and no branch per byte (a branch per byte, or a loop ending at the name's length,
 * made the 6.1 verifier give up: "The sequence of 8193 jumps is too complex"). Length bytes are
 * 0-63, below 'A', so they are left as they are. */
static __always_inline void tp_dns_lower(u8 *raw)
{
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < TP_DNS_QNAME; i++) {
        u64 j = TP_BOUND(i, 0xff);     /* opaque to clang: the verifier sees the bound */
        u8 c = raw[j];
        u64 up = (u8)(c - 'A');
        up -= 26;                      /* wraps (top bit set) exactly for 'A'..'Z' */
        asm volatile("%[x] >>= 63" : [x] "+r"(up));
        raw[j] = c + (up << 5);        /* + 32 for an upper-case letter */
    }
}

/* the query name into out (a TP_PATH_MAX slot); its length, 0 with TP_ARGF_ERROR when none */
static __always_inline u32 tp_dns_name(struct msghdr *msg, char *out, u32 *sf)
{
    u64 len = 0;
    u64 p = msg ? tp_iov_first(&msg->msg_iter, &len) : 0;
    u8 hdr[12] = {};
    if (!p || len < sizeof(hdr) + 1 || bpf_probe_read_user(hdr, sizeof(hdr), (void *)p) < 0)
        goto bad;
    if ((hdr[2] & 0xf8) != 0 || (hdr[4] == 0 && hdr[5] == 0))   /* QR|opcode; QDCOUNT */
        goto bad;
    u64 n = len - sizeof(hdr);
    if (n > TP_DNS_QNAME)
        n = TP_DNS_QNAME;
    n = TP_BOUND(n, 0x1ff);
    if (n > TP_DNS_QNAME)
        goto bad;
    u8 *raw = (u8 *)out + TP_DNS_RAW;
    if (bpf_probe_read_user(raw, n, (void *)(p + sizeof(hdr))) < 0)
        goto bad;
    tp_dns_lower(raw);
    /* label by label: one path through each iteration (the verifier walks it linearly) */
    u32 pos = 0;    /* index of the label's length byte in raw = index of its '.' in out, + 1 */
#pragma clang loop unroll(disable)
    for (int l = 0; l < TP_DNS_LABELS; l++) {
        if (pos >= n)
            break;                      /* the name is not whole in what was read */
        u8 c = raw[pos & (TP_DNS_QNAME - 1)];
        if (c == 0) {
            return pos ? pos - 1 : 0;
        }
        if (c > 63)
            break;                      /* compression pointer or extended label */
        if (pos)
            out[(pos - 1) & (TP_DNS_QNAME - 1)] = '.';
        bpf_probe_read_kernel(out + (pos & (TP_DNS_QNAME - 1)), c & 63, raw + ((pos + 1) & (TP_DNS_QNAME - 1)));
        pos += c + 1;
    }
bad:
    *sf |= TP_ARGF_ERROR;
    return 0;
}

#endif
