/* tests/test_stack_traces.py: openat(AT_FDCWD, argv[1]) by a raw syscall instruction inside
 * tetrapipe_stack_leaf (built with frame pointers), so the user stack's innermost frame is in that
 * function and the next one in main; then, with argv[2], waits for a line on stdin (the collector
 * symbolises the user stack while the process lives) */
#include <fcntl.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

__attribute__((noinline)) long tetrapipe_stack_leaf(const char *path)
{
    long ret;
    register long r10 __asm__("r10") = 0;
    __asm__ volatile("syscall" : "=a"(ret) : "0"((long)SYS_openat), "D"((long)AT_FDCWD), "S"(path),
                     "d"((long)O_RDONLY), "r"(r10) : "rcx", "r11", "memory");
    __asm__ volatile("" ::: "memory");   /* not a tail position: the frame stays */
    return ret;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    tetrapipe_stack_leaf(argv[1]);
    if (argc > 2) {
        char line[16];
        if (!fgets(line, sizeof(line), stdin))
            return 0;
    }
    return 0;
}
