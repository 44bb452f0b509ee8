/* The Prometheus text exposition (format 0.0.4) of the gateway's metrics: the sum of the worker
 * shards, the per-tenant session counts read from Redis at scrape time, and whether Redis is
 * up. Pure: writes text into a buffer. Any thread. */
#ifndef GW_PROM_H
#define GW_PROM_H

#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "common/json.h"
#include "common/prom.h"
#include "gateway/metrics.h"

#define GW_PROM_CONTENT_TYPE CM_PROM_CONTENT_TYPE

struct gw_prom_tenant {
    const char *name;  /* borrowed */
    uint64_t sessions; /* ZCARD of P sessions:<name> */
};

/* Appends every metric family of <m> (summed shards) to <b>, then berth_sessions{tenant=...}
 * for the <n> entries of <tenants> (the family is omitted when <tenants> is NULL: Redis did
 * not answer), then berth_redis_up (<redis_up> 0 or 1). Each family carries its # HELP and
 * # TYPE lines; histogram buckets are cumulative, in seconds. */
void gw_prom_write(struct cm_jbuf *b, const struct gw_metrics *m,
                   const struct gw_prom_tenant *tenants, size_t n, int redis_up);
/* Appends berth_tenant_limit{tenant,limit} (the configured limits) and
 * berth_tenant_limited_total{tenant,limit} (refusals counted in <m>) for the tenants of <cfg>
 * that have a limit; nothing when none has. */
void gw_prom_tenant_limits(struct cm_jbuf *b, const struct gw_metrics *m,
                           const struct cm_config *cfg);
/* Appends a gauge family with its one sample <v>. */
void gw_prom_gauge(struct cm_jbuf *b, const char *name, const char *help, int64_t v);

#endif
