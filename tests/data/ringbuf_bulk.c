/* tests/test_ringbuf_bulk.py: records of chosen sizes, or reserved then discarded, written into a
 * one-page ring buffer when this test process calls getpgid(TAG | discard << 24 | class << 16 | seq).
 * Layout as tp_header (bpf/records.h): kind u16 at 0, seq u32 at 4, pid u32 at 8, ktime u64 at 16;
 * seq again at 24 (the body). A record that does not fit is counted in rb_drops. */
#define TAG (1 << 30)
#ifndef RB_PAGES
#define RB_PAGES 1
#endif
BPF_RINGBUF_OUTPUT(rb, RB_PAGES);
BPF_PERCPU_ARRAY(rb_drops, u64, 1);
struct big { u16 kind; u16 pad; u32 seq; u32 pid; u32 tid; u64 ktime; u32 seq2; u8 fill[172]; };
BPF_PERCPU_ARRAY(scratch, struct big, 1);

TRACEPOINT_PROBE(syscalls, sys_enter_getpgid) {
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != TEST_PID)
        return 0;
    u32 arg = (u32)args->pid;
    if (!(arg & TAG))
        return 0;
    int zero = 0;
    struct big *b = scratch.lookup(&zero);
    if (!b)
        return 0;
    if (arg & (1 << 24)) {
        struct big *r = rb.ringbuf_reserve(sizeof(struct big));
        if (r)
            rb.ringbuf_discard(r, 0);
        return 0;
    }
    b->kind = 0x77;
    b->seq = arg & 0xffff;
    b->pid = id >> 32;
    b->tid = (u32)id;
    b->ktime = bpf_ktime_get_ns();
    b->seq2 = b->seq;
    long rc;
    switch ((arg >> 16) & 0xff) {
    case 0: rc = rb.ringbuf_output(b, 24, 0); break;
    case 1: rc = rb.ringbuf_output(b, 28, 0); break;
    case 2: rc = rb.ringbuf_output(b, 61, 0); break;
    case 3: rc = rb.ringbuf_output(b, 131, 0); break;
    default: rc = rb.ringbuf_output(b, sizeof(struct big), 0); break;
    }
    if (rc < 0) {
        u64 *d = rb_drops.lookup(&zero);
        if (d)
            (*d)++;
    }
    return 0;
}
