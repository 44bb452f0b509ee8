/* berth-wakeprobe: what one wake-up costs on this machine, the floor under every latency a
 * proxy adds. Two processes pinned to CPUs A and B pass a byte back and forth over two pipes;
 * each round trip is two wake-ups of a sleeping process (the other side blocks in read()).
 * Measured for A<->B (another CPU: an inter-processor interrupt, on a VM a virtual CPU woken
 * by the hypervisor) and A<->A (the same CPU: a context switch). A proxied request crosses
 * between the load's and the proxy's CPUs four times where a direct one crosses none when
 * the client and the upstream share a CPU (bench/README.md).
 *
 *   berth-wakeprobe [--cpus A,B] [--rounds N] [--gap-us G]
 *
 * Between round trips the parent spins G µs (default 50) so that the other side is asleep,
 * as a proxy between requests is. Prints one JSON object: p50/p90/p99/p99.9 in µs for each
 * pair. Exit 0, 2 on bad arguments, 1 when a CPU cannot be used. */
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int pin(int cpu)
{
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    return sched_setaffinity(0, sizeof(s), &s);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Round trips between the caller pinned to <a> and a child pinned to <b>, into <out>. */
static int probe(int a, int b, int rounds, uint64_t gap_ns, uint64_t *out)
{
    int ping[2], pong[2];
    if (pipe(ping) < 0 || pipe(pong) < 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        close(ping[1]);
        close(pong[0]);
        if (pin(b) < 0)
            _exit(1);
        char x;
        while (read(ping[0], &x, 1) == 1)
            if (write(pong[1], &x, 1) != 1)
                break;
        _exit(0);
    }
    close(ping[0]);
    close(pong[1]);
    int rc = pin(a);
    char x = 'x';
    for (int i = 0; rc == 0 && i < rounds; i++) {
        uint64_t t0 = now_ns();
        while (now_ns() - t0 < gap_ns)
            ;
        t0 = now_ns();
        if (write(ping[1], &x, 1) != 1 || read(pong[0], &x, 1) != 1) {
            rc = -1;
            break;
        }
        out[i] = now_ns() - t0;
    }
    close(ping[1]); /* the child's read ends */
    close(pong[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        rc = -1;
    return rc;
}

static void print_pair(const char *name, uint64_t *v, int n, int last)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_u64);
#define PCT(p) ((double)v[(size_t)((double)(n - 1) * (p))] / 1000.0)
    printf("  \"%s\": {\"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, \"p99.9\": %.1f}%s\n", name,
           PCT(0.50), PCT(0.90), PCT(0.99), PCT(0.999), last ? "" : ",");
#undef PCT
}

static void usage(FILE *f)
{
    fprintf(f, "usage: berth-wakeprobe [--cpus A,B] [--rounds N] [--gap-us G]\n");
}

int main(int argc, char **argv)
{
    int a = 0, b = 1, rounds = 5000;
    long gap_us = 50;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--cpus") == 0 && v) {
            if (sscanf(v, "%d,%d", &a, &b) != 2 || a < 0 || b < 0 || a >= CPU_SETSIZE ||
                b >= CPU_SETSIZE) {
                fprintf(stderr, "berth-wakeprobe: --cpus wants two CPU numbers, A,B\n");
                return 2;
            }
        } else if (strcmp(argv[i], "--rounds") == 0 && v) {
            long n = strtol(v, &end, 10);
            if (*end || n < 100 || n > 1000000) {
                fprintf(stderr, "berth-wakeprobe: --rounds wants 100..1000000\n");
                return 2;
            }
            rounds = (int)n;
        } else if (strcmp(argv[i], "--gap-us") == 0 && v) {
            gap_us = strtol(v, &end, 10);
            if (*end || gap_us < 0 || gap_us > 100000) {
                fprintf(stderr, "berth-wakeprobe: --gap-us wants 0..100000\n");
                return 2;
            }
        } else {
            usage(stderr);
            return 2;
        }
        i++;
    }
    signal(SIGPIPE, SIG_IGN);
    uint64_t *cross = calloc((size_t)rounds, sizeof(uint64_t));
    uint64_t *same = calloc((size_t)rounds, sizeof(uint64_t));
    if (!cross || !same)
        return 1;
    uint64_t gap = (uint64_t)gap_us * 1000u;
    if (probe(a, b, rounds, gap, cross) < 0 || probe(a, a, rounds, gap, same) < 0) {
        fprintf(stderr, "berth-wakeprobe: cannot run on cpus %d and %d: %s\n", a, b,
                strerror(errno ? errno : EINVAL));
        return 1;
    }
    char cross_name[32], same_name[32];
    snprintf(cross_name, sizeof(cross_name), "cpu%d<->cpu%d", a, b);
    snprintf(same_name, sizeof(same_name), "cpu%d<->cpu%d", a, a);
    printf("{\n  \"unit\": \"us per round trip (two wake-ups)\",\n  \"rounds\": %d,\n"
           "  \"gap_us\": %ld,\n", rounds, gap_us);
    print_pair("other_cpu", cross, rounds, 0);
    print_pair("same_cpu", same, rounds, 0);
    printf("  \"other_pair\": \"%s\",\n  \"same_pair\": \"%s\"\n}\n", cross_name, same_name);
    free(cross);
    free(same);
    return 0;
}
