/* A log-linear latency histogram in the manner of HdrHistogram (our own, small): values are
 * unsigned 64-bit integers (the load generator records nanoseconds); values below 2^LG_HIST_SUB
 * are counted exactly, larger ones in LG_HIST_SUB/2 linear buckets per power of two, so a
 * reported value is at most 1/64 (1.6 %) above the true one and never below it. Values of
 * 2^LG_HIST_MAX_BITS and above land in the last bucket (and still count in max). Fixed size,
 * no allocation: a struct lg_hist may live in caller storage. Not thread-safe: one per thread,
 * merged at the end with lg_hist_merge(). */
#ifndef LG_HIST_H
#define LG_HIST_H

#include <stddef.h>
#include <stdint.h>

#define LG_HIST_SUB 7       /* 128 exact values, then 64 buckets per octave */
#define LG_HIST_MAX_BITS 42 /* 2^42 ns = 73 minutes */
#define LG_HIST_BUCKETS ((1u << LG_HIST_SUB) + (LG_HIST_MAX_BITS - LG_HIST_SUB) * (1u << (LG_HIST_SUB - 1)))

struct lg_hist {
    uint64_t count;
    uint64_t min, max;
    long double sum;
    uint64_t b[LG_HIST_BUCKETS];
};

/* Empties <h> (caller storage). */
void lg_hist_init(struct lg_hist *h);
void lg_hist_record(struct lg_hist *h, uint64_t v);
/* Adds every value of <src> to <dst>. */
void lg_hist_merge(struct lg_hist *dst, const struct lg_hist *src);
/* The smallest recorded-bucket upper bound v such that at least q (0..1] of the values are
 * <= v, clamped to [min, max]; 0 for an empty histogram. q <= 0 gives min. */
uint64_t lg_hist_quantile(const struct lg_hist *h, double q);
/* Mean of the recorded values (exact sum), 0 when empty. */
double lg_hist_mean(const struct lg_hist *h);
/* Bucket index of <v> and the largest value that bucket holds (exposed for the unit test). */
size_t lg_hist_index(uint64_t v);
uint64_t lg_hist_upper(size_t idx);

#endif
