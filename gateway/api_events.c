#include "gateway/api_events.h"

#include <errno.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/httpd.h"
#include "common/json.h"
#include "common/key.h"
#include "common/log.h"
#include "common/redis.h"
#include "common/time.h"
#include "gateway/admin.h"
#include "gateway/api.h"
#include "gateway/api_json.h"
#include "gateway/config.h"

#define KEY_MAX 512
#define TYPES_MAX 16
#define FOLLOW_BATCH 100
#define PING_USEC (15 * CM_USEC_PER_SEC)
#define TRIM_USEC (60 * CM_USEC_PER_SEC)
#define STREAM_HIGH (256 * 1024)

struct ev_query {
    int has_session, follow;
    char session_h[CM_HASH_HEX_LEN + 1];
    char types[TYPES_MAX][33];
    int n_types;
    char since[48]; /* "" = from the start (a page) or from now on (follow) */
    uint32_t limit;
};

struct reader {
    struct reader *prev, *next;
    struct gw_events *ev;
    struct cm_httpd_req *req; /* NULL once gone */
    char key[KEY_MAX];
    struct ev_query q;
    char last[48]; /* follow: the last id sent (or where to start after) */
    struct event *timer;
    cm_usec_t last_write;
    int inflight, streaming, waiting_drain, done;
};

struct gw_events {
    struct event_base *base;
    struct cm_redis *redis;
    const struct gw_config *gc;
    const struct gw_admin_limits *lim;
    struct reader *readers;
    struct event *trim_ev;
};

static const char *prefix(const struct gw_events *ev)
{
    return ev->gc->common->redis.prefix;
}

static void reader_free(struct reader *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        r->ev->readers = r->next;
    if (r->next)
        r->next->prev = r->prev;
    if (r->timer)
        event_free(r->timer);
    free(r);
}

/* Frees <r> once nothing refers to it any more. */
static void settle(struct reader *r)
{
    if (r->done && !r->inflight)
        reader_free(r);
}

static void end_reader(struct reader *r)
{
    if (r->req) {
        cm_httpd_set_close_cb(r->req, NULL, NULL);
        if (r->streaming)
            cm_httpd_stream_end(r->req);
        r->req = NULL;
    }
    r->done = 1;
    if (r->timer)
        evtimer_del(r->timer);
    settle(r);
}

static void on_gone(void *arg)
{
    struct reader *r = arg;
    r->req = NULL;
    r->done = 1;
    if (r->timer)
        evtimer_del(r->timer);
    settle(r);
}

/* ------------------------------------------------------------------ the query */

static int type_ok(const char *t, size_t n)
{
    if (n == 0 || n > 32)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((t[i] >= 'a' && t[i] <= 'z') || t[i] == '_'))
            return 0;
    return 1;
}

/* A stream id: "<ms>-<seq>" or "<ms>", digits only. */
static int id_ok(const char *s, size_t n)
{
    size_t dash = 0, digits = 0;
    if (n == 0 || n > 41)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '-' && !dash && digits) {
            dash = i;
            digits = 0;
        } else if (s[i] >= '0' && s[i] <= '9') {
            digits++;
        } else {
            return 0;
        }
    }
    return digits > 0;
}

static int parse_query(const char *q, const struct cm_tenant *t, uint32_t page_max,
                       struct ev_query *out, const char **err)
{
    memset(out, 0, sizeof(*out));
    out->limit = 100 < page_max ? 100 : page_max;
    for (const char *p = q; p && *p;) {
        const char *amp = strchr(p, '&');
        size_t len = amp ? (size_t)(amp - p) : strlen(p);
        const char *eq = memchr(p, '=', len);
        size_t kl = eq ? (size_t)(eq - p) : len;
        char v[256];
        size_t vl = 0;
        if (eq && gw_api_pct_decode(eq + 1, len - kl - 1, v, sizeof(v) - 1, &vl) < 0) {
            *err = "a query value is malformed or too long";
            return -EINVAL;
        }
        v[vl] = '\0';
        if (kl == 7 && memcmp(p, "session", 7) == 0) {
            if (!cm_key_valid(v, vl)) {
                *err = "session: a session id (1-128 visible ASCII characters)";
                return -EINVAL;
            }
            cm_hash_hex(cm_key_hash(t->name, CM_KEY_SRC_SID, v, vl), out->session_h);
            out->has_session = 1;
        } else if (kl == 4 && memcmp(p, "type", 4) == 0) {
            for (const char *s = v; *s;) {
                size_t n = strcspn(s, ",");
                if (!type_ok(s, n) || out->n_types >= TYPES_MAX) {
                    *err = "type: up to 16 event types of [a-z_], separated by commas";
                    return -EINVAL;
                }
                memcpy(out->types[out->n_types], s, n);
                out->types[out->n_types++][n] = '\0';
                s += n;
                if (*s)
                    s++;
            }
        } else if (kl == 5 && memcmp(p, "since", 5) == 0) {
            if (!id_ok(v, vl)) {
                *err = "since: a stream id such as 1733580000000-0";
                return -EINVAL;
            }
            memcpy(out->since, v, vl + 1);
        } else if (kl == 5 && memcmp(p, "limit", 5) == 0) {
            char *end;
            unsigned long n = strtoul(v, &end, 10);
            if (!vl || *end || n < 1 || n > page_max) {
                *err = "limit: 1 up to gateway.admin.events_page_max";
                return -EINVAL;
            }
            out->limit = (uint32_t)n;
        } else if (kl == 6 && memcmp(p, "follow", 6) == 0) {
            if (strcmp(v, "1") != 0 && strcmp(v, "true") != 0 && strcmp(v, "0") != 0 &&
                strcmp(v, "false") != 0) {
                *err = "follow: 1 or 0";
                return -EINVAL;
            }
            out->follow = v[0] == '1' || v[0] == 't';
        } else {
            *err = "unknown query parameter (known: session, type, since, limit, follow)";
            return -EINVAL;
        }
        p = amp ? amp + 1 : NULL;
    }
    return 0;
}

/* ------------------------------------------------------------------ entries */

/* Whether the entry (fields <f> of XRANGE) passes the query's filters. */
static int wanted(const struct ev_query *q, const redisReply *f)
{
    const char *type = NULL, *session = NULL;
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        const redisReply *k = f->element[i], *v = f->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            return 0;
        if (strcmp(k->str, "type") == 0)
            type = v->str;
        else if (strcmp(k->str, "session") == 0)
            session = v->str;
    }
    if (q->has_session && (!session || strcmp(session, q->session_h) != 0))
        return 0;
    if (!q->n_types)
        return 1;
    for (int i = 0; type && i < q->n_types; i++)
        if (strcmp(type, q->types[i]) == 0)
            return 1;
    return 0;
}

/* {"id":...,"type":...,"ts":N,...}: every field as a string but ts. */
static void entry_json(struct cm_jbuf *b, const redisReply *id, const redisReply *f)
{
    cm_jbuf_raw(b, "{\"id\":", 6);
    cm_jbuf_str(b, id->str, id->len);
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        const redisReply *k = f->element[i], *v = f->element[i + 1];
        cm_jbuf_raw(b, ",", 1);
        cm_jbuf_str(b, k->str, k->len);
        cm_jbuf_raw(b, ":", 1);
        int num = strcmp(k->str, "ts") == 0 && v->len > 0 && v->len < 20 &&
                  strspn(v->str, "0123456789") == v->len;
        if (num)
            cm_jbuf_raw(b, v->str, v->len);
        else
            cm_jbuf_str(b, v->str, v->len);
    }
    cm_jbuf_raw(b, "}", 1);
}

static int entry_ok(const redisReply *e)
{
    return e->type == REDIS_REPLY_ARRAY && e->elements == 2 &&
           e->element[0]->type == REDIS_REPLY_STRING && e->element[1]->type == REDIS_REPLY_ARRAY;
}

/* ------------------------------------------------------------------ a page */

static void on_page(redisReply *reply, const char *err, void *data)
{
    struct reader *r = data;
    r->inflight = 0;
    if (!r->req) {
        r->done = 1;
        settle(r);
        return;
    }
    if (err || !reply || reply->type != REDIS_REPLY_ARRAY) {
        gw_api_reply_error(r->req, GW_ERR_STORE_UNAVAILABLE, NULL, r->ev->gc->retry_after);
        r->req = NULL;
        end_reader(r);
        return;
    }
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    cm_jbuf_raw(&b, "{\"events\":[", 11);
    const char *last = r->q.since;
    int n = 0;
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *e = reply->element[i];
        if (!entry_ok(e))
            continue;
        last = e->element[0]->str;
        if (!wanted(&r->q, e->element[1]))
            continue;
        if (n++)
            cm_jbuf_raw(&b, ",", 1);
        entry_json(&b, e->element[0], e->element[1]);
    }
    cm_jbuf_raw(&b, "],\"next_since\":", 15);
    if (last[0])
        cm_jbuf_cstr(&b, last);
    else
        cm_jbuf_raw(&b, "null", 4);
    cm_jbuf_printf(&b, ",\"more\":%s}", reply->elements >= r->q.limit ? "true" : "false");
    if (b.failed)
        gw_api_reply_error(r->req, GW_ERR_INTERNAL, "out of memory", 0);
    else
        gw_api_reply(r->req, 200, NULL, b.data, b.len);
    cm_jbuf_fini(&b);
    r->req = NULL;
    end_reader(r);
}

/* XRANGE <key> (<after> | - + COUNT <n> */
static int xrange(struct reader *r, const char *after, uint32_t n, cm_redis_reply_cb cb)
{
    char start[52], count[16];
    snprintf(start, sizeof(start), "%s%s", after[0] ? "(" : "", after[0] ? after : "-");
    snprintf(count, sizeof(count), "%u", n);
    const char *argv[] = {"XRANGE", r->key, start, "+", "COUNT", count};
    size_t lens[6];
    for (int i = 0; i < 6; i++)
        lens[i] = strlen(argv[i]);
    int rc = cm_redis_argv(r->ev->redis, cb, r, 6, argv, lens);
    if (rc == 0)
        r->inflight = 1;
    return rc;
}

/* ------------------------------------------------------------------ follow */

static void poll_soon(struct reader *r, cm_usec_t after)
{
    struct timeval tv;
    cm_usec_to_tv(after, &tv);
    evtimer_add(r->timer, &tv);
}

static void on_follow_drain(void *arg)
{
    struct reader *r = arg;
    r->waiting_drain = 0;
    poll_soon(r, 0);
}

static int write_out(struct reader *r, const char *s, size_t n)
{
    long q = cm_httpd_stream_write(r->req, s, n);
    if (q < 0)
        return -1;
    r->last_write = cm_now_mono();
    if (q > STREAM_HIGH) {
        r->waiting_drain = 1;
        cm_httpd_stream_on_drain(r->req, on_follow_drain, r);
    }
    return 0;
}

static void on_follow(redisReply *reply, const char *err, void *data)
{
    struct reader *r = data;
    r->inflight = 0;
    if (!r->req || r->done) {
        r->done = 1;
        settle(r);
        return;
    }
    if (err || !reply || reply->type != REDIS_REPLY_ARRAY) {
        /* Redis away: keep the stream, try again later. */
        poll_soon(r, r->ev->lim->events_poll);
        return;
    }
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *e = reply->element[i];
        if (!entry_ok(e))
            continue;
        snprintf(r->last, sizeof(r->last), "%s", e->element[0]->str);
        if (!wanted(&r->q, e->element[1]))
            continue;
        struct cm_jbuf b;
        cm_jbuf_init(&b);
        const char *type = "event";
        const redisReply *f = e->element[1];
        for (size_t k = 0; k + 1 < f->elements; k += 2)
            if (strcmp(f->element[k]->str, "type") == 0)
                type = f->element[k + 1]->str;
        cm_jbuf_printf(&b, "id: %s\nevent: %s\ndata: ", r->last, type);
        entry_json(&b, e->element[0], f);
        cm_jbuf_raw(&b, "\n\n", 2);
        int rc = b.failed ? -1 : write_out(r, b.data, b.len);
        cm_jbuf_fini(&b);
        if (rc < 0) {
            end_reader(r);
            return;
        }
    }
    if (!r->waiting_drain)
        poll_soon(r, reply->elements >= FOLLOW_BATCH ? 0 : r->ev->lim->events_poll);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct reader *r = arg;
    (void)fd, (void)what;
    if (!r->req || r->inflight)
        return;
    if (cm_now_mono() - r->last_write >= PING_USEC && write_out(r, ": ping\n\n", 8) < 0) {
        end_reader(r);
        return;
    }
    if (xrange(r, r->last, FOLLOW_BATCH, on_follow) < 0)
        poll_soon(r, r->ev->lim->events_poll);
}

/* follow without since: from the stream's last entry on. */
static void on_tail(redisReply *reply, const char *err, void *data)
{
    struct reader *r = data;
    r->inflight = 0;
    if (!r->req || r->done) {
        r->done = 1;
        settle(r);
        return;
    }
    if (!err && reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 1 &&
        entry_ok(reply->element[0]))
        snprintf(r->last, sizeof(r->last), "%s", reply->element[0]->element[0]->str);
    else if (!err && reply && reply->type == REDIS_REPLY_ARRAY)
        snprintf(r->last, sizeof(r->last), "0");
    else
        snprintf(r->last, sizeof(r->last), "%" PRIu64, cm_now_wall_ms());
    poll_soon(r, 0);
}

/* ------------------------------------------------------------------ the module */

void gw_events_handle(struct gw_events *ev, struct cm_httpd_req *req, const struct cm_tenant *t)
{
    struct ev_query q;
    const char *err = NULL;
    if (parse_query(cm_httpd_query(req), t, ev->lim->events_page_max, &q, &err) < 0) {
        gw_api_reply_error(req, GW_ERR_INVALID_ARGUMENT, err, 0);
        return;
    }
    const char *lei = cm_httpd_header(req, "Last-Event-ID");
    if (q.follow && !q.since[0] && lei && id_ok(lei, strlen(lei)) && strlen(lei) < sizeof(q.since))
        snprintf(q.since, sizeof(q.since), "%s", lei);
    struct reader *r = calloc(1, sizeof(*r));
    if (!r) {
        gw_api_reply_error(req, GW_ERR_INTERNAL, "out of memory", 0);
        return;
    }
    r->ev = ev;
    r->req = req;
    r->q = q;
    snprintf(r->key, sizeof(r->key), "%sevents:%s", prefix(ev), t->name);
    r->next = ev->readers;
    if (ev->readers)
        ev->readers->prev = r;
    ev->readers = r;
    cm_httpd_set_close_cb(req, on_gone, r);
    if (!q.follow) {
        if (xrange(r, q.since, q.limit, on_page) < 0) {
            cm_httpd_set_close_cb(req, NULL, NULL);
            gw_api_reply_error(req, GW_ERR_STORE_UNAVAILABLE, NULL, ev->gc->retry_after);
            r->req = NULL;
            end_reader(r);
        }
        return;
    }
    r->timer = evtimer_new(ev->base, on_tick, r);
    (void)cm_httpd_add_header(req, "Cache-Control", "no-store");
    if (!r->timer || cm_httpd_stream_begin(req, 200, "text/event-stream") < 0) {
        if (r->req && !r->timer) {
            cm_httpd_set_close_cb(req, NULL, NULL);
            gw_api_reply_error(req, GW_ERR_INTERNAL, "out of memory", 0);
            r->req = NULL;
        }
        end_reader(r);
        return;
    }
    r->streaming = 1;
    r->last_write = cm_now_mono();
    if (q.since[0]) {
        snprintf(r->last, sizeof(r->last), "%s", q.since);
        poll_soon(r, 0);
        return;
    }
    const char *argv[] = {"XREVRANGE", r->key, "+", "-", "COUNT", "1"};
    size_t lens[6];
    for (int i = 0; i < 6; i++)
        lens[i] = strlen(argv[i]);
    if (cm_redis_argv(ev->redis, on_tail, r, 6, argv, lens) == 0)
        r->inflight = 1;
    else
        on_tail(NULL, "not connected", r);
}

/* Once a minute: every tenant's stream and the global one, by age and length. */
static void on_trim(evutil_socket_t fd, short what, void *arg)
{
    struct gw_events *ev = arg;
    (void)fd, (void)what;
    char minid[32], maxlen[24], key[KEY_MAX];
    uint64_t now = cm_now_wall_ms(), age = ev->lim->events_max_age / CM_USEC_PER_MSEC;
    snprintf(minid, sizeof(minid), "%" PRIu64, now > age ? now - age : 0);
    snprintf(maxlen, sizeof(maxlen), "%" PRIu64, ev->lim->events_max_len);
    const struct cm_config *cfg = ev->gc->common;
    for (size_t i = 0; i <= cfg->n_tenants; i++) {
        if (i < cfg->n_tenants)
            snprintf(key, sizeof(key), "%sevents:%s", prefix(ev), cfg->tenants[i].name);
        else
            snprintf(key, sizeof(key), "%sevents", prefix(ev));
        const char *by_age[] = {"XTRIM", key, "MINID", "~", minid};
        const char *by_len[] = {"XTRIM", key, "MAXLEN", "~", maxlen};
        size_t la[5], ll[5];
        for (int k = 0; k < 5; k++) {
            la[k] = strlen(by_age[k]);
            ll[k] = strlen(by_len[k]);
        }
        (void)cm_redis_argv(ev->redis, NULL, NULL, 5, by_age, la);
        (void)cm_redis_argv(ev->redis, NULL, NULL, 5, by_len, ll);
    }
    struct timeval tv;
    cm_usec_to_tv(TRIM_USEC, &tv);
    evtimer_add(ev->trim_ev, &tv);
}

struct gw_events *gw_events_create(struct event_base *base, struct cm_redis *redis,
                                   const struct gw_config *gc, const struct gw_admin_limits *lim)
{
    struct gw_events *ev = calloc(1, sizeof(*ev));
    if (!ev)
        return NULL;
    ev->base = base;
    ev->redis = redis;
    ev->gc = gc;
    ev->lim = lim;
    ev->trim_ev = evtimer_new(base, on_trim, ev);
    if (!ev->trim_ev) {
        free(ev);
        return NULL;
    }
    struct timeval tv;
    cm_usec_to_tv(TRIM_USEC, &tv);
    evtimer_add(ev->trim_ev, &tv);
    return ev;
}

void gw_events_destroy(struct gw_events *ev)
{
    if (!ev)
        return;
    while (ev->readers) {
        struct reader *r = ev->readers;
        if (r->req && !r->streaming)
            gw_api_reply_error(r->req, GW_ERR_OVERLOADED, "the gateway is shutting down", 0);
        else if (r->req)
            cm_httpd_set_close_cb(r->req, NULL, NULL), cm_httpd_stream_end(r->req);
        r->req = NULL;
        reader_free(r);
    }
    event_free(ev->trim_ev);
    free(ev);
}
