#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "usdt_note.h"
/* Our stand-in for the tester program Tetragon's library policy usdt.yaml names
 * (/home/jolsa/tetragon/contrib/tester-progs/usdt): one USDT probe, provider "test", name "usdt3",
 * three arguments: a u64 (the policy's index 0, type uint64) in a register, an s64 in memory and a
 * u64 constant-derived value in a register. Usage: usdt_tester [N]; fires once with N (default 3),
 * prints what it fired with, exits 0. Built by scripts/count-policies.py --with-named-files and
 * tests/test_policy_usdt.py. Tetragon's own tester guards its probe with a semaphore (an is-enabled
 * probe), which tetrapipe serves too (usdt_semaphore_tester.c tests that); ours has none. */
int main(int argc, char **argv)
{
    uint64_t first = argc > 1 ? strtoull(argv[1], 0, 0) : 3;
    int64_t second = -(int64_t)first;
    uint64_t third = first * 2 + 1;

    TP_USDT("test", "usdt3", "8@%[a] -8@%[b] 8@%[c]", [a] "r"(first), [b] "m"(second), [c] "r"(third));
    printf("usdt3 %llu %lld %llu\n", (unsigned long long)first, (long long)second, (unsigned long long)third);
    return 0;
}
