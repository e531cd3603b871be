/* What a sensor needs of process.c when it is loaded as a program of its own (a TracingPolicy
 * with `spec.loader: true` turns the loader sensor on while it is loaded, see
 * collector/sensors/): the ring buffer, its drop counter, the path scratch and the record
 * header helper. collector/sensors/ appends sensor_common.c and the sensor's C after it.
 * These lines repeat process.c's on purpose: bcc rewrites map calls (`drops.lookup`) only in the
 * main source text, so process.c cannot #include this file (measured: "unknown opcode 8d").
 */
#include "records.h"
#include "path.h"

BPF_RINGBUF_OUTPUT(events, TP_RINGBUF_PAGES);
BPF_PERCPU_ARRAY(drops, u64, 1);
BPF_PERCPU_ARRAY(path_scratch, struct tp_path_buf, 1);

static __always_inline void tp_count_drop(void)
{
    int zero = 0;
    u64 *d = drops.lookup(&zero);
    if (d)
        (*d)++;
}

static __always_inline void tp_fill_header(struct tp_header *h, u16 kind, u32 size)
{
    u64 id = bpf_get_current_pid_tgid();
    h->kind = kind;
    h->version = 1;
    h->size = size;
    h->pid = id >> 32;
    h->tid = (u32)id;
    h->ktime = bpf_ktime_get_ns();
}
