/* Bulk consumer of a BPF ring buffer mapped by collector/ringbuf.py (no per-record Python work).
 *
 * Layout (kernel/bpf/ringbuf.c): consumer position page (ours, rw), producer position page (ro),
 * then the data area mapped twice in a row, so a record crossing the end is contiguous in memory.
 * Each record: 8-byte header (u32 length with BUSY bit 31 and DISCARD bit 30, u32 page offset),
 * then the payload, the whole rounded up to 8 bytes.
 *
 * tp_rb_drain copies every committed record from the consumer position up to the first one
 * still being written (BUSY), or until `out`/`meta` is full, into `out` framed as RawBatch wants
 * it (u32 little-endian length, then the bytes: schemas/codec.py frame_records), skips discarded
 * records, and advances the consumer position once at the end (store-release: the kernel may
 * reuse the space from then on).
 *
 * meta gets three u64 per record copied: its offset in `out`, its kernel time (tp_header.ktime,
 * offset 16; ~0 when the record is shorter), and kind | pid << 32 (tp_header.kind at 0, pid at 8;
 * kind 0xffff when shorter). res: bytes written, records copied, records discarded, records of
 * kind TP_REC_EXIT, records of kind exec or fork.
 */
#include <stdint.h>
#include <string.h>

#define RB_BUSY (1u << 31)
#define RB_DISCARD (1u << 30)
#define RB_HDR 8u
#define KTIME_AT 16u
#define PID_AT 8u
#define REC_EXEC 1u
#define REC_EXIT 2u
#define REC_FORK 3u

int tp_rb_drain(uint64_t *cons_pos, const uint64_t *prod_pos, const uint8_t *data, uint64_t mask,
                uint8_t *out, uint64_t cap, uint64_t *meta, uint64_t max_recs, uint64_t *res)
{
    uint64_t c = __atomic_load_n(cons_pos, __ATOMIC_RELAXED);   /* only we write it */
    uint64_t p = __atomic_load_n(prod_pos, __ATOMIC_ACQUIRE);
    uint64_t w = 0, n = 0, disc = 0, exits = 0, starts = 0;

    while (c < p && n < max_recs) {
        const uint8_t *rec = data + (c & mask);
        uint32_t len = __atomic_load_n((const uint32_t *)rec, __ATOMIC_ACQUIRE);
        if (len & RB_BUSY)
            break;                      /* reserved, not yet committed: later records wait */
        uint32_t size = len & ~(RB_BUSY | RB_DISCARD);
        uint64_t total = ((uint64_t)size + RB_HDR + 7) & ~(uint64_t)7;
        if (len & RB_DISCARD) {
            disc++;
        } else {
            if (w + 4 + size > cap)
                break;
            const uint8_t *src = rec + RB_HDR;
            memcpy(out + w, &size, 4);
            memcpy(out + w + 4, src, size);
            uint64_t ktime = ~(uint64_t)0, kp = 0xffff;
            if (size >= KTIME_AT + 8) {
                uint16_t kind;
                uint32_t pid;
                memcpy(&ktime, src + KTIME_AT, 8);
                memcpy(&kind, src, 2);
                memcpy(&pid, src + PID_AT, 4);
                kp = kind | ((uint64_t)pid << 32);
                if (kind == REC_EXIT)
                    exits++;
                else if (kind == REC_EXEC || kind == REC_FORK)
                    starts++;
            }
            meta[3 * n] = w;
            meta[3 * n + 1] = ktime;
            meta[3 * n + 2] = kp;
            n++;
            w += 4 + size;
        }
        c += total;
    }
    __atomic_store_n(cons_pos, c, __ATOMIC_RELEASE);
    res[0] = w;
    res[1] = n;
    res[2] = disc;
    res[3] = exits;
    res[4] = starts;
    return 0;
}
