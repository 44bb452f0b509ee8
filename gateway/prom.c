#include "gateway/prom.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "common/compat.h"
#include "common/prom.h"

static void sample_u(struct cm_jbuf *b, const char *name, uint64_t v)
{
    cm_jbuf_printf(b, "%s %" PRIu64 "\n", name, v);
}

static void sample_i(struct cm_jbuf *b, const char *name, int64_t v)
{
    cm_jbuf_printf(b, "%s %" PRId64 "\n", name, v);
}

/* A counter family with its one sample. */
static void counter(struct cm_jbuf *b, const char *name, const char *help, uint64_t v)
{
    cm_prom_family(b, name, "counter", help);
    sample_u(b, name, v);
}

static void tenant_sample(struct cm_jbuf *b, const char *family, const char *tenant,
                          const char *limit, uint64_t v)
{
    cm_jbuf_printf(b, "%s{tenant=", family);
    cm_prom_label_value(b, tenant);
    cm_jbuf_printf(b, ",limit=\"%s\"} %" PRIu64 "\n", limit, v);
}

void gw_prom_tenant_limits(struct cm_jbuf *b, const struct gw_metrics *m,
                           const struct cm_config *cfg)
{
    int any = 0;
    for (size_t i = 0; i < cfg->n_tenants; i++)
        any |= cfg->tenants[i].max_sessions || cfg->tenants[i].sessions_per_second ||
               cfg->tenants[i].requests_per_second || cfg->tenants[i].max_execs ||
               cfg->tenants[i].max_memory || cfg->tenants[i].max_cpu_millis;
    if (!any)
        return;
    const char *f = "berth_tenant_limit";
    cm_prom_family(b, f, "gauge",
                   "A tenant's configured limit (tenants[].limits), by tenant and limit.");
    for (size_t i = 0; i < cfg->n_tenants; i++) {
        const struct cm_tenant *t = &cfg->tenants[i];
        if (t->max_sessions)
            tenant_sample(b, f, t->name, "max_sessions", t->max_sessions);
        if (t->sessions_per_second) {
            tenant_sample(b, f, t->name, "sessions_per_second", t->sessions_per_second);
            tenant_sample(b, f, t->name, "sessions_burst", t->sessions_burst);
        }
        if (t->requests_per_second) {
            tenant_sample(b, f, t->name, "requests_per_second", t->requests_per_second);
            tenant_sample(b, f, t->name, "requests_burst", t->requests_burst);
        }
        if (t->max_execs)
            tenant_sample(b, f, t->name, "max_execs", t->max_execs);
        if (t->max_memory) /* bytes */
            tenant_sample(b, f, t->name, "max_memory", t->max_memory);
        if (t->max_cpu_millis) { /* cores */
            cm_jbuf_printf(b, "%s{tenant=", f);
            cm_prom_label_value(b, t->name);
            cm_jbuf_raw(b, ",limit=\"max_cpus\"} ", 19);
            cm_prom_scaled(b, t->max_cpu_millis, 1000);
            cm_jbuf_raw(b, "\n", 1);
        }
    }
    f = "berth_tenant_limited_total";
    cm_prom_family(b, f, "counter",
                   "New sessions (max_sessions, sessions_per_second) and requests "
                   "(requests_per_second) this gateway refused with 429 tenant_limit, by tenant "
                   "and limit.");
    for (size_t i = 0; i < cfg->n_tenants && i < GW_TENANT_SLOTS; i++) {
        const struct cm_tenant *t = &cfg->tenants[i];
        if (t->max_sessions)
            tenant_sample(b, f, t->name, "max_sessions", m->tenant_max_sessions[i]);
        if (t->sessions_per_second)
            tenant_sample(b, f, t->name, "sessions_per_second", m->tenant_session_rate[i]);
        if (t->requests_per_second)
            tenant_sample(b, f, t->name, "requests_per_second", m->tenant_request_rate[i]);
        if (t->max_execs)
            tenant_sample(b, f, t->name, "max_execs", m->tenant_max_execs[i]);
        if (t->max_memory)
            tenant_sample(b, f, t->name, "max_memory", m->tenant_max_memory[i]);
        if (t->max_cpu_millis)
            tenant_sample(b, f, t->name, "max_cpus", m->tenant_max_cpus[i]);
    }
}

void gw_prom_gauge(struct cm_jbuf *b, const char *name, const char *help, int64_t v)
{
    cm_prom_family(b, name, "gauge", help);
    sample_i(b, name, v);
}

static void labeled(struct cm_jbuf *b, const char *name, const char *label, const char *value,
                    uint64_t v)
{
    cm_jbuf_printf(b, "%s{%s=", name, label);
    cm_prom_label_value(b, value);
    cm_jbuf_printf(b, "} %" PRIu64 "\n", v);
}

void gw_prom_write(struct cm_jbuf *b, const struct gw_metrics *m,
                   const struct gw_prom_tenant *tenants, size_t n, int redis_up)
{
    counter(b, "berth_gateway_requests_total", "Requests received on the data plane.", m->requests);

    static const char *const classes[6] = {"other", "1xx", "2xx", "3xx", "4xx", "5xx"};
    cm_prom_family(b, "berth_gateway_responses_total", "counter",
                   "Responses sent on the data plane, by status class.");
    for (int c = 1; c <= 5; c++)
        labeled(b, "berth_gateway_responses_total", "class", classes[c], m->responses[c]);
    labeled(b, "berth_gateway_responses_total", "class", classes[0], m->responses[0]);

    cm_prom_family(b, "berth_gateway_errors_total", "counter",
                   "Error responses generated by the gateway, by error code.");
    /* Several errors may share a code (tenant_limit: one per limit): one sample per code. */
    for (int e = 0; e < GW_ERR_COUNT; e++) {
        const char *code = gw_err_info((enum gw_err)e)->code;
        int first = 1;
        for (int p = 0; p < e && first; p++)
            first = strcmp(gw_err_info((enum gw_err)p)->code, code) != 0;
        if (!first)
            continue;
        uint64_t v = 0;
        for (int o = e; o < GW_ERR_COUNT; o++)
            if (strcmp(gw_err_info((enum gw_err)o)->code, code) == 0)
                v += m->errors[o];
        labeled(b, "berth_gateway_errors_total", "code", code, v);
    }

    static const char *const results[GW_CLAIM_COUNT] = {[GW_CLAIM_CACHED] = "cached",
                                                        [GW_CLAIM_BOUND] = "bound",
                                                        [GW_CLAIM_NEW] = "new",
                                                        [GW_CLAIM_STARTED] = "started",
                                                        [GW_CLAIM_FAILED] = "failed"};
    cm_prom_family(b, "berth_gateway_claims_total", "counter",
                   "Session lookups and bindings, by how the instance was found.");
    for (int r = 0; r < GW_CLAIM_COUNT; r++)
        labeled(b, "berth_gateway_claims_total", "result", results[r], m->claims[r]);

    cm_prom_family(
        b, "berth_gateway_cache_revalidations_total", "counter",
        "Cached session bindings confirmed with Redis: by an activity touch's reply, by the "
        "reply another loop's touch had, or by a lookup of their own.");
    labeled(b, "berth_gateway_cache_revalidations_total", "by", "touch",
            m->revalidations[GW_REVAL_TOUCH]);
    labeled(b, "berth_gateway_cache_revalidations_total", "by", "lookup",
            m->revalidations[GW_REVAL_LOOKUP]);
    labeled(b, "berth_gateway_cache_revalidations_total", "by", "loop",
            m->revalidations[GW_REVAL_LOOP]);

    const char *h = "berth_gateway_request_duration_seconds";
    cm_prom_family(b, h, "histogram", "Time from request head to response head on the data plane.");
    uint64_t cum = 0;
    for (int i = 0; i < GW_LAT_BUCKETS - 1; i++) {
        cum += m->latency[i];
        cm_jbuf_printf(b, "%s_bucket{le=\"", h);
        cm_prom_scaled(b, gw_lat_bounds_us[i], 1000000);
        cm_jbuf_printf(b, "\"} %" PRIu64 "\n", cum);
    }
    cum += m->latency[GW_LAT_BUCKETS - 1];
    cm_jbuf_printf(b, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", h, cum);
    cm_jbuf_printf(b, "%s_sum ", h);
    cm_prom_scaled(b, m->latency_sum_us, 1000000);
    cm_jbuf_printf(b, "\n%s_count %" PRIu64 "\n", h, cum);

    cm_prom_family(b, "berth_gateway_connections_active", "gauge", "Client connections open now.");
    sample_i(b, "berth_gateway_connections_active", m->conns_active);
    counter(b, "berth_gateway_connections_total", "Client connections accepted.",
            m->conns_accepted);
    counter(b, "berth_gateway_h2_connections_total",
            "Client connections that spoke HTTP/2 (h2 by ALPN, or h2c).", m->h2_conns);
    counter(b, "berth_gateway_h2_streams_total", "HTTP/2 streams opened by clients.",
            m->h2_streams);
    counter(b, "berth_gateway_h2_stream_resets_total",
            "HTTP/2 streams that ended before their answer was whole.", m->h2_resets);
    counter(b, "berth_gateway_usage_dropped_total",
            "Exchanges not metered for usage: a loop's usage table was full.", m->usage_dropped);
    counter(b, "berth_gateway_h2_goaways_total",
            "HTTP/2 connections ended with GOAWAY for a protocol error or a flood.", m->h2_goaways);
    cm_prom_family(b, "berth_gateway_streams_active", "gauge",
                   "Requests in flight, including open SSE and WebSocket streams.");
    sample_i(b, "berth_gateway_streams_active", m->streams_active);
    counter(b, "berth_gateway_upstream_connects_total", "New connections opened to instances.",
            m->upstream_connects);
    counter(b, "berth_gateway_upstream_reuses_total",
            "Requests sent on a kept-alive instance connection.", m->upstream_reuses);
    counter(b, "berth_gateway_sessions_unused_total",
            "Sessions made for a keyless request and released at once: its answer was an "
            "error (or none), so no client can reach them again.",
            m->sessions_unused);
    cm_prom_family(b, "berth_gateway_body_bytes_total", "counter",
                   "Body bytes relayed: in = from clients, out = to clients.");
    labeled(b, "berth_gateway_body_bytes_total", "direction", "in", m->bytes_in);
    labeled(b, "berth_gateway_body_bytes_total", "direction", "out", m->bytes_out);

    if (tenants) {
        cm_prom_family(b, "berth_sessions", "gauge", "Sessions recorded in Redis, by tenant.");
        for (size_t i = 0; i < n; i++)
            labeled(b, "berth_sessions", "tenant", tenants[i].name, tenants[i].sessions);
    }
    cm_prom_family(b, "berth_redis_up", "gauge",
                   "1 when the admin's Redis client is connected and answered this scrape.");
    cm_jbuf_printf(b, "berth_redis_up %d\n", redis_up ? 1 : 0);
}
