/* Per-worker metric shards. Each worker loop owns one shard and is its only writer (relaxed
 * atomic loads and stores, no locks); the admin thread sums all shards when /metrics is
 * scraped. */
#ifndef GW_METRICS_H
#define GW_METRICS_H

#include <stdint.h>

#include "gateway/errors.h"

/* Request latency histogram bounds, in microseconds (Prometheus "le" buckets), +Inf last. */
#define GW_LAT_BUCKETS 14
extern const uint64_t gw_lat_bounds_us[GW_LAT_BUCKETS - 1];

enum gw_claim_result {
    GW_CLAIM_CACHED,  /* served from the loop's cache, no Redis */
    GW_CLAIM_BOUND,   /* Redis had the binding */
    GW_CLAIM_NEW,     /* bound a warm instance */
    GW_CLAIM_STARTED, /* pool empty: a scheduler started one */
    GW_CLAIM_FAILED,  /* no capacity, store down, lost */
    GW_CLAIM_COUNT
};

/* How a cached binding was confirmed with Redis. */
enum gw_reval {
    GW_REVAL_TOUCH,  /* by the gen an activity touch returned (no call of its own) */
    GW_REVAL_LOOKUP, /* by a lookup of its own, sent when a request found it stale */
    GW_REVAL_LOOP,   /* by the gen another loop's touch returned (the shared touchtab) */
    GW_REVAL_COUNT
};

/* Per-tenant counters are kept for this many configured tenants. */
#define GW_TENANT_SLOTS 256

struct gw_metrics {
    uint64_t requests;
    uint64_t responses[6]; /* by status class: [1]=1xx ... [5]=5xx, [0]=other */
    uint64_t errors[GW_ERR_COUNT];
    uint64_t claims[GW_CLAIM_COUNT];
    uint64_t revalidations[GW_REVAL_COUNT]; /* cached bindings confirmed with Redis, by how */
    uint64_t latency[GW_LAT_BUCKETS]; /* time to response head, non-cumulative counts */
    uint64_t latency_sum_us;
    uint64_t conns_accepted;
    int64_t conns_active;
    int64_t streams_active; /* requests in flight (incl. open SSE responses) */
    uint64_t upstream_connects;
    uint64_t upstream_reuses;
    uint64_t sessions_unused; /* keyless sessions released: their first answer was an error */
    uint64_t bytes_in;  /* body bytes from clients */
    uint64_t bytes_out; /* body bytes to clients */
    uint64_t h2_conns;  /* connections that spoke HTTP/2 */
    uint64_t h2_streams; /* HTTP/2 streams opened by clients */
    uint64_t h2_resets;  /* streams that ended before their answer was whole */
    uint64_t h2_goaways; /* connections ended for a protocol error or a flood */
    uint64_t usage_dropped; /* exchanges not metered: the loop's usage table was full */
    /* New sessions refused for tenants[i].limits.max_sessions, by the tenant's index in the
     * config (the first GW_TENANT_SLOTS tenants; the rest count in errors[] only). */
    uint64_t tenant_max_sessions[GW_TENANT_SLOTS];
    uint64_t tenant_session_rate[GW_TENANT_SLOTS]; /* the same for sessions_per_second */
    uint64_t tenant_request_rate[GW_TENANT_SLOTS]; /* requests refused: requests_per_second */
    uint64_t tenant_max_execs[GW_TENANT_SLOTS];    /* commands refused: max_execs */
    uint64_t tenant_max_memory[GW_TENANT_SLOTS];   /* sessions refused: max_memory */
    uint64_t tenant_max_cpus[GW_TENANT_SLOTS];     /* sessions refused: max_cpus */
};

/* One writer per shard: a relaxed load and store (plain moves on x86-64) instead of a locked
 * read-modify-write (~20 cycles each, several per request); readers on other threads still
 * see whole 64-bit values. */
#define GW_METRIC_ADD(m, field, n)                                                                 \
    __atomic_store_n(&(m)->field, __atomic_load_n(&(m)->field, __ATOMIC_RELAXED) + (n),          \
                     __ATOMIC_RELAXED)
#define GW_METRIC_INC(m, field) GW_METRIC_ADD(m, field, 1)

/* Records one response: status class and time to response head. Worker loop only. */
void gw_metrics_response(struct gw_metrics *m, int status, uint64_t usec);
/* Sums <n> shards into <out> (relaxed loads). Any thread. */
void gw_metrics_sum(struct gw_metrics *const *shards, int n, struct gw_metrics *out);

#endif
