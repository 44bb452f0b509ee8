/* GET /v1/usage?from=<ms>&to=<ms>&group_by=session|template (issue 17): the caller's tenant's
 * usage, summed over the hours of [from, to) (the records are hourly: P u:{tenant}:{hour},
 * common/store.h USAGE), per session or per template:
 *   {"from","to","group_by","granularity_ms":3600000,"usage":[{"session","id","template" |
 *    "template", "requests","bytes_in","bytes_out","wall_ms","active_ms","idle_ms",
 *    "paused_ms","cpu_ms","mem_peak_bytes","mem_avg_bytes","egress_bytes_out",
 *    "egress_bytes_in"}...]}
 * idle_ms = wall_ms - active_ms - paused_ms (not below 0); mem_avg_bytes = the memory's
 * integral over time / wall_ms. from defaults to 24 h before to, to to now; at most 31 days
 * (744 hours) per query. On the admin loop. */
#include "gateway/api_usage.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/httpd.h"
#include "common/json.h"
#include "common/redis.h"
#include "common/time.h"
#include "gateway/api.h"
#include "gateway/api_json.h"
#include "gateway/config.h"

#define HOUR_MS ((uint64_t)3600000)
#define MAX_HOURS 744

enum metric {
    M_REQ, M_IN, M_OUT, M_WALL, M_ACTIVE, M_PAUSED, M_CPU, M_MEMPEAK, M_MEMKIBMS,
    M_EGOUT, M_EGIN, M_N
};
static const char *const metric_names[M_N] = {"requests",   "bytes_in",   "bytes_out",
                                              "wall_ms",    "active_ms",  "paused_ms",
                                              "cpu_ms",     "mem_peak",   "mem_kib_ms",
                                              "egress_out", "egress_in"};

struct group {
    char *key; /* the session hash or the template */
    char *tpl; /* by session: its template */
    char *id;  /* by session: its id, when known */
    uint64_t m[M_N];
};

struct uq {
    struct cm_httpd_req *req;
    const struct gw_config *gc;
    struct cm_redis *redis;
    char tenant[128];
    uint64_t from, to;
    int by_template;
    int waiting, failed;
    struct group *groups;
    size_t n, cap;
};

static struct group *group_of(struct uq *q, const char *key, size_t kl)
{
    for (size_t i = 0; i < q->n; i++) /* a tenant's groups in a query: hundreds at most */
        if (strlen(q->groups[i].key) == kl && memcmp(q->groups[i].key, key, kl) == 0)
            return &q->groups[i];
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 64;
        struct group *g = realloc(q->groups, cap * sizeof(*g));
        if (!g)
            return NULL;
        q->groups = g;
        q->cap = cap;
    }
    struct group *g = &q->groups[q->n];
    memset(g, 0, sizeof(*g));
    if (!(g->key = strndup(key, kl)))
        return NULL;
    q->n++;
    return g;
}

static void uq_free(struct uq *q)
{
    for (size_t i = 0; i < q->n; i++) {
        free(q->groups[i].key);
        free(q->groups[i].tpl);
        free(q->groups[i].id);
    }
    free(q->groups);
    free(q);
}

static void answer(struct uq *q)
{
    if (!q->req) {
        uq_free(q);
        return;
    }
    if (q->failed) {
        gw_api_reply_error(q->req, GW_ERR_STORE_UNAVAILABLE, NULL, q->gc->retry_after);
        uq_free(q);
        return;
    }
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    cm_jbuf_printf(&b,
                   "{\"from\":%" PRIu64 ",\"to\":%" PRIu64 ",\"group_by\":\"%s\","
                   "\"granularity_ms\":%" PRIu64 ",\"usage\":[",
                   q->from, q->to, q->by_template ? "template" : "session", HOUR_MS);
    for (size_t i = 0; i < q->n; i++) {
        const struct group *g = &q->groups[i];
        const uint64_t *m = g->m;
        uint64_t busy = m[M_ACTIVE] + m[M_PAUSED];
        uint64_t idle = m[M_WALL] > busy ? m[M_WALL] - busy : 0;
        uint64_t avg = m[M_WALL] ? m[M_MEMKIBMS] * 1024 / m[M_WALL] : 0;
        cm_jbuf_raw(&b, i ? ",{" : "{", i ? 2 : 1);
        if (q->by_template) {
            cm_jbuf_raw(&b, "\"template\":", 11);
            cm_jbuf_cstr(&b, g->key);
        } else {
            cm_jbuf_raw(&b, "\"session\":", 10);
            cm_jbuf_cstr(&b, g->key);
            cm_jbuf_raw(&b, ",\"id\":", 6);
            if (g->id && gw_api_utf8_valid(g->id, strlen(g->id)))
                cm_jbuf_cstr(&b, g->id);
            else
                cm_jbuf_raw(&b, "null", 4);
            cm_jbuf_raw(&b, ",\"template\":", 12);
            cm_jbuf_cstr(&b, g->tpl ? g->tpl : "");
        }
        cm_jbuf_printf(&b,
                       ",\"requests\":%" PRIu64 ",\"bytes_in\":%" PRIu64 ",\"bytes_out\":%" PRIu64
                       ",\"wall_ms\":%" PRIu64 ",\"active_ms\":%" PRIu64 ",\"idle_ms\":%" PRIu64
                       ",\"paused_ms\":%" PRIu64 ",\"cpu_ms\":%" PRIu64
                       ",\"mem_peak_bytes\":%" PRIu64 ",\"mem_avg_bytes\":%" PRIu64
                       ",\"egress_bytes_out\":%" PRIu64 ",\"egress_bytes_in\":%" PRIu64 "}",
                       m[M_REQ], m[M_IN], m[M_OUT], m[M_WALL], m[M_ACTIVE], idle, m[M_PAUSED],
                       m[M_CPU], m[M_MEMPEAK], avg, m[M_EGOUT], m[M_EGIN]);
    }
    cm_jbuf_raw(&b, "]}", 2);
    if (b.failed)
        gw_api_reply_error(q->req, GW_ERR_INTERNAL, "out of memory", 0);
    else
        gw_api_reply(q->req, 200, NULL, b.data, b.len);
    cm_jbuf_fini(&b);
    uq_free(q);
}

static void on_gone(void *arg)
{
    ((struct uq *)arg)->req = NULL;
}

static void settle(struct uq *q)
{
    if (q->waiting == 0) {
        if (q->req)
            cm_httpd_set_close_cb(q->req, NULL, NULL);
        answer(q);
    }
}

/* One hour's counters: "<h>|<template>|<metric>" -> value. */
static void on_hour(redisReply *r, const char *err, void *data)
{
    struct uq *q = data;
    q->waiting--;
    if (err || !r || r->type != REDIS_REPLY_ARRAY) {
        q->failed = 1;
        settle(q);
        return;
    }
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const redisReply *f = r->element[i], *v = r->element[i + 1];
        if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        const char *a = memchr(f->str, '|', f->len);
        const char *b = a ? memchr(a + 1, '|', f->len - (size_t)(a + 1 - f->str)) : NULL;
        if (!b)
            continue;
        const char *metric = b + 1;
        int m = -1;
        for (int k = 0; k < M_N && m < 0; k++)
            if (strlen(metric_names[k]) == f->len - (size_t)(metric - f->str) &&
                memcmp(metric, metric_names[k], strlen(metric_names[k])) == 0)
                m = k;
        if (m < 0)
            continue;
        struct group *g = q->by_template ? group_of(q, a + 1, (size_t)(b - a - 1))
                                         : group_of(q, f->str, (size_t)(a - f->str));
        if (!g) {
            q->failed = 1;
            break;
        }
        if (!q->by_template && !g->tpl)
            g->tpl = strndup(a + 1, (size_t)(b - a - 1));
        uint64_t val = strtoull(v->str, NULL, 10);
        if (m == M_MEMPEAK)
            g->m[m] = val > g->m[m] ? val : g->m[m];
        else
            g->m[m] += val;
    }
    settle(q);
}

/* One hour's session ids (by session only). */
static void on_ids(redisReply *r, const char *err, void *data)
{
    struct uq *q = data;
    q->waiting--;
    if (!err && r && r->type == REDIS_REPLY_ARRAY)
        for (size_t i = 0; i + 1 < r->elements; i += 2) {
            const redisReply *h = r->element[i], *id = r->element[i + 1];
            if (h->type != REDIS_REPLY_STRING || id->type != REDIS_REPLY_STRING)
                continue;
            struct group *g = group_of(q, h->str, h->len);
            if (g && !g->id)
                g->id = strndup(id->str, id->len);
        }
    settle(q);
}

static void on_hours(redisReply *r, const char *err, void *data)
{
    struct uq *q = data;
    q->waiting--;
    if (err || !r || r->type != REDIS_REPLY_ARRAY) {
        q->failed = 1;
        settle(q);
        return;
    }
    const char *prefix = q->gc->common->redis.prefix;
    for (size_t i = 0; i < r->elements && !q->failed; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_STRING)
            continue;
        char key[512], ids[520];
        snprintf(key, sizeof(key), "%su:%s:%s", prefix, q->tenant, e->str);
        snprintf(ids, sizeof(ids), "%s:ids", key);
        const char *a1[] = {"HGETALL", key}, *a2[] = {"HGETALL", ids};
        size_t l1[] = {7, strlen(key)}, l2[] = {7, strlen(ids)};
        if (cm_redis_argv(q->redis, on_hour, q, 2, a1, l1) == 0)
            q->waiting++;
        else
            q->failed = 1;
        if (!q->by_template && !q->failed) {
            if (cm_redis_argv(q->redis, on_ids, q, 2, a2, l2) == 0)
                q->waiting++;
            else
                q->failed = 1;
        }
    }
    settle(q);
}

static int num_param(const char *query, const char *name, uint64_t *ret, int *present)
{
    size_t nl = strlen(name);
    for (const char *p = query; p && *p;) {
        const char *amp = strchr(p, '&');
        size_t len = amp ? (size_t)(amp - p) : strlen(p);
        if (len > nl && memcmp(p, name, nl) == 0 && p[nl] == '=') {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(p + nl + 1, &end, 10);
            if (errno || end != p + len || end == p + nl + 1)
                return -1;
            *ret = v;
            *present = 1;
        }
        p = amp ? amp + 1 : NULL;
    }
    return 0;
}

void gw_api_usage(struct event_base *base, struct cm_redis *redis, const struct gw_config *gc,
                  struct cm_httpd_req *req, const struct cm_tenant *t)
{
    (void)base;
    const char *query = cm_httpd_query(req);
    uint64_t now = cm_now_wall_ms(), from = 0, to = now;
    int has_from = 0, has_to = 0, by_template = 0;
    for (const char *p = query; p && *p;) { /* only known parameters */
        const char *amp = strchr(p, '&');
        size_t len = amp ? (size_t)(amp - p) : strlen(p);
        if (!((len > 5 && memcmp(p, "from=", 5) == 0) || (len > 3 && memcmp(p, "to=", 3) == 0) ||
              (len == 17 && memcmp(p, "group_by=template", 17) == 0) ||
              (len == 16 && memcmp(p, "group_by=session", 16) == 0))) {
            gw_api_reply_error(req, GW_ERR_INVALID_ARGUMENT,
                               "known: from, to (ms since the epoch), group_by=session|template",
                               0);
            return;
        }
        if (len == 17)
            by_template = 1;
        p = amp ? amp + 1 : NULL;
    }
    if (num_param(query, "from", &from, &has_from) < 0 ||
        num_param(query, "to", &to, &has_to) < 0) {
        gw_api_reply_error(req, GW_ERR_INVALID_ARGUMENT, "from, to: ms since the epoch", 0);
        return;
    }
    if (!has_from)
        from = to > 24 * HOUR_MS ? to - 24 * HOUR_MS : 0;
    if (from >= to || to - from > MAX_HOURS * HOUR_MS) {
        gw_api_reply_error(req, GW_ERR_INVALID_ARGUMENT,
                           "from must be before to, at most 31 days apart", 0);
        return;
    }
    struct uq *q = calloc(1, sizeof(*q));
    if (!q) {
        gw_api_reply_error(req, GW_ERR_INTERNAL, "out of memory", 0);
        return;
    }
    q->req = req;
    q->gc = gc;
    q->redis = redis;
    q->from = from;
    q->to = to;
    q->by_template = by_template;
    snprintf(q->tenant, sizeof(q->tenant), "%s", t->name);
    char key[512], lo[24], hi[24];
    snprintf(key, sizeof(key), "%su:%s", gc->common->redis.prefix, t->name);
    snprintf(lo, sizeof(lo), "%" PRIu64, from / HOUR_MS * HOUR_MS);
    snprintf(hi, sizeof(hi), "(%" PRIu64, to);
    const char *argv[] = {"ZRANGEBYSCORE", key, lo, hi};
    size_t lens[] = {13, strlen(key), strlen(lo), strlen(hi)};
    cm_httpd_set_close_cb(req, on_gone, q);
    if (cm_redis_argv(redis, on_hours, q, 4, argv, lens) == 0) {
        q->waiting = 1;
        return;
    }
    q->failed = 1;
    settle(q);
}
