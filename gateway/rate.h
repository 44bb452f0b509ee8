/* A shared request-rate limit: GCRA (the generic cell rate algorithm, a token bucket kept as
 * one number), lock-free across the worker threads of one gateway process.
 *
 * <tat> is the theoretical arrival time of the next request at the steady rate (monotonic
 * ns: a µs interval would round 400k/s up to 500k/s). A request at <now> is allowed when, once it is counted (tat' = max(tat, now) +
 * interval), tat' - now stays within <limit> = burst x interval: so <burst> requests may go at
 * once, then one every <interval>. One compare-and-swap per allowed request; a refused one
 * writes nothing. */
#ifndef GW_RATE_H
#define GW_RATE_H

#include <stdint.h>

struct gw_rate {
    uint64_t tat;      /* atomic */
    uint64_t interval; /* ns per request: 1e9 / rate */
    uint64_t limit;    /* burst x interval */
};

static inline void gw_rate_init(struct gw_rate *r, uint32_t per_second, uint32_t burst)
{
    r->tat = 0;
    r->interval = per_second ? 1000000000u / per_second : 0;
    if (r->interval == 0)
        r->interval = 1;
    r->limit = (uint64_t)(burst ? burst : 1) * r->interval;
}

/* 1: allowed (and counted), 0: over the rate. <now>: monotonic ns. */
static inline int gw_rate_take(struct gw_rate *r, uint64_t now)
{
    uint64_t tat = __atomic_load_n(&r->tat, __ATOMIC_RELAXED);
    for (int i = 0; i < 64; i++) { /* bounded: under a storm of contention, refuse */
        uint64_t next = (tat > now ? tat : now) + r->interval;
        if (next - now > r->limit)
            return 0;
        if (__atomic_compare_exchange_n(&r->tat, &tat, next, 0, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED))
            return 1;
    }
    return 0;
}

#endif
