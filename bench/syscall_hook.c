/* Bench-only kernel program (NOT the policy engine): stands in for a monitor-mode policy hook so
 * the syscall-event drain can be measured through the collector's own path (ring buffer →
 * RingBufferDrain → RecordQueue → Batcher → Kafka producer). Records are TP_REC_HOOK.
 *
 * BENCH_HOOK_OPENAT: syscalls:sys_enter_openat, emits when the filename starts with the prefix in
 *                    map `match` (BENCH_MATCH_ALL: every openat).
 * BENCH_HOOK_WRITE:  syscalls:sys_enter_write, emits when the writer's tgid is the one in map
 *                    `match` (BENCH_MATCH_ALL: every write).
 */
#include "records.h"

#define BENCH_PREFIX_MAX 64

BPF_RINGBUF_OUTPUT(events, TP_RINGBUF_PAGES);
BPF_PERCPU_ARRAY(drops, u64, 1);

struct bench_match {
    u32 len;
    u32 tgid;
    char prefix[BENCH_PREFIX_MAX];
};
BPF_ARRAY(match, struct bench_match, 1);

struct bench_rec {
    struct tp_header h;
    u32 hook;
    u32 arg;
    char path[BENCH_PREFIX_MAX];
} __attribute__((packed));
BPF_PERCPU_ARRAY(scratch, struct bench_rec, 1);

static inline __attribute__((always_inline)) int bench_emit(struct bench_rec *r, u32 hook)
{
    u64 id = bpf_get_current_pid_tgid();
    r->h.kind = TP_REC_HOOK;
    r->h.version = 1;
    r->h.size = sizeof(*r);
    r->h.pid = id >> 32;
    r->h.tid = (u32)id;
    r->h.ktime = bpf_ktime_get_ns();
    r->hook = hook;
    if (events.ringbuf_output(r, sizeof(*r), 0) < 0) {
        int zero = 0;
        u64 *d = drops.lookup(&zero);
        if (d)
            (*d)++;
    }
    return 0;
}

#ifdef BENCH_HOOK_OPENAT
TRACEPOINT_PROBE(syscalls, sys_enter_openat)
{
    int zero = 0;
    struct bench_match *m = match.lookup(&zero);
    struct bench_rec *r = scratch.lookup(&zero);
    if (!m || !r)
        return 0;
    int n = bpf_probe_read_user_str(r->path, sizeof(r->path), args->filename);
    if (n <= 0)
        return 0;
#ifndef BENCH_MATCH_ALL
    u32 len = m->len;
    if (len > BENCH_PREFIX_MAX)
        return 0;
#pragma unroll
    for (int i = 0; i < BENCH_PREFIX_MAX; i++) {
        if (i >= len)
            break;
        if (r->path[i] != m->prefix[i])
            return 0;
    }
#endif
    r->arg = args->flags;
    return bench_emit(r, 1);
}
#endif

#ifdef BENCH_HOOK_WRITE
TRACEPOINT_PROBE(syscalls, sys_enter_write)
{
    int zero = 0;
#ifndef BENCH_MATCH_ALL
    struct bench_match *m = match.lookup(&zero);
    if (!m || (u32)(bpf_get_current_pid_tgid() >> 32) != m->tgid)
        return 0;
#endif
    struct bench_rec *r = scratch.lookup(&zero);
    if (!r)
        return 0;
    r->arg = args->fd;
    r->path[0] = 0;
    return bench_emit(r, 2);
}
#endif
