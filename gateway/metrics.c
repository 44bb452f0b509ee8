#include "gateway/metrics.h"

#include <string.h>

const uint64_t gw_lat_bounds_us[GW_LAT_BUCKETS - 1] = {
    100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 1000000, 5000000,
};

void gw_metrics_response(struct gw_metrics *m, int status, uint64_t usec)
{
    int cls = status / 100;
    if (cls < 1 || cls > 5)
        cls = 0;
    GW_METRIC_INC(m, responses[cls]);
    int b = 0;
    while (b < GW_LAT_BUCKETS - 1 && usec > gw_lat_bounds_us[b])
        b++;
    GW_METRIC_INC(m, latency[b]);
    GW_METRIC_ADD(m, latency_sum_us, usec);
}

void gw_metrics_sum(struct gw_metrics *const *shards, int n, struct gw_metrics *out)
{
    memset(out, 0, sizeof(*out));
    /* The struct is all 64-bit counters: sum it field by field as an array. */
    size_t words = sizeof(*out) / sizeof(uint64_t);
    uint64_t *o = (uint64_t *)out;
    for (int i = 0; i < n; i++) {
        const uint64_t *s = (const uint64_t *)shards[i];
        for (size_t w = 0; w < words; w++)
            o[w] += __atomic_load_n(&s[w], __ATOMIC_RELAXED);
    }
}
