/* berth-loadgen's results: the JSON document bench/run reads, and a one-line summary. */
#ifndef LG_REPORT_H
#define LG_REPORT_H

#include <stdint.h>
#include <stdio.h>

#include "bench/loadgen/client.h"
#include "bench/loadgen/opts.h"

/* Resident memory of the watched processes (summed), in KiB; 0 when not sampled. */
struct lg_rss {
    int n_pids;
    uint64_t before_kib; /* before the first connection */
    uint64_t open_kib;   /* SSE: once every stream is open; else after priming */
    uint64_t peak_kib;   /* highest sample during the run (sampled every 20 ms) */
    uint64_t end_kib;    /* at the end of the run, connections still open */
    uint64_t after_kib;  /* after every connection was closed */
};

/* Sum of VmRSS of <pids> in KiB (processes that vanished count 0); sets *ret_missing to the
 * number of pids that could not be read. */
uint64_t lg_rss_kib(const int *pids, size_t n, int *ret_missing);

/* Writes the result document. <run_ns> is the wall time of the run stage. Returns 0 or -EIO. */
int lg_report_json(FILE *f, const struct lg_opts *o, const struct lg_stats *s,
                   const struct lg_rss *rss, uint64_t run_ns, int prepare_failed);
/* One human line on <f>. */
void lg_report_summary(FILE *f, const struct lg_opts *o, const struct lg_stats *s,
                       const struct lg_rss *rss);

#endif
