/* Load generators for the benchmarks (compiled by bench/common.py with the system cc).
 *
 *   workload open  PATH  MAX_OPS SECONDS RATE   open()+close() PATH in a loop
 *   workload write PATH  MAX_OPS SECONDS RATE   write() one byte to PATH (opened once) in a loop
 *   workload exec  PATH  MAX_OPS SECONDS RATE   fork()+execve(PATH)+waitpid() in a loop
 *
 * RATE is operations per second (0 = as fast as it goes). Stops after MAX_OPS operations or
 * SECONDS, whichever comes first. Prints one line: "<ops> <elapsed ns> <pid>".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: %s open|write|exec PATH MAX_OPS SECONDS RATE\n", argv[0]);
        return 2;
    }
    const char *mode = argv[1], *path = argv[2];
    long long max_ops = atoll(argv[3]);
    double seconds = atof(argv[4]);
    double rate = atof(argv[5]);
    long long t0 = now_ns(), deadline = t0 + (long long)(seconds * 1e9);
    long long ops = 0;
    int wfd = -1;
    char *const eargv[] = {(char *)path, NULL};
    char *const eenv[] = {NULL};
    int step = rate > 0 && rate < 2000 ? 1 : 64;

    if (!strcmp(mode, "write")) {
        wfd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (wfd < 0) { perror("open"); return 1; }
    } else if (strcmp(mode, "open") && strcmp(mode, "exec")) {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    while (ops < max_ops) {
        if (ops % step == 0) {
            long long t = now_ns();
            if (t >= deadline)
                break;
            if (rate > 0) {
                long long due = t0 + (long long)(ops / rate * 1e9);
                if (due > t) {
                    struct timespec ts = {(due - t) / 1000000000LL, (due - t) % 1000000000LL};
                    nanosleep(&ts, NULL);
                }
            }
        }
        if (mode[0] == 'o') {
            int fd = open(path, O_RDONLY);
            if (fd >= 0)
                close(fd);
        } else if (mode[0] == 'w') {
            if (write(wfd, "x", 1) < 0) { perror("write"); return 1; }
            if ((ops & 0xFFFF) == 0xFFFF)
                ftruncate(wfd, 0);
        } else {
            pid_t c = fork();
            if (c == 0) {
                execve(path, eargv, eenv);
                _exit(127);
            }
            if (c < 0) { perror("fork"); return 1; }
            int st;
            waitpid(c, &st, 0);
        }
        ops++;
    }
    printf("%lld %lld %d\n", ops, now_ns() - t0, getpid());
    return 0;
}
