/* Shared by the sensors, appended once before them by collector/sensors/ (bcc rewrites map
 * calls only in the main text, not in included headers, so this is text, not a header).
 *
 * Ring-buffer output for the sensors' high-rate records (connections, library maps).
 *
 * A wakeup per record (flags 0) costs an irq_work and a drain-thread wakeup each time: measured
 * on the build machine it made sys_exit_connect 10-23 us per call instead of 1.6 us. Sensors
 * therefore write without a wakeup and force one at most every TP_SENSOR_WAKE_NS per CPU
 * (bcc 0.26 cannot call bpf_ringbuf_query on its table to wake on fill level). Records written
 * in between are delivered by the next wakeup (any record of process.c wakes the reader) or by the drain's consume after each poll
 * timeout (collector/drain.py), so the added latency is bounded by the poll timeout (100 ms).
 */

#define TP_SENSOR_WAKE_NS 5000000ULL      /* 5 ms */

BPF_PERCPU_ARRAY(tp_sensor_last_wake, u64, 1);

static __always_inline void tp_sensor_output(void *data, u32 size)
{
    int zero = 0;
    u64 flags = BPF_RB_NO_WAKEUP;
    u64 now = bpf_ktime_get_ns();
    u64 *last = tp_sensor_last_wake.lookup(&zero);
    if (!last || now - *last > TP_SENSOR_WAKE_NS) {
        flags = BPF_RB_FORCE_WAKEUP;
        if (last)
            *last = now;
    }
    if (events.ringbuf_output(data, size, flags) < 0)
        tp_count_drop();
}
