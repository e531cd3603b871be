#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "usdt_note.h"
/* Our stand-in for the tester program Tetragon's library policy usdt-set.yaml names
 * (/home/jolsa/tetragon/contrib/tester-progs/usdt-override): one USDT probe, provider "tetragon",
 * name "test_4B", three int32 arguments: a result (in memory, where a tracer's Set action would
 * write it) and the two numbers given on the command line (in registers). Usage:
 * usdt_override_tester A B; exits with the result, 0 unless a tracer changed it at the probe. */
int main(int argc, char **argv)
{
    volatile int32_t result = 0;
    int32_t a, b;

    if (argc != 3)
        return 255;
    a = atoi(argv[1]);
    b = atoi(argv[2]);
    TP_USDT("tetragon", "test_4B", "-4@%[r] -4@%[a] -4@%[b]", [r] "m"(result), [a] "r"(a), [b] "r"(b));
    printf("test_4B %d %d %d\n", result, a, b);
    return result;
}
