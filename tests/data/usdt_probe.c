#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
/* One USDT probe (provider "test", name "usdt3", arguments: a u64 in a register, an int32 in
 * memory), written as the .note.stapsdt entry sys/sdt.h emits (version 3 note) since sys/sdt.h
 * (systemtap-sdt-dev) is not installed here; for tests/test_policy_usdt.py. Exits 0 unless killed. */
#define TP_USDT2(provider, name, a1, a2)                                              \
    __asm__ __volatile__(                                                             \
        "990: nop\n"                                                                  \
        ".pushsection .note.stapsdt,\"?\",\"note\"\n"                                 \
        ".balign 4\n"                                                                 \
        ".4byte 992f-991f, 994f-993f, 3\n"                                            \
        "991: .asciz \"stapsdt\"\n"                                                   \
        "992: .balign 4\n"                                                            \
        "993: .8byte 990b\n"                                                          \
        ".8byte _.stapsdt.base\n"                                                     \
        ".8byte 0\n"                                                                  \
        ".asciz \"" provider "\"\n"                                                   \
        ".asciz \"" name "\"\n"                                                       \
        ".asciz \"8@%[x1] -4@%[x2]\"\n"                                               \
        "994: .balign 4\n"                                                            \
        ".popsection\n"                                                               \
        ".ifndef _.stapsdt.base\n"                                                    \
        ".pushsection .stapsdt.base,\"aG\",\"progbits\",.stapsdt.base,comdat\n"       \
        ".weak _.stapsdt.base\n"                                                      \
        ".hidden _.stapsdt.base\n"                                                    \
        "_.stapsdt.base: .space 1\n"                                                  \
        ".size _.stapsdt.base, 1\n"                                                   \
        ".popsection\n"                                                               \
        ".endif\n"                                                                    \
        :: [x1] "r"((uint64_t)(a1)), [x2] "m"(a2))

int main(int argc, char **argv)
{
    uint64_t v = argc > 1 ? strtoull(argv[1], 0, 0) : 0;
    volatile int32_t w = argc > 2 ? atoi(argv[2]) : 0;
    int32_t ww = w;
    TP_USDT2("test", "usdt3", v, ww);
    printf("fired %llu %d\n", (unsigned long long)v, ww);
    return 0;
}
