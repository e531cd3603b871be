#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "usdt_note.h"
/* An is-enabled USDT probe, as Tetragon's own usdt tester, Python, Node, PostgreSQL and libc have
 * them: provider "test", name "usdt4", one u64 argument in a register, guarded by the semaphore
 * test_usdt4_semaphore (section .probes, named in the note). The probe fires only while the
 * semaphore is non-zero, which only a tracer makes it (tetrapipe: the kernel, through the
 * uprobe's reference counter). Usage:
 *   usdt_semaphore_tester N          fire with N if enabled; exit 3 if it fired, 0 if not
 *   usdt_semaphore_tester N --lines  for each line read on stdin, print "<semaphore> <fired>"
 * Built three more ways by tests/test_policy_usdt.py: -DNO_MAIN -shared -fPIC (the probe and its
 * semaphore in a shared library, as libc's or libpython's), -DLIBRARY_PROBE (the program, calling
 * that library's maybe_fire), -DSEMAPHORE_IN_BSS (the semaphore in .bss: no file contents). */
#ifndef LIBRARY_PROBE
/* hidden, as sys/sdt.h makes it: the program never shares it with a library */
#ifdef SEMAPHORE_IN_BSS
__attribute__((visibility("hidden"))) volatile unsigned short test_usdt4_semaphore;
#else
__attribute__((visibility("hidden"), section(".probes"))) volatile unsigned short test_usdt4_semaphore;
#endif

unsigned semaphore(void)
{
    return test_usdt4_semaphore;
}

int maybe_fire(uint64_t n)
{
    if (!test_usdt4_semaphore)
        return 0;
    TP_USDT_SEM("test", "usdt4", "test_usdt4_semaphore", "8@%[a]", [a] "r"(n));
    return 1;
}
#else
int maybe_fire(uint64_t n);
unsigned semaphore(void);
#endif

#ifndef NO_MAIN
int main(int argc, char **argv)
{
    uint64_t n = argc > 1 ? strtoull(argv[1], 0, 0) : 4;
    char line[64];

    if (argc > 2 && !strcmp(argv[2], "--lines")) {
        while (fgets(line, sizeof line, stdin)) {
            unsigned sem = semaphore();
            int fired = maybe_fire(n);
            printf("%u %d\n", sem, fired);
            fflush(stdout);
        }
        return 0;
    }
    return maybe_fire(n) ? 3 : 0;
}
#endif
