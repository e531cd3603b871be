#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
/* One USDT probe (provider "test", name "usdt3", arguments: a u64 in a register, an int32 in
 * memory), written as the .note.stapsdt entry sys/sdt.h emits (tests/data/usdt_note.h: sys/sdt.h,
 * systemtap-sdt-dev, is not installed here); for tests/test_policy_usdt.py. Exits 0 unless killed. */
#include "usdt_note.h"
#define TP_USDT2(provider, name, a1, a2) \
    TP_USDT(provider, name, "8@%[x1] -4@%[x2]", [x1] "r"((uint64_t)(a1)), [x2] "m"(a2))

int main(int argc, char **argv)
{
    uint64_t v = argc > 1 ? strtoull(argv[1], 0, 0) : 0;
    volatile int32_t w = argc > 2 ? atoi(argv[2]) : 0;
    int32_t ww = w;
    TP_USDT2("test", "usdt3", v, ww);
    printf("fired %llu %d\n", (unsigned long long)v, ww);
    return 0;
}
