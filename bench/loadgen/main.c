/* berth-loadgen: a load generator for agent traffic (see `berth-loadgen --help`, bench/README.md).
 *
 * main() parses the options, creates one client (event loop) per thread and walks them through
 * the stages together: prepare (connect, prime sessions / open streams), run (warmup + measured
 * window, or the SSE hold), then merges their statistics and writes the JSON result. The watched
 * processes' RSS is sampled before the first connection, after the prepare stage, every 20 ms
 * during the run, at its end, and after every connection was closed. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "bench/loadgen/client.h"
#include "bench/loadgen/opts.h"
#include "bench/loadgen/report.h"

#define RSS_SAMPLE_NS 20000000ull
#define SETTLE_NS 200000000ull /* after the last connection closed, before the last RSS sample */

struct shared {
    pthread_barrier_t bar;
    uint64_t t_run;
    atomic_int prepare_failed;
    atomic_int running;
};

struct worker {
    pthread_t tid;
    struct lg_client *cl;
    struct shared *sh;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    if (lg_client_prepare(w->cl) < 0)
        atomic_store(&w->sh->prepare_failed, 1);
    pthread_barrier_wait(&w->sh->bar); /* everyone prepared */
    pthread_barrier_wait(&w->sh->bar); /* t_run is set */
    if (!atomic_load(&w->sh->prepare_failed))
        lg_client_run(w->cl, w->sh->t_run);
    atomic_fetch_sub(&w->sh->running, 1);
    pthread_barrier_wait(&w->sh->bar); /* everyone ran; main samples before anything closes */
    return NULL;
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static void raise_nofile(const struct lg_opts *o)
{
    uint64_t need = (uint64_t)(o->mode == LG_MODE_SSE ? o->streams : o->connections) + 64;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= need)
        return;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need ? need : rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < need && !o->quiet)
        fprintf(stderr, "berth-loadgen: RLIMIT_NOFILE is %llu, %llu needed: raise ulimit -n\n",
                (unsigned long long)rl.rlim_cur, (unsigned long long)need);
}

int main(int argc, char **argv)
{
    struct lg_opts o;
    int r = lg_opts_parse(argc, argv, &o);
    if (r != 0)
        return r > 0 ? 0 : 2;
    signal(SIGPIPE, SIG_IGN);
    raise_nofile(&o);

    struct lg_rss rss;
    memset(&rss, 0, sizeof(rss));
    rss.n_pids = (int)o.n_watch_pids;
    int missing = 0;
    if (rss.n_pids) {
        rss.before_kib = lg_rss_kib(o.watch_pids, o.n_watch_pids, &missing);
        if (missing) {
            fprintf(stderr, "berth-loadgen: cannot read the RSS of %d watched pid(s)\n", missing);
            return 2;
        }
    }

    struct shared sh;
    memset(&sh, 0, sizeof(sh));
    atomic_init(&sh.prepare_failed, 0);
    atomic_init(&sh.running, (int)o.threads);
    pthread_barrier_init(&sh.bar, NULL, o.threads + 1);
    struct worker *ws = calloc(o.threads, sizeof(*ws));
    if (!ws) {
        fprintf(stderr, "berth-loadgen: out of memory\n");
        return 1;
    }
    for (uint32_t i = 0; i < o.threads; i++) {
        ws[i].sh = &sh;
        ws[i].cl = lg_client_create(&o, i);
        if (!ws[i].cl) {
            fprintf(stderr, "berth-loadgen: cannot create client %u (out of memory?)\n", i);
            return 1;
        }
    }
    for (uint32_t i = 0; i < o.threads; i++)
        if (pthread_create(&ws[i].tid, NULL, worker_main, &ws[i]) != 0) {
            fprintf(stderr, "berth-loadgen: cannot start thread %u\n", i);
            return 1;
        }
    pthread_barrier_wait(&sh.bar); /* prepared */
    int prepare_failed = atomic_load(&sh.prepare_failed);
    if (rss.n_pids)
        rss.open_kib = rss.peak_kib = lg_rss_kib(o.watch_pids, o.n_watch_pids, NULL);
    if (!o.quiet) {
        if (o.mode == LG_MODE_SSE) {
            uint64_t opened = 0;
            for (uint32_t i = 0; i < o.threads; i++)
                opened += lg_client_stats(ws[i].cl)->sse_opened;
            fprintf(stderr, "berth-loadgen: %s: %llu of %u streams open, holding\n", o.label,
                    (unsigned long long)opened, o.streams);
        } else if (prepare_failed) {
            fprintf(stderr, "berth-loadgen: %s: cannot connect within the timeout\n", o.label);
        }
    }
    sh.t_run = lg_now_ns() + 1000000ull;
    uint64_t started = lg_now_ns();
    pthread_barrier_wait(&sh.bar); /* go */
    while (atomic_load(&sh.running) > 0) {
        if (rss.n_pids) {
            uint64_t v = lg_rss_kib(o.watch_pids, o.n_watch_pids, NULL);
            if (v > rss.peak_kib)
                rss.peak_kib = v;
        }
        sleep_ns(RSS_SAMPLE_NS);
    }
    uint64_t run_ns = lg_now_ns() - started;
    if (rss.n_pids) {
        rss.end_kib = lg_rss_kib(o.watch_pids, o.n_watch_pids, NULL);
        if (rss.end_kib > rss.peak_kib)
            rss.peak_kib = rss.end_kib;
    }
    pthread_barrier_wait(&sh.bar); /* done */

    struct lg_stats *total = malloc(sizeof(*total));
    if (!total) {
        fprintf(stderr, "berth-loadgen: out of memory\n");
        return 1;
    }
    lg_stats_init(total);
    for (uint32_t i = 0; i < o.threads; i++) {
        pthread_join(ws[i].tid, NULL);
        lg_stats_merge(total, lg_client_stats(ws[i].cl));
        lg_client_destroy(ws[i].cl);
    }
    if (rss.n_pids) {
        sleep_ns(SETTLE_NS);
        rss.after_kib = lg_rss_kib(o.watch_pids, o.n_watch_pids, NULL);
    }

    FILE *out = stdout;
    if (o.json_path[0]) {
        out = fopen(o.json_path, "w");
        if (!out) {
            fprintf(stderr, "berth-loadgen: cannot write %s: %s\n", o.json_path, strerror(errno));
            return 1;
        }
    }
    int wr = lg_report_json(out, &o, total, &rss, run_ns, prepare_failed);
    if (out != stdout && fclose(out) != 0)
        wr = -EIO;
    if (!o.quiet)
        lg_report_summary(stderr, &o, total, &rss);
    free(total);
    free(ws);
    pthread_barrier_destroy(&sh.bar);
    if (wr < 0) {
        fprintf(stderr, "berth-loadgen: cannot write the result\n");
        return 1;
    }
    return prepare_failed ? 3 : 0;
}
