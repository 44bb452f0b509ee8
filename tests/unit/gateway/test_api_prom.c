/* Unit tests of gateway/prom.c: the Prometheus text exposition of the admin's /metrics. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json.h"
#include "gateway/metrics.h"
#include "gateway/prom.h"
#include "tests/harness/test.h"

static char *write_prom(const struct gw_metrics *m, const struct gw_prom_tenant *t, size_t n,
                        int up)
{
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    gw_prom_write(&b, m, t, n, up);
    CHECK(!b.failed);
    return b.data; /* caller frees */
}

static size_t count(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

/* Every line is a comment ("# HELP name text" / "# TYPE name type") or a sample
 * "name[{label="value",...}] number"; each sample's family was declared before it. */
static void check_format(const char *text)
{
    char declared[64][96];
    size_t n_declared = 0;
    const char *p = text;
    CHECK(text[strlen(text) - 1] == '\n');
    while (*p) {
        const char *eol = strchr(p, '\n');
        CHECK_NOT_NULL(eol);
        char line[512];
        size_t len = (size_t)(eol - p);
        CHECK(len < sizeof(line));
        memcpy(line, p, len);
        line[len] = '\0';
        p = eol + 1;
        if (strncmp(line, "# HELP ", 7) == 0)
            continue;
        if (strncmp(line, "# TYPE ", 7) == 0) {
            char name[96], type[32];
            CHECK_MSG(sscanf(line + 7, "%95s %31s", name, type) == 2, "bad TYPE: %s", line);
            CHECK_MSG(!strcmp(type, "counter") || !strcmp(type, "gauge") ||
                          !strcmp(type, "histogram"),
                      "bad type: %s", line);
            for (size_t i = 0; i < n_declared; i++)
                CHECK_MSG(strcmp(declared[i], name) != 0, "family declared twice: %s", name);
            CHECK(n_declared < 64);
            snprintf(declared[n_declared++], sizeof(declared[0]), "%s", name);
            continue;
        }
        CHECK_MSG(line[0] != '#', "unknown comment: %s", line);
        size_t nl = strcspn(line, "{ ");
        char name[96];
        CHECK(nl > 0 && nl < sizeof(name));
        memcpy(name, line, nl);
        name[nl] = '\0';
        for (size_t i = 0; i < nl; i++)
            CHECK_MSG(name[i] == '_' || (name[i] >= 'a' && name[i] <= 'z') ||
                          (name[i] >= '0' && name[i] <= '9'),
                      "bad metric name: %s", line);
        const char *rest = line + nl;
        if (*rest == '{') {
            const char *close = strstr(rest, "} ");
            CHECK_MSG(close != NULL, "bad labels: %s", line);
            rest = close + 1;
        }
        CHECK_MSG(*rest == ' ', "no value: %s", line);
        char *end;
        strtod(rest + 1, &end);
        CHECK_MSG(*end == '\0' && end != rest + 1, "bad value: %s", line);
        /* histogram samples belong to the base family */
        int found = 0;
        for (size_t i = 0; i < n_declared; i++) {
            size_t dl = strlen(declared[i]);
            if (strcmp(declared[i], name) == 0 ||
                (strncmp(declared[i], name, dl) == 0 &&
                 (!strcmp(name + dl, "_bucket") || !strcmp(name + dl, "_sum") ||
                  !strcmp(name + dl, "_count"))))
                found = 1;
        }
        CHECK_MSG(found, "sample before its # TYPE: %s", line);
    }
}

TEST(zero_metrics_are_well_formed)
{
    struct gw_metrics m;
    memset(&m, 0, sizeof(m));
    char *t = write_prom(&m, NULL, 0, 0);
    check_format(t);
    CHECK_CONTAINS(t, "# TYPE berth_gateway_requests_total counter\n");
    CHECK_CONTAINS(t, "berth_gateway_requests_total 0\n");
    CHECK_CONTAINS(t, "# TYPE berth_gateway_request_duration_seconds histogram\n");
    CHECK_CONTAINS(t, "# TYPE berth_gateway_connections_active gauge\n");
    CHECK_CONTAINS(t, "berth_redis_up 0\n");
    CHECK(!test_contains(t, "berth_sessions"));
    CHECK_UINT_EQ(count(t, "# TYPE "), count(t, "# HELP "));
    /* one line per error code (tenant_limit is the code of one error per limit: 6) */
    size_t codes = 0;
    for (int e = 0; e < GW_ERR_COUNT; e++) {
        int first = 1;
        for (int p = 0; p < e; p++)
            if (strcmp(gw_err_info((enum gw_err)p)->code, gw_err_info((enum gw_err)e)->code) == 0)
                first = 0;
        codes += (size_t)first;
    }
    CHECK_UINT_EQ(codes, GW_ERR_COUNT - 5);
    CHECK_UINT_EQ(count(t, "berth_gateway_errors_total{code="), codes);
    for (int e = 0; e < GW_ERR_COUNT; e++) {
        char line[128];
        snprintf(line, sizeof(line), "berth_gateway_errors_total{code=\"%s\"} 0\n",
                 gw_err_info((enum gw_err)e)->code);
        CHECK_CONTAINS(t, line);
    }
    free(t);
}

TEST(counters_and_gauges)
{
    struct gw_metrics m;
    memset(&m, 0, sizeof(m));
    m.requests = 42;
    m.responses[2] = 40;
    m.responses[5] = 2;
    m.errors[GW_ERR_NO_CAPACITY] = 2;
    m.errors[GW_ERR_TENANT_MAX_SESSIONS] = 2; /* one code, two errors: summed */
    m.errors[GW_ERR_TENANT_SESSION_RATE] = 5;
    m.claims[GW_CLAIM_CACHED] = 30;
    m.claims[GW_CLAIM_STARTED] = 1;
    m.revalidations[GW_REVAL_TOUCH] = 17;
    m.revalidations[GW_REVAL_LOOKUP] = 2;
    m.revalidations[GW_REVAL_LOOP] = 5;
    m.conns_active = 3;
    m.conns_accepted = 9;
    m.streams_active = -1; /* a transient negative sum must print as such */
    m.upstream_connects = 4;
    m.upstream_reuses = 38;
    m.sessions_unused = 39;
    m.bytes_in = 1000;
    m.bytes_out = 123456789012ull;
    char *t = write_prom(&m, NULL, 0, 1);
    check_format(t);
    CHECK_CONTAINS(t, "berth_gateway_requests_total 42\n");
    CHECK_CONTAINS(t, "berth_gateway_responses_total{class=\"2xx\"} 40\n");
    CHECK_CONTAINS(t, "berth_gateway_responses_total{class=\"5xx\"} 2\n");
    CHECK_CONTAINS(t, "berth_gateway_errors_total{code=\"no_capacity\"} 2\n");
    CHECK_CONTAINS(t, "berth_gateway_errors_total{code=\"tenant_limit\"} 7\n");
    CHECK_CONTAINS(t, "berth_gateway_claims_total{result=\"cached\"} 30\n");
    CHECK_CONTAINS(t, "berth_gateway_claims_total{result=\"started\"} 1\n");
    CHECK_CONTAINS(t, "berth_gateway_claims_total{result=\"failed\"} 0\n");
    CHECK_CONTAINS(t, "# TYPE berth_gateway_cache_revalidations_total counter\n");
    CHECK_CONTAINS(t, "berth_gateway_cache_revalidations_total{by=\"touch\"} 17\n");
    CHECK_CONTAINS(t, "berth_gateway_cache_revalidations_total{by=\"lookup\"} 2\n");
    CHECK_CONTAINS(t, "berth_gateway_cache_revalidations_total{by=\"loop\"} 5\n");
    CHECK_CONTAINS(t, "berth_gateway_connections_active 3\n");
    CHECK_CONTAINS(t, "berth_gateway_connections_total 9\n");
    CHECK_CONTAINS(t, "berth_gateway_streams_active -1\n");
    CHECK_CONTAINS(t, "berth_gateway_upstream_connects_total 4\n");
    CHECK_CONTAINS(t, "berth_gateway_upstream_reuses_total 38\n");
    CHECK_CONTAINS(t, "berth_gateway_sessions_unused_total 39\n");
    CHECK_CONTAINS(t, "berth_gateway_body_bytes_total{direction=\"in\"} 1000\n");
    CHECK_CONTAINS(t, "berth_gateway_body_bytes_total{direction=\"out\"} 123456789012\n");
    CHECK_CONTAINS(t, "berth_redis_up 1\n");
    free(t);
}

TEST(histogram_is_cumulative_in_seconds)
{
    struct gw_metrics m;
    memset(&m, 0, sizeof(m));
    m.latency[0] = 2;                  /* <= 100 us */
    m.latency[3] = 1;                  /* <= 1 ms */
    m.latency[GW_LAT_BUCKETS - 1] = 4; /* > 5 s */
    m.latency_sum_us = 20000250;
    char *t = write_prom(&m, NULL, 0, 1);
    check_format(t);
    const char *h = "berth_gateway_request_duration_seconds";
    char line[128];
    snprintf(line, sizeof(line), "%s_bucket{le=\"0.0001\"} 2\n", h);
    CHECK_CONTAINS(t, line);
    snprintf(line, sizeof(line), "%s_bucket{le=\"0.00025\"} 2\n", h);
    CHECK_CONTAINS(t, line);
    snprintf(line, sizeof(line), "%s_bucket{le=\"0.001\"} 3\n", h);
    CHECK_CONTAINS(t, line);
    snprintf(line, sizeof(line), "%s_bucket{le=\"5\"} 3\n", h);
    CHECK_CONTAINS(t, line);
    snprintf(line, sizeof(line), "%s_bucket{le=\"+Inf\"} 7\n", h);
    CHECK_CONTAINS(t, line);
    snprintf(line, sizeof(line), "%s_sum 20.00025\n", h);
    CHECK_CONTAINS(t, line);
    snprintf(line, sizeof(line), "%s_count 7\n", h);
    CHECK_CONTAINS(t, line);
    CHECK_UINT_EQ(count(t, "_bucket{le="), GW_LAT_BUCKETS);
    /* buckets never decrease */
    long long prev = -1;
    for (const char *p = t; (p = strstr(p, "_bucket{le=")); p++) {
        const char *v = strstr(p, "} ") + 2;
        long long n = atoll(v);
        CHECK(n >= prev);
        prev = n;
    }
    free(t);
}

TEST(sessions_by_tenant_and_label_escaping)
{
    struct gw_metrics m;
    memset(&m, 0, sizeof(m));
    struct gw_prom_tenant ten[] = {{"default", 3}, {"we\"ird\\x\n", 0}};
    char *t = write_prom(&m, ten, 2, 1);
    check_format(t);
    CHECK_CONTAINS(t, "# TYPE berth_sessions gauge\n");
    CHECK_CONTAINS(t, "berth_sessions{tenant=\"default\"} 3\n");
    CHECK_CONTAINS(t, "berth_sessions{tenant=\"we\\\"ird\\\\x\\n\"} 0\n");
    free(t);
    /* no tenants configured but Redis answered: the family is there, empty */
    t = write_prom(&m, ten, 0, 1);
    CHECK_CONTAINS(t, "# TYPE berth_sessions gauge\n");
    CHECK(!test_contains(t, "berth_sessions{"));
    free(t);
}

TEST(tenant_limits)
{
    struct gw_metrics m;
    memset(&m, 0, sizeof(m));
    struct cm_tenant ten[3] = {{.name = "a", .max_sessions = 5},
                               {.name = "b"},
                               {.name = "c", .sessions_per_second = 2, .sessions_burst = 4,
                                .max_memory = 1ull << 30, .max_cpu_millis = 2500}};
    struct cm_config cfg = {.tenants = ten, .n_tenants = 3};
    m.tenant_max_sessions[0] = 7;
    m.tenant_session_rate[2] = 9;
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    gw_prom_tenant_limits(&b, &m, &cfg);
    cm_jbuf_raw(&b, "", 1);
    const char *t = b.data;
    check_format(t);
    CHECK_CONTAINS(t, "# TYPE berth_tenant_limit gauge\n");
    CHECK_CONTAINS(t, "berth_tenant_limit{tenant=\"a\",limit=\"max_sessions\"} 5\n");
    CHECK_CONTAINS(t, "berth_tenant_limit{tenant=\"c\",limit=\"sessions_per_second\"} 2\n");
    CHECK_CONTAINS(t, "berth_tenant_limit{tenant=\"c\",limit=\"sessions_burst\"} 4\n");
    CHECK_CONTAINS(t, "berth_tenant_limit{tenant=\"c\",limit=\"max_memory\"} 1073741824\n");
    CHECK_CONTAINS(t, "berth_tenant_limit{tenant=\"c\",limit=\"max_cpus\"} 2.5\n");
    CHECK_CONTAINS(t, "berth_tenant_limited_total{tenant=\"c\",limit=\"max_cpus\"} 0\n");
    CHECK_CONTAINS(t, "# TYPE berth_tenant_limited_total counter\n");
    CHECK_CONTAINS(t, "berth_tenant_limited_total{tenant=\"a\",limit=\"max_sessions\"} 7\n");
    CHECK_CONTAINS(t, "berth_tenant_limited_total{tenant=\"c\",limit=\"sessions_per_second\"} 9\n");
    CHECK(!test_contains(t, "tenant=\"b\""));  /* no limits: no samples */
    cm_jbuf_fini(&b);
    /* no tenant with a limit: nothing at all */
    cm_jbuf_init(&b);
    cfg.n_tenants = 2, ten[0].max_sessions = 0;
    gw_prom_tenant_limits(&b, &m, &cfg);
    CHECK_UINT_EQ(b.len, 0);
    cm_jbuf_fini(&b);
}
