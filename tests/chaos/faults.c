/* Faults for one node process, loaded with LD_PRELOAD: a skewed wall clock and a slow disk.
 *
 * The harness writes a small control page (struct control, a file named by CHAOS_CONTROL)
 * that this library maps shared at load time, so a fault is switched on or off while the
 * node runs, with no signal and no syscall on the node's side:
 *   - clock_offset_ns is added to every CLOCK_REALTIME reading (clock_gettime,
 *     gettimeofday, time): the wall clock the node's hybrid logical clock reads. The
 *     monotonic clock, which Raft's timers and asyncio use, is left alone, as on a host
 *     whose NTP stepped the wall clock.
 *   - fsync_delay_us is slept before every fsync and fdatasync (SQLite's commits).
 * The counters say the faults really happened, so a run cannot pass by injecting nothing.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

struct control {
    volatile int64_t clock_offset_ns;
    volatile int64_t fsync_delay_us;
    volatile uint64_t fsyncs_delayed;
    volatile uint64_t clock_reads_skewed;
};

static struct control *ctl;
static int (*real_clock_gettime)(clockid_t, struct timespec *);
static int (*real_gettimeofday)(struct timeval *, void *);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static void faults_init(void);

__attribute__((constructor)) static void faults_init(void) {
    if (real_clock_gettime != NULL)
        return;
    real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
    real_gettimeofday = dlsym(RTLD_NEXT, "gettimeofday");
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    const char *path = getenv("CHAOS_CONTROL");
    if (path == NULL)
        return;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return;
    void *page = mmap(NULL, sizeof(struct control), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (page != MAP_FAILED)
        ctl = page;
}

static int64_t offset_ns(void) {
    if (ctl == NULL || ctl->clock_offset_ns == 0)
        return 0;
    __atomic_add_fetch(&ctl->clock_reads_skewed, 1, __ATOMIC_RELAXED);
    return ctl->clock_offset_ns;
}

int clock_gettime(clockid_t clock, struct timespec *ts) {
    if (real_clock_gettime == NULL)  /* called by another library's constructor */
        faults_init();
    int rc = real_clock_gettime(clock, ts);
    if (rc != 0 || (clock != CLOCK_REALTIME && clock != CLOCK_REALTIME_COARSE))
        return rc;
    int64_t ns = (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec + offset_ns();
    ts->tv_sec = ns / 1000000000;
    ts->tv_nsec = ns % 1000000000;
    return rc;
}

int gettimeofday(struct timeval *tv, void *tz) {
    if (real_gettimeofday == NULL)
        faults_init();
    int rc = real_gettimeofday(tv, tz);
    if (rc != 0)
        return rc;
    int64_t us = (int64_t)tv->tv_sec * 1000000 + tv->tv_usec + offset_ns() / 1000;
    tv->tv_sec = us / 1000000;
    tv->tv_usec = us % 1000000;
    return rc;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out != NULL)
        *out = ts.tv_sec;
    return ts.tv_sec;
}

static void slow_disk(void) {
    if (ctl == NULL || ctl->fsync_delay_us <= 0)
        return;
    int64_t us = ctl->fsync_delay_us;
    struct timespec pause = {us / 1000000, (us % 1000000) * 1000};
    while (nanosleep(&pause, &pause) != 0 && errno == EINTR) {
    }
    __atomic_add_fetch(&ctl->fsyncs_delayed, 1, __ATOMIC_RELAXED);
}

int fsync(int fd) {
    if (real_fsync == NULL)
        faults_init();
    slow_disk();
    return real_fsync(fd);
}

int fdatasync(int fd) {
    if (real_fdatasync == NULL)
        faults_init();
    slow_disk();
    return real_fdatasync(fd);
}
