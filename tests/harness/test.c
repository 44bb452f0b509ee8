/* The unit-test runner: main() of every unit-test executable. See test.h. */
#include "tests/harness/test.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define SKIP_EXIT 77
#define SKIP_FILE ".test-skip-reason"

struct test_case {
    const char *name;
    test_fn fn;
    const char *file;
    int line;
};

static struct test_case *cases;
static size_t n_cases;
static char tmpdir[4096];
static char pathbuf[4096 + 256];

void test_register(const char *name, test_fn fn, const char *file, int line)
{
    struct test_case *c = realloc(cases, (n_cases + 1) * sizeof(*c));
    if (!c) {
        fprintf(stderr, "test harness: out of memory registering %s\n", name);
        abort();
    }
    cases = c;
    cases[n_cases++] = (struct test_case){name, fn, file, line};
}

void test_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("# %s:%d: ", file, line);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    fflush(stderr);
    _exit(1);
}

void test_skip(const char *reason)
{
    snprintf(pathbuf, sizeof(pathbuf), "%s/%s", tmpdir, SKIP_FILE);
    FILE *f = fopen(pathbuf, "w");
    if (f) {
        fputs(reason, f);
        fclose(f);
    }
    fflush(stdout);
    _exit(SKIP_EXIT);
}

const char *test_tmpdir(void)
{
    return tmpdir;
}

const char *test_write_file(const char *name, const char *content, size_t len)
{
    if (len == (size_t)-1)
        len = strlen(content);
    snprintf(pathbuf, sizeof(pathbuf), "%s/%s", tmpdir, name);
    FILE *f = fopen(pathbuf, "wb");
    if (!f)
        test_fail(__FILE__, __LINE__, "cannot create %s: %s", pathbuf, strerror(errno));
    if ((len && fwrite(content, 1, len, f) != len) || fclose(f) != 0)
        test_fail(__FILE__, __LINE__, "cannot write %s", pathbuf);
    return pathbuf;
}

void test_socketpair(int fds[2])
{
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) < 0)
        test_fail(__FILE__, __LINE__, "socketpair: %s", strerror(errno));
}

int test_contains(const char *haystack, const char *needle)
{
    return haystack && needle && strstr(haystack, needle) != NULL;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static int selected(const struct test_case *c, int argc, char **argv)
{
    if (argc <= 1)
        return 1;
    for (int i = 1; i < argc; i++)
        if (strstr(c->name, argv[i]))
            return 1;
    return 0;
}

/* Runs one test in a child process; returns 0 pass, 1 fail, 2 skip. */
static int run_one(const struct test_case *c, size_t idx, unsigned timeout)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof(tmpdir), "%s/berth-test-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpdir)) {
        printf("not ok %zu - %s # cannot create a temporary directory: %s\n", idx, c->name,
               strerror(errno));
        return 1;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        printf("not ok %zu - %s # fork: %s\n", idx, c->name, strerror(errno));
        nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        return 1;
    }
    if (pid == 0) {
        setenv("TEST_TMPDIR", tmpdir, 1);
        alarm(timeout);
        c->fn();
        fflush(stdout);
        fflush(stderr);
        exit(0); /* exit, not _exit: the leak checker runs at exit */
    }
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    int result;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        printf("ok %zu - %s\n", idx, c->name);
        result = 0;
    } else if (WIFEXITED(status) && WEXITSTATUS(status) == SKIP_EXIT) {
        char reason[512] = "skipped";
        snprintf(pathbuf, sizeof(pathbuf), "%s/%s", tmpdir, SKIP_FILE);
        FILE *f = fopen(pathbuf, "r");
        if (f) {
            size_t n = fread(reason, 1, sizeof(reason) - 1, f);
            reason[n] = '\0';
            fclose(f);
            for (char *p = reason; *p; p++)
                if (*p == '\n')
                    *p = ' ';
        }
        printf("ok %zu - %s # SKIP %s\n", idx, c->name, reason);
        result = 2;
    } else if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        printf("not ok %zu - %s # %s (%s:%d)\n", idx, c->name,
               sig == SIGALRM ? "timed out" : strsignal(sig), c->file, c->line);
        result = 1;
    } else {
        printf("not ok %zu - %s # exit status %d (%s:%d)\n", idx, c->name, WEXITSTATUS(status),
               c->file, c->line);
        result = 1;
    }
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    fflush(stdout);
    return result;
}

int main(int argc, char **argv)
{
    unsigned timeout = 30;
    const char *t = getenv("TEST_TIMEOUT");
    if (t && atoi(t) > 0)
        timeout = (unsigned)atoi(t);
    if (argc == 2 && strcmp(argv[1], "--list") == 0) {
        for (size_t i = 0; i < n_cases; i++)
            printf("%s\n", cases[i].name);
        return 0;
    }
    size_t n = 0;
    for (size_t i = 0; i < n_cases; i++)
        n += selected(&cases[i], argc, argv);
    printf("1..%zu\n", n);
    size_t idx = 0, passed = 0, failed = 0, skipped = 0;
    for (size_t i = 0; i < n_cases; i++) {
        if (!selected(&cases[i], argc, argv))
            continue;
        int r = run_one(&cases[i], ++idx, timeout);
        passed += r == 0;
        failed += r == 1;
        skipped += r == 2;
    }
    printf("# %zu passed, %zu failed, %zu skipped\n", passed, failed, skipped);
    free(cases);
    return failed || n == 0 ? 1 : 0;
}
