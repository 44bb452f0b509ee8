/* An LD_PRELOAD shim for tests: counts the heap allocations a process makes, so that a test can
 * check that a path allocates nothing (tests/integration/test_hot_path.py).
 *
 *   BERTH_ALLOC_COUNT_FILE=F    after every counted allocation, F holds the count so far (one
 *                               decimal number and a newline, rewritten in place)
 *   BERTH_ALLOC_COUNT_THREAD=P  count only threads whose name starts with P (e.g. berth-loop)
 *
 * Counted: malloc, calloc, realloc, reallocarray, posix_memalign, aligned_alloc, memalign,
 * valloc, pvalloc (free is not). Each wraps glibc's own __libc_* entry point, so nothing here
 * allocates or recurses. Not for sanitizer builds: they bring their own allocator. */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);
extern void *__libc_memalign(size_t align, size_t n);

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned long count;
static int out_fd = -2; /* -2: not opened yet; -1: no file */
static const char *thread_prefix;
static size_t thread_prefix_len;

static int counted_thread(void)
{
    if (!thread_prefix_len)
        return 1;
    char name[17] = "";
    if (prctl(PR_GET_NAME, name, 0, 0, 0) != 0)
        return 0;
    return strncmp(name, thread_prefix, thread_prefix_len) == 0;
}

static void note(void)
{
    int saved = errno;
    pthread_mutex_lock(&mu);
    if (out_fd == -2) {
        const char *path = getenv("BERTH_ALLOC_COUNT_FILE");
        out_fd = path ? open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644) : -1;
        thread_prefix = getenv("BERTH_ALLOC_COUNT_THREAD");
        thread_prefix_len = thread_prefix ? strlen(thread_prefix) : 0;
    }
    if (counted_thread()) {
        count++;
        if (out_fd >= 0) {
            char buf[24];
            size_t i = sizeof(buf);
            buf[--i] = '\n';
            unsigned long n = count;
            do {
                buf[--i] = (char)('0' + n % 10);
                n /= 10;
            } while (n);
            /* fixed width: a shorter number never leaves digits of a longer one behind */
            while (i > 0)
                buf[--i] = ' ';
            if (pwrite(out_fd, buf, sizeof(buf), 0) < 0) {
                /* nothing to do: the test sees a stale count and fails on it */
            }
        }
    }
    pthread_mutex_unlock(&mu);
    errno = saved;
}

void *malloc(size_t n)
{
    note();
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t size)
{
    note();
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t n)
{
    note();
    return __libc_realloc(p, n);
}

void *reallocarray(void *p, size_t n, size_t size)
{
    if (size && n > (size_t)-1 / size) {
        errno = ENOMEM;
        return NULL;
    }
    note();
    return __libc_realloc(p, n * size);
}

void *memalign(size_t align, size_t n)
{
    note();
    return __libc_memalign(align, n);
}

void *aligned_alloc(size_t align, size_t n)
{
    note();
    return __libc_memalign(align, n);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    if (align < sizeof(void *) || (align & (align - 1)))
        return EINVAL;
    note();
    void *p = __libc_memalign(align, n);
    if (!p)
        return ENOMEM;
    *out = p;
    return 0;
}

void *valloc(size_t n)
{
    note();
    return __libc_memalign((size_t)sysconf(_SC_PAGESIZE), n);
}

void *pvalloc(size_t n)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    note();
    return __libc_memalign(page, (n + page - 1) & ~(page - 1));
}
