/* Unit test of the load generator's histogram (TAP output; run by `meson test --suite bench`):
 * bucket bounds, the error bound, quantiles against exactly computed ones, and merging. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/loadgen/hist.h"

static int n_test, n_fail;

static void ok(int cond, const char *what)
{
    n_test++;
    if (!cond)
        n_fail++;
    printf("%s %d - %s\n", cond ? "ok" : "not ok", n_test, what);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Exact quantile with the same rank rule as lg_hist_quantile(). */
static uint64_t exact(const uint64_t *sorted, size_t n, double q)
{
    size_t rank = (size_t)((q * (double)n) + 0.999999999);
    if (rank < 1)
        rank = 1;
    return sorted[rank - 1];
}

int main(void)
{
    /* Every value lands in a bucket whose upper bound is >= it and within 1/64 above it. */
    int bounds_ok = 1, monotone = 1;
    size_t prev = 0;
    for (uint64_t v = 0; v < (1ull << 41); v = v < 4096 ? v + 1 : v + v / 97 + 1) {
        size_t i = lg_hist_index(v);
        uint64_t up = lg_hist_upper(i);
        if (i >= LG_HIST_BUCKETS || up < v || (double)(up - v) > (double)v / 64.0 + 1.0)
            bounds_ok = 0;
        if (i < prev)
            monotone = 0;
        prev = i;
    }
    ok(bounds_ok, "upper bound of a value's bucket is >= the value and within 1/64");
    ok(monotone, "bucket index grows with the value");
    ok(lg_hist_index(127) == 127 && lg_hist_upper(127) == 127, "small values are exact");
    ok(lg_hist_index(UINT64_MAX) == LG_HIST_BUCKETS - 1, "huge values land in the last bucket");
    ok(lg_hist_index((1ull << LG_HIST_MAX_BITS) - 1) == LG_HIST_BUCKETS - 1,
       "the largest tracked value uses the last bucket");

    /* Quantiles of a skewed sample match the exact ones within the error bound. */
    enum { N = 200000 };
    uint64_t *vals = malloc(N * sizeof(*vals));
    struct lg_hist *h = malloc(sizeof(*h)), *a = malloc(sizeof(*a)), *b = malloc(sizeof(*b));
    if (!vals || !h || !a || !b)
        return 1;
    lg_hist_init(h);
    lg_hist_init(a);
    lg_hist_init(b);
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < N; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17; /* xorshift64 */
        uint64_t v = 20000 + x % 50000;           /* 20-70 us body */
        if (i % 100 == 0)
            v *= 40; /* a 1 % tail around 1-3 ms */
        vals[i] = v;
        lg_hist_record(h, v);
        lg_hist_record(i % 2 ? a : b, v);
    }
    qsort(vals, N, sizeof(*vals), cmp_u64);
    const double qs[] = {0.5, 0.9, 0.99, 0.999, 1.0};
    int q_ok = 1;
    for (size_t i = 0; i < sizeof(qs) / sizeof(qs[0]); i++) {
        uint64_t e = exact(vals, N, qs[i]), got = lg_hist_quantile(h, qs[i]);
        if (got < e || (double)(got - e) > (double)e / 64.0 + 1.0) {
            q_ok = 0;
            printf("# q=%g exact=%" PRIu64 " hist=%" PRIu64 "\n", qs[i], e, got);
        }
    }
    ok(q_ok, "p50, p90, p99, p99.9 and max within 1/64 above the exact value");
    ok(h->count == N && h->min == vals[0] && h->max == vals[N - 1], "count, min and max exact");
    ok(lg_hist_quantile(h, 1.0) == vals[N - 1], "q=1 is the maximum");
    lg_hist_merge(a, b);
    ok(a->count == h->count && memcmp(a->b, h->b, sizeof(h->b)) == 0 && a->min == h->min &&
           a->max == h->max,
       "merging two halves equals recording everything in one");
    struct lg_hist *e = malloc(sizeof(*e));
    if (!e)
        return 1;
    lg_hist_init(e);
    ok(lg_hist_quantile(e, 0.99) == 0 && lg_hist_mean(e) == 0.0, "empty histogram reports 0");
    printf("1..%d\n", n_test);
    free(vals), free(h), free(a), free(b), free(e);
    return n_fail ? 1 : 0;
}
