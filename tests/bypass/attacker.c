/* The bypass suite's attacker (tests/bypass/): one way to reach a protected file, socket or
 * syscall per mode, each a different road through the kernel. Built by the test with gcc into a
 * temp dir (-no-pie: the int 0x80 modes pass pointers that must sit below 4 GiB).
 *   attacker MODE ARGS...   exit 0 = the operation was done, 1 = the kernel refused it
 * Writes always append "X" (one byte) unless the mode says otherwise. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <linux/openat2.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/sched.h>

static char payload[] = "X";
static char lowbuf[4096];      /* below 4 GiB (-no-pie): for int 0x80 */
static char lowbuf2[4096];

static int die(const char *what) { fprintf(stderr, "attacker: %s: %s\n", what, strerror(errno)); return 1; }

static int append_fd(const char *path) { return open(path, O_WRONLY | O_APPEND); }

static int wr(int fd) { return write(fd, payload, 1) == 1 ? 0 : die("write"); }

/* ---- int 0x80 from a 64-bit binary: the i386 syscall table ---- */
static long sys32(long nr, long a, long b, long c) {
    long ret;
    asm volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
    return ret;
}

/* ---- io_uring with raw syscalls ---- */
struct ring {
    int fd;
    unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
};

static unsigned ring_flags;   /* IORING_SETUP_* of the ring (SQPOLL: the kernel thread iou-sqp submits) */

static int ring_init(struct ring *r) {
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = ring_flags;
    if (ring_flags & IORING_SETUP_SQPOLL) p.sq_thread_idle = 1000;
    r->fd = syscall(__NR_io_uring_setup, 4, &p);
    if (r->fd < 0) return die("io_uring_setup");
    size_t sqsz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cqsz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (p.features & IORING_FEAT_SINGLE_MMAP) sqsz = cqsz = sqsz > cqsz ? sqsz : cqsz;
    char *sq = mmap(0, sqsz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQ_RING);
    if (sq == MAP_FAILED) return die("mmap sq");
    char *cq = sq;
    if (!(p.features & IORING_FEAT_SINGLE_MMAP)) {
        cq = mmap(0, cqsz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_CQ_RING);
        if (cq == MAP_FAILED) return die("mmap cq");
    }
    r->sqes = mmap(0, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED) return die("mmap sqes");
    r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)(sq + p.sq_off.array);
    r->cq_head = (unsigned *)(cq + p.cq_off.head);
    r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    return 0;
}

/* submit one sqe, wait for its completion, return cqe.res */
static int ring_run(struct ring *r, struct io_uring_sqe *sqe) {
    unsigned tail = *r->sq_tail, idx = tail & *r->sq_mask;
    r->sqes[idx] = *sqe;
    r->sq_array[idx] = idx;
    __atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
    if (syscall(__NR_io_uring_enter, r->fd, 1, 1, IORING_ENTER_GETEVENTS, 0, 0) < 0) return -errno;
    unsigned head = *r->cq_head;
    if (head == __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE)) return -EAGAIN;
    int res = r->cqes[head & *r->cq_mask].res;
    __atomic_store_n(r->cq_head, head + 1, __ATOMIC_RELEASE);
    return res;
}

static int uring_open(struct ring *r, const char *path, int flags) {
    struct io_uring_sqe s;
    memset(&s, 0, sizeof(s));
    s.opcode = IORING_OP_OPENAT;
    s.fd = AT_FDCWD;
    s.addr = (unsigned long)path;
    s.open_flags = flags;
    return ring_run(r, &s);
}

static int uring_rw(struct ring *r, int op, int fd, void *buf, unsigned len) {
    struct io_uring_sqe s;
    memset(&s, 0, sizeof(s));
    s.opcode = op;
    s.fd = fd;
    s.addr = (unsigned long)buf;
    s.len = len;
    s.off = (unsigned long long)-1;   /* the file position (append) */
    return ring_run(r, &s);
}

/* submit n sqes in one io_uring_enter (linked ones run in order), wait for n completions;
 * the first failing cqe.res, else the last one */
static int ring_runv(struct ring *r, struct io_uring_sqe *sqe, unsigned n) {
    unsigned tail = *r->sq_tail;
    for (unsigned i = 0; i < n; i++) {
        unsigned idx = (tail + i) & *r->sq_mask;
        r->sqes[idx] = sqe[i];
        r->sq_array[idx] = idx;
    }
    __atomic_store_n(r->sq_tail, tail + n, __ATOMIC_RELEASE);
    int sqpoll = (ring_flags & IORING_SETUP_SQPOLL) != 0;
    unsigned fl = IORING_ENTER_GETEVENTS | (sqpoll ? IORING_ENTER_SQ_WAKEUP : 0);
    unsigned submit = sqpoll ? 0 : n, got = 0;
    int res = 0, bad = 0;
    while (got < n) {
        if (syscall(__NR_io_uring_enter, r->fd, submit, n - got, fl, 0, 0) < 0) return -errno;
        submit = 0;
        unsigned head = *r->cq_head;
        while (head != __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE)) {
            int v = r->cqes[head & *r->cq_mask].res;
            if (v < 0 && !bad) bad = v;
            res = v;
            head++;
            got++;
        }
        __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
    }
    return bad ? bad : res;
}

/* io_uring roads for a file: uring_MODE PATH with MODE one of
 *   link_write / link_read: OPENAT + WRITE/READ linked (IOSQE_IO_LINK) in one submission, the
 *     fd predicted (the lowest free one);
 *   sqpoll_write: open(2), the WRITE submitted by the kernel's SQPOLL thread;
 *   async_write: open(2), the WRITE punted to an io-wq worker (IOSQE_ASYNC);
 *   warm_write: open(2), an io-wq worker started first (a NOP with IOSQE_ASYNC), then a plain
 *     WRITE: where the file refuses non-blocking writes it is punted to that live worker;
 *   fixed_write: open(2), the fd registered, WRITE on the fixed file (IOSQE_FIXED_FILE) */
static int uring_road(const char *m, const char *t, const char *payload) {
    struct ring r;
    struct io_uring_sqe q[2];
    char b[64];
    memset(q, 0, sizeof(q));
    if (!strcmp(m, "uring_sqpoll_write")) ring_flags = IORING_SETUP_SQPOLL;
    if (ring_init(&r)) return 1;
    int rd = strstr(m, "read") != 0;
    if (!strncmp(m, "uring_link_", 11)) {
        int f = open("/dev/null", O_RDONLY);     /* the next free fd: OPENAT's */
        close(f);
        q[0].opcode = IORING_OP_OPENAT;
        q[0].fd = AT_FDCWD;
        q[0].addr = (unsigned long)t;
        q[0].open_flags = rd ? O_RDONLY : O_WRONLY | O_APPEND;
        q[0].flags = IOSQE_IO_LINK;
        q[1].opcode = rd ? IORING_OP_READ : IORING_OP_WRITE;
        q[1].fd = f;
        q[1].addr = rd ? (unsigned long)b : (unsigned long)payload;
        q[1].len = rd ? sizeof(b) : 1;
        q[1].off = (unsigned long long)-1;
        int n = ring_runv(&r, q, 2);
        if (n < 0) { errno = -n; return die(m); }
        return 0;
    }
    int f = open(t, O_WRONLY | O_APPEND);
    if (f < 0) return die("open");
    q[0].opcode = IORING_OP_WRITE;
    q[0].fd = f;
    q[0].addr = (unsigned long)payload;
    q[0].len = 1;
    q[0].off = (unsigned long long)-1;
    if (!strcmp(m, "uring_async_write")) q[0].flags = IOSQE_ASYNC;
    if (!strcmp(m, "uring_warm_write")) {
        struct io_uring_sqe nop;
        memset(&nop, 0, sizeof(nop));
        nop.opcode = IORING_OP_NOP;
        nop.flags = IOSQE_ASYNC;
        int w = ring_runv(&r, &nop, 1);
        if (w < 0) { errno = -w; return die("IORING_OP_NOP"); }
    }
    if (!strcmp(m, "uring_fixed_write")) {
        if (syscall(__NR_io_uring_register, r.fd, IORING_REGISTER_FILES, &f, 1) < 0) return die("register");
        q[0].fd = 0;
        q[0].flags = IOSQE_FIXED_FILE;
    }
    int n = ring_runv(&r, q, 1);
    if (n != 1) { errno = n < 0 ? -n : EIO; return die(m); }
    return 0;
}

/* ---- the racing thread: flips the path under the kernel's feet ---- */
static char race_path[512];
static char race_good[512], race_bad[512];
static volatile int race_stop;
static void *flipper(void *arg) {
    (void)arg;
    /* the two names differ in their last byte: flip it, about half the time each */
    size_t k = strlen(race_good) - 1;
    char good = race_good[k], bad = race_bad[k];
    while (!race_stop) {
        ((volatile char *)race_path)[k] = bad;
        for (volatile int i = 0; i < 64; i++)
            ;
        ((volatile char *)race_path)[k] = good;
        for (volatile int i = 0; i < 64; i++)
            ;
    }
    return 0;
}

static int child_write(void *arg) { int fd = append_fd(arg); return fd < 0 ? 1 : wr(fd); }

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: attacker MODE ARGS...\n"); return 2; }
    const char *m = argv[1], *t = argv[2];
    int fd, src;
    if (!strcmp(m, "open")) {                 /* open(PATH) as given: .., //, symlink, links, binds */
        if ((fd = append_fd(t)) < 0) return die("open");
        return wr(fd);
    }
    if (!strcmp(m, "relative")) {             /* relative DIR NAME: chdir, then open(NAME) */
        if (chdir(t) < 0) return die("chdir");
        if ((fd = append_fd(argv[3])) < 0) return die("open");
        return wr(fd);
    }
    if (!strcmp(m, "dirfd")) {                /* dirfd DIR NAME: openat(dirfd, NAME) */
        int d = open(t, O_PATH | O_DIRECTORY);
        if ((fd = openat(d, argv[3], O_WRONLY | O_APPEND)) < 0) return die("openat");
        return wr(fd);
    }
    if (!strcmp(m, "openat2")) {              /* openat2 DIR NAME with RESOLVE_BENEATH|NO_MAGICLINKS */
        int d = open(t, O_PATH | O_DIRECTORY);
        struct open_how how = {.flags = O_WRONLY | O_APPEND,
                               .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS};
        if ((fd = syscall(__NR_openat2, d, argv[3], &how, sizeof(how))) < 0) return die("openat2");
        return wr(fd);
    }
    if (!strcmp(m, "creat")) {                /* creat(PATH): truncates at the open */
        if ((fd = creat(t, 0644)) < 0) return die("creat");
        return wr(fd);
    }
    if (!strcmp(m, "otrunc")) {               /* open(O_TRUNC) and nothing else */
        return open(t, O_WRONLY | O_TRUNC) < 0 ? die("open O_TRUNC") : 0;
    }
    if (!strcmp(m, "truncate")) return truncate(t, 0) < 0 ? die("truncate") : 0;
    if (!strcmp(m, "ftruncate")) {
        if ((fd = open(t, O_WRONLY)) < 0) return die("open");
        return ftruncate(fd, 0) < 0 ? die("ftruncate") : 0;
    }
    if (!strcmp(m, "rename")) {               /* rename SRC PATH: replace the file */
        return rename(argv[3], t) < 0 ? die("rename") : 0;
    }
    if (!strcmp(m, "pwrite")) {
        if ((fd = open(t, O_WRONLY)) < 0) return die("open");
        struct stat st; fstat(fd, &st);
        return pwrite(fd, payload, 1, st.st_size) == 1 ? 0 : die("pwrite");
    }
    if (!strcmp(m, "writev")) {
        struct iovec v = {payload, 1};
        if ((fd = append_fd(t)) < 0) return die("open");
        return writev(fd, &v, 1) == 1 ? 0 : die("writev");
    }
    if (!strcmp(m, "pwritev2")) {
        struct iovec v = {payload, 1};
        if ((fd = append_fd(t)) < 0) return die("open");
        return pwritev2(fd, &v, 1, -1, 0) == 1 ? 0 : die("pwritev2");
    }
    if (!strcmp(m, "sendfile") || !strcmp(m, "splice") || !strcmp(m, "copy_file_range")) {
        /* from SRC (argv[3], one byte "X") into PATH */
        if ((fd = append_fd(t)) < 0 || (src = open(argv[3], O_RDONLY)) < 0) return die("open");
        if (!strcmp(m, "sendfile")) return sendfile(fd, src, 0, 1) == 1 ? 0 : die("sendfile");
        if (!strcmp(m, "copy_file_range")) {
            /* O_APPEND targets are refused (EBADF): open without it, at the end */
            close(fd);
            if ((fd = open(t, O_WRONLY)) < 0) return die("open");
            loff_t out = lseek(fd, 0, SEEK_END);
            return copy_file_range(src, 0, fd, &out, 1, 0) == 1 ? 0 : die("copy_file_range");
        }
        int p[2];
        /* O_APPEND targets are refused (EINVAL): open without it, at the end */
        close(fd);
        if ((fd = open(t, O_WRONLY)) < 0) return die("open");
        loff_t out = lseek(fd, 0, SEEK_END);
        if (pipe(p) < 0 || write(p[1], payload, 1) != 1) return die("pipe");
        return splice(p[0], 0, fd, &out, 1, 0) == 1 ? 0 : die("splice");
    }
    if (!strcmp(m, "mmap")) {                 /* mmap the file shared and store into it */
        if ((fd = open(t, O_RDWR)) < 0) return die("open");
        char *p = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) return die("mmap");
        p[0] = 'X';
        return msync(p, 4096, MS_SYNC) < 0 ? die("msync") : 0;
    }
    if (!strcmp(m, "read")) {                 /* read PATH (read policies) */
        char b[64];
        if ((fd = open(t, O_RDONLY)) < 0) return die("open");
        return read(fd, b, sizeof(b)) < 0 ? die("read") : 0;
    }
    if (!strcmp(m, "nonresident")) {          /* the path in a file page not yet mapped in */
        char tmpl[] = "/tmp/tp-bypass-nrXXXXXX";
        int f = mkstemp(tmpl);
        if (f < 0 || ftruncate(f, 8192) < 0 || pwrite(f, t, strlen(t) + 1, 4096) < 0) return die("mkstemp");
        char *p = mmap(0, 8192, PROT_READ, MAP_PRIVATE, f, 0);
        unlink(tmpl);
        if (p == MAP_FAILED) return die("mmap");
        int flags = argc > 3 && !strcmp(argv[3], "read") ? O_RDONLY : O_WRONLY | O_APPEND;
        if ((fd = open(p + 4096, flags)) < 0) return die("open");
        if (flags == O_RDONLY) { char b[8]; return read(fd, b, sizeof(b)) < 0 ? die("read") : 0; }
        return wr(fd);
    }
    if (!strcmp(m, "race")) {                 /* race PATH DECOY TRIES: open while a thread flips */
        int tries = atoi(argv[4]), landed = 0;
        strncpy(race_good, t, sizeof(race_good) - 1);
        strncpy(race_bad, argv[3], sizeof(race_bad) - 1);
        memcpy(race_path, race_good, sizeof(race_path));
        pthread_t th;
        pthread_create(&th, 0, flipper, 0);
        struct timespec t0, now;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (int i = 0; i < tries; i++) {
            struct timespec w0, w1;
            clock_gettime(CLOCK_MONOTONIC, &w0);
            fd = open(race_path, O_WRONLY | O_APPEND);
            clock_gettime(CLOCK_MONOTONIC, &w1);
            if (fd >= 0) {
                struct stat a, b;
                if (fstat(fd, &a) == 0 && stat(t, &b) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev) {
                    landed++;
                    /* the open's window in kernel time (CLOCK_MONOTONIC = bpf_ktime_get_ns) */
                    printf("w %lld %lld\n", w0.tv_sec * 1000000000LL + w0.tv_nsec,
                           w1.tv_sec * 1000000000LL + w1.tv_nsec);
                    if (write(fd, payload, 1) != 1) return die("write");
                }
                close(fd);
            }
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec - t0.tv_sec > 20) break;   /* bounded time */
        }
        race_stop = 1;
        pthread_join(th, 0);
        printf("landed %d\n", landed);
        return 0;
    }
    if (!strncmp(m, "uring_link_", 11) || !strcmp(m, "uring_sqpoll_write") || !strcmp(m, "uring_async_write")
        || !strcmp(m, "uring_warm_write")
        || !strcmp(m, "uring_fixed_write"))
        return uring_road(m, t, payload);
    if (!strcmp(m, "uring_write")) {          /* io_uring OPENAT, then WRITE */
        struct ring r;
        if (ring_init(&r)) return 1;
        int f = uring_open(&r, t, O_WRONLY | O_APPEND);
        if (f < 0) { errno = -f; return die("IORING_OP_OPENAT"); }
        int n = uring_rw(&r, IORING_OP_WRITE, f, payload, 1);
        if (n != 1) { errno = n < 0 ? -n : EIO; return die("IORING_OP_WRITE"); }
        return 0;
    }
    if (!strcmp(m, "uring_read")) {           /* io_uring OPENAT, then READ */
        struct ring r;
        char b[64];
        if (ring_init(&r)) return 1;
        int f = uring_open(&r, t, O_RDONLY);
        if (f < 0) { errno = -f; return die("IORING_OP_OPENAT"); }
        int n = uring_rw(&r, IORING_OP_READ, f, b, sizeof(b));
        if (n < 0) { errno = -n; return die("IORING_OP_READ"); }
        return 0;
    }
    if (!strcmp(m, "uring_connect")) {        /* uring_connect ADDR PORT: IORING_OP_CONNECT + SEND */
        struct ring r;
        if (ring_init(&r)) return 1;
        int s = socket(AF_INET, SOCK_STREAM, 0);
        static struct sockaddr_in sa;
        sa.sin_family = AF_INET;
        sa.sin_port = htons(atoi(argv[3]));
        inet_pton(AF_INET, t, &sa.sin_addr);
        struct io_uring_sqe q;
        memset(&q, 0, sizeof(q));
        q.opcode = IORING_OP_CONNECT;
        q.fd = s;
        q.addr = (unsigned long)&sa;
        q.off = sizeof(sa);
        int res = ring_run(&r, &q);
        if (res < 0) { errno = -res; return die("IORING_OP_CONNECT"); }
        memset(&q, 0, sizeof(q));
        q.opcode = IORING_OP_SEND;
        q.fd = s;
        q.addr = (unsigned long)payload;
        q.len = 1;
        res = ring_run(&r, &q);
        if (res != 1) { errno = res < 0 ? -res : EIO; return die("IORING_OP_SEND"); }
        return 0;
    }
    if (!strcmp(m, "int80_connect")) {       /* int80_connect ADDR PORT: i386 socketcall(SYS_CONNECT) */
        static struct sockaddr_in sa;        /* below 4 GiB (-no-pie) */
        static unsigned int sargs[3];
        int s = socket(AF_INET, SOCK_STREAM, 0);
        sa.sin_family = AF_INET;
        sa.sin_port = htons(atoi(argv[3]));
        inet_pton(AF_INET, t, &sa.sin_addr);
        sargs[0] = s;
        sargs[1] = (unsigned int)(unsigned long)&sa;
        sargs[2] = sizeof(sa);
        long r = sys32(102, 3, (long)sargs, 0);
        if (r < 0) { errno = -r; return die("int 0x80 socketcall connect"); }
        return send(s, payload, 1, 0) == 1 ? 0 : die("send");
    }
    if (!strcmp(m, "int80_write")) {          /* i386 open(5) + write(4) through int 0x80 */
        strncpy(lowbuf, t, sizeof(lowbuf) - 1);
        lowbuf2[0] = 'X';
        long f = sys32(5, (long)lowbuf, O_WRONLY | O_APPEND, 0);
        if (f < 0) { errno = -f; return die("int 0x80 open"); }
        long n = sys32(4, f, (long)lowbuf2, 1);
        if (n != 1) { errno = n < 0 ? -n : EIO; return die("int 0x80 write"); }
        return 0;
    }
    if (!strcmp(m, "int80_read")) {           /* i386 open(5) + read(3) */
        strncpy(lowbuf, t, sizeof(lowbuf) - 1);
        long f = sys32(5, (long)lowbuf, O_RDONLY, 0);
        if (f < 0) { errno = -f; return die("int 0x80 open"); }
        long n = sys32(3, f, (long)lowbuf2, 64);
        if (n < 0) { errno = -n; return die("int 0x80 read"); }
        return 0;
    }
    if (!strcmp(m, "int80")) {                /* int80 NR [A B C]: any i386 syscall, integer args */
        long a = argc > 3 ? strtol(argv[3], 0, 0) : 0, b = argc > 4 ? strtol(argv[4], 0, 0) : 0;
        long c = argc > 5 ? strtol(argv[5], 0, 0) : 0;
        long r = sys32(strtol(t, 0, 0), a, b, c);
        printf("ret %ld\n", r);
        return 0;
    }
    if (!strcmp(m, "sys64")) {                /* sys64 NR [A B C]: any x86-64 syscall, integer args */
        long a = argc > 3 ? strtol(argv[3], 0, 0) : 0, b = argc > 4 ? strtol(argv[4], 0, 0) : 0;
        long c = argc > 5 ? strtol(argv[5], 0, 0) : 0;
        printf("ret %ld\n", syscall(strtol(t, 0, 0), a, b, c));
        return 0;
    }
    if (!strcmp(m, "connect")) {              /* connect ADDR PORT, send one byte */
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
        inet_pton(AF_INET, t, &sa.sin_addr);
        if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) return die("connect");
        return send(s, payload, 1, 0) == 1 ? 0 : die("send");
    }
    if (!strcmp(m, "clone3")) {               /* clone3 without exec; the child writes PATH */
        static char stack[65536];
        struct clone_args ca;
        memset(&ca, 0, sizeof(ca));
        ca.exit_signal = SIGCHLD;
        long pid = syscall(__NR_clone3, &ca, sizeof(ca));
        if (pid < 0) return die("clone3");
        if (pid == 0) _exit(child_write((void *)t));
        (void)stack;
        int st;
        waitpid(pid, &st, 0);
        printf("child %ld status %d\n", pid, st);
        return WIFSIGNALED(st) ? 128 + WTERMSIG(st) : WEXITSTATUS(st);
    }
    fprintf(stderr, "attacker: unknown mode %s\n", m);
    return 2;
}
