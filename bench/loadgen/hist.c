/* Log-linear histogram: see hist.h for the layout and its error bound. */
#include "bench/loadgen/hist.h"

#include <math.h>
#include <string.h>

#define HALF (1u << (LG_HIST_SUB - 1))

void lg_hist_init(struct lg_hist *h)
{
    memset(h, 0, sizeof(*h));
    h->min = UINT64_MAX;
}

size_t lg_hist_index(uint64_t v)
{
    if (v < (1u << LG_HIST_SUB))
        return (size_t)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    if (msb >= LG_HIST_MAX_BITS)
        return LG_HIST_BUCKETS - 1;
    unsigned e = msb - (LG_HIST_SUB - 1); /* v >> e lies in [HALF, 2*HALF) */
    return (1u << LG_HIST_SUB) + (size_t)(e - 1) * HALF + (size_t)((v >> e) - HALF);
}

uint64_t lg_hist_upper(size_t idx)
{
    if (idx < (1u << LG_HIST_SUB))
        return idx;
    size_t r = idx - (1u << LG_HIST_SUB);
    unsigned e = (unsigned)(r / HALF) + 1;
    uint64_t sub = (uint64_t)(r % HALF) + HALF;
    return ((sub + 1) << e) - 1;
}

void lg_hist_record(struct lg_hist *h, uint64_t v)
{
    h->b[lg_hist_index(v)]++;
    h->count++;
    h->sum += (long double)v;
    if (v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
}

void lg_hist_merge(struct lg_hist *dst, const struct lg_hist *src)
{
    if (!src->count)
        return;
    for (size_t i = 0; i < LG_HIST_BUCKETS; i++)
        dst->b[i] += src->b[i];
    dst->count += src->count;
    dst->sum += src->sum;
    if (src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
}

uint64_t lg_hist_quantile(const struct lg_hist *h, double q)
{
    if (!h->count)
        return 0;
    if (q <= 0)
        return h->min;
    if (q > 1)
        q = 1;
    uint64_t rank = (uint64_t)ceil(q * (double)h->count);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < LG_HIST_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= rank) {
            uint64_t v = lg_hist_upper(i);
            if (v > h->max)
                v = h->max;
            if (v < h->min)
                v = h->min;
            return v;
        }
    }
    return h->max;
}

double lg_hist_mean(const struct lg_hist *h)
{
    return h->count ? (double)(h->sum / (long double)h->count) : 0.0;
}
