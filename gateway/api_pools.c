#include "gateway/api_pools.h"

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
#include "gateway/config.h"

#define KEY_BUF 512 /* prefix (<= 64) + "pool:" + host + ":" + template */

struct host {
    char id[128];
    uint64_t heartbeat; /* ms since the epoch */
    char driver[32];
    int64_t free, capacity; /* -1: unknown */
    int64_t *warm;          /* per configured template; -1 unknown */
};

struct pools;

/* One reply of the batch: the host's hash (tpl -1) or one pool's length. */
struct slot {
    struct pools *p;
    size_t host;
    int tpl;
};

struct pools {
    struct cm_httpd_req *req; /* NULL once answered */
    struct cm_redis *redis;
    const struct gw_config *gc;
    int waiting, failed;
    struct host *hosts;
    size_t n_hosts;
    struct slot *slots;
};

static void pools_free(struct pools *p)
{
    for (size_t i = 0; i < p->n_hosts; i++)
        free(p->hosts[i].warm);
    free(p->hosts);
    free(p->slots);
    free(p);
}

static void fail(struct pools *p, enum gw_err e, const char *message)
{
    if (!p->req)
        return;
    gw_api_reply_error(p->req, e, message, 0);
    p->req = NULL;
}

static void settle(struct pools *p)
{
    if (!p->req && p->waiting == 0)
        pools_free(p);
}

static int64_t reply_int(const redisReply *e)
{
    if (!e)
        return -1;
    if (e->type == REDIS_REPLY_INTEGER)
        return e->integer;
    if (e->type == REDIS_REPLY_STRING) {
        char *end;
        long long v = strtoll(e->str, &end, 10);
        return *end || end == e->str ? -1 : v;
    }
    return -1;
}

static void answer(struct pools *p)
{
    if (p->failed) {
        fail(p, GW_ERR_STORE_UNAVAILABLE, NULL);
        return;
    }
    const struct cm_config *cfg = p->gc->common;
    uint64_t now = cm_now_wall_ms();
    uint64_t stale = p->gc->host_stale / CM_USEC_PER_MSEC;
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    cm_jbuf_raw(&b, "{\"hosts\":[", 10);
    for (size_t i = 0; i < p->n_hosts; i++) {
        const struct host *h = &p->hosts[i];
        uint64_t age = now > h->heartbeat ? now - h->heartbeat : 0;
        cm_jbuf_raw(&b, i ? ",{\"id\":" : "{\"id\":", i ? 7 : 6);
        cm_jbuf_cstr(&b, h->id);
        cm_jbuf_printf(&b, ",\"alive\":%s,\"heartbeat_ms\":%" PRIu64,
                       age <= stale ? "true" : "false", h->heartbeat);
        cm_jbuf_printf(&b, ",\"heartbeat_age_ms\":%" PRIu64 ",\"driver\":", age);
        if (h->driver[0])
            cm_jbuf_cstr(&b, h->driver);
        else
            cm_jbuf_raw(&b, "null", 4);
        if (h->free >= 0)
            cm_jbuf_printf(&b, ",\"free\":%" PRId64, h->free);
        else
            cm_jbuf_raw(&b, ",\"free\":null", 12);
        if (h->capacity >= 0)
            cm_jbuf_printf(&b, ",\"capacity\":%" PRId64, h->capacity);
        else
            cm_jbuf_raw(&b, ",\"capacity\":null", 16);
        cm_jbuf_raw(&b, ",\"pools\":{", 10);
        for (size_t t = 0; t < cfg->n_templates; t++) {
            if (t)
                cm_jbuf_raw(&b, ",", 1);
            cm_jbuf_cstr(&b, cfg->templates[t].name);
            cm_jbuf_printf(&b, ":%" PRId64, h->warm[t] < 0 ? 0 : h->warm[t]);
        }
        cm_jbuf_raw(&b, "}}", 2);
    }
    cm_jbuf_raw(&b, "],\"templates\":{", 15);
    for (size_t t = 0; t < cfg->n_templates; t++) {
        int64_t warm = 0;
        for (size_t i = 0; i < p->n_hosts; i++) {
            uint64_t hb = p->hosts[i].heartbeat;
            if ((now > hb ? now - hb : 0) <= stale && p->hosts[i].warm[t] > 0)
                warm += p->hosts[i].warm[t];
        }
        if (t)
            cm_jbuf_raw(&b, ",", 1);
        cm_jbuf_cstr(&b, cfg->templates[t].name);
        cm_jbuf_printf(&b, ":{\"warm\":%" PRId64 ",\"pool_min\":%u,\"pool_max\":%u}", warm,
                       cfg->templates[t].pool_min, cfg->templates[t].pool_max);
    }
    cm_jbuf_raw(&b, "}}", 2);
    if (b.failed)
        fail(p, GW_ERR_INTERNAL, "out of memory");
    else
        gw_api_reply(p->req, 200, NULL, b.data, b.len);
    p->req = NULL;
    cm_jbuf_fini(&b);
}

static void on_item(redisReply *r, const char *err, void *data)
{
    struct slot *s = data;
    struct pools *p = s->p;
    struct host *h = &p->hosts[s->host];
    p->waiting--;
    if (err) {
        p->failed = 1;
    } else if (s->tpl >= 0) {
        h->warm[s->tpl] = reply_int(r);
    } else if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 3) {
        h->free = reply_int(r->element[0]);
        h->capacity = reply_int(r->element[1]);
        if (r->element[2]->type == REDIS_REPLY_STRING)
            snprintf(h->driver, sizeof(h->driver), "%s", r->element[2]->str);
    }
    if (p->waiting == 0)
        answer(p);
    settle(p);
}

static int send_cmd(struct pools *p, struct slot *s, int argc, const char **argv)
{
    size_t lens[8];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    if (cm_redis_argv(p->redis, on_item, s, argc, argv, lens) < 0)
        return -1;
    p->waiting++;
    return 0;
}

static void on_hosts(redisReply *r, const char *err, void *data)
{
    struct pools *p = data;
    const struct cm_config *cfg = p->gc->common;
    p->waiting--;
    if (err || !r || r->type != REDIS_REPLY_ARRAY) {
        fail(p, GW_ERR_STORE_UNAVAILABLE, NULL);
        settle(p);
        return;
    }
    size_t n = r->elements / 2, nt = cfg->n_templates;
    p->hosts = calloc(n ? n : 1, sizeof(*p->hosts));
    p->slots = calloc(n ? n * (nt + 1) : 1, sizeof(*p->slots));
    if (!p->hosts || !p->slots) {
        fail(p, GW_ERR_INTERNAL, "out of memory");
        settle(p);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        struct host *h = &p->hosts[i];
        const redisReply *id = r->element[2 * i], *score = r->element[2 * i + 1];
        h->free = h->capacity = -1;
        h->warm = calloc(nt ? nt : 1, sizeof(*h->warm));
        if (!h->warm) {
            fail(p, GW_ERR_INTERNAL, "out of memory");
            settle(p);
            return;
        }
        p->n_hosts++;
        for (size_t t = 0; t < nt; t++)
            h->warm[t] = -1;
        if (id->type == REDIS_REPLY_STRING)
            snprintf(h->id, sizeof(h->id), "%s", id->str);
        if (score->type == REDIS_REPLY_STRING)
            h->heartbeat = strtoull(score->str, NULL, 10);
    }
    const char *prefix = cfg->redis.prefix;
    for (size_t i = 0; i < n && !p->failed; i++) {
        char key[KEY_BUF];
        struct slot *s = &p->slots[i * (nt + 1)];
        *s = (struct slot){.p = p, .host = i, .tpl = -1};
        snprintf(key, sizeof(key), "%shost:%s", prefix, p->hosts[i].id);
        const char *hm[] = {"HMGET", key, "free", "capacity", "driver"};
        if (send_cmd(p, s, 5, hm) < 0)
            p->failed = 1;
        for (size_t t = 0; t < nt && !p->failed; t++) {
            s = &p->slots[i * (nt + 1) + 1 + t];
            *s = (struct slot){.p = p, .host = i, .tpl = (int)t};
            snprintf(key, sizeof(key), "%spool:%s:%s", prefix, p->hosts[i].id,
                     cfg->templates[t].name);
            const char *ll[] = {"LLEN", key};
            if (send_cmd(p, s, 2, ll) < 0)
                p->failed = 1;
        }
    }
    if (p->waiting == 0)
        answer(p);
    settle(p);
}

void gw_api_pools(struct cm_redis *redis, const struct gw_config *gc, uint32_t max_hosts,
                  struct cm_httpd_req *req)
{
    struct pools *p = calloc(1, sizeof(*p));
    if (!p) {
        gw_api_reply_error(req, GW_ERR_INTERNAL, "out of memory", 0);
        return;
    }
    p->req = req;
    p->redis = redis;
    p->gc = gc;
    char key[KEY_BUF], stop[24];
    snprintf(key, sizeof(key), "%shosts", gc->common->redis.prefix);
    snprintf(stop, sizeof(stop), "%u", max_hosts ? max_hosts - 1 : 0);
    const char *argv[] = {"ZRANGE", key, "0", stop, "WITHSCORES"};
    size_t lens[5];
    for (int i = 0; i < 5; i++)
        lens[i] = strlen(argv[i]);
    if (cm_redis_argv(redis, on_hosts, p, 5, argv, lens) < 0)
        fail(p, GW_ERR_STORE_UNAVAILABLE, NULL);
    else
        p->waiting++;
    settle(p);
}
