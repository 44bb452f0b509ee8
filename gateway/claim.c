#include "gateway/claim.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/json.h"
#include "common/log.h"
#include "common/redis.h"
#include "common/secret.h"
#include "common/store.h"
#include "gateway/config.h"

enum claim_state {
    CLAIM_SCRIPT,  /* waiting for the claim script */
    CLAIM_START,   /* waiting for a scheduler's /v1/start */
    CLAIM_DEFERRED, /* Redis not connected: the failure is delivered by a zero timer */
    CLAIM_DONE,
};

struct gw_claim {
    struct gw_claim *next, *prev;
    struct gw_claimer *c;
    enum claim_state state;
    int cancelled;
    gw_claim_cb cb;
    void *data;
    struct gw_binding b;
    char tenant[64];
    char source[8];
    char key[CM_KEY_MAX + 1];
    size_t key_len;
    char tpl[64];
    uint64_t ttl_ms, idle_ms;
    int fail_on_lost;
    enum gw_claim_mode mode;
    char *meta;
    char key_id[13]; /* "" unless a control API call asks (gw_claim_req) */
    uint32_t max_sessions;        /* the tenant's (or the API key's) max_sessions; 0: none */
    uint32_t rate, burst;         /* ... and sessions_per_second, sessions_burst */
    const struct cm_tenant *tcfg; /* the tenant's config entry, NULL: none (a route's tenant) */
    struct evhttp_connection *http;
    struct event *timeout_ev;
    char api[136]; /* the scheduler asked to start (CLAIM_START), for logs */
};

struct gw_claimer {
    struct event_base *base;
    struct cm_redis *redis;
    const struct gw_config *gc;
    struct gw_metrics *m;
    struct gw_claim *running;
    cm_usec_t refused_logged; /* a scheduler's 401 was last logged (monotonic) */
    unsigned refused_quiet;   /* 401s not logged since */
};

struct gw_claimer *gw_claimer_create(struct event_base *base, struct cm_redis *redis,
                                     const struct gw_config *gc, struct gw_metrics *m)
{
    struct gw_claimer *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->base = base;
    c->redis = redis;
    c->gc = gc;
    c->m = m;
    return c;
}

static void claim_free(struct gw_claim *cl)
{
    struct gw_claimer *c = cl->c;
    if (cl->prev)
        cl->prev->next = cl->next;
    else if (c->running == cl)
        c->running = cl->next;
    if (cl->next)
        cl->next->prev = cl->prev;
    if (cl->timeout_ev)
        event_free(cl->timeout_ev);
    if (cl->http)
        evhttp_connection_free(cl->http);
    free(cl->meta);
    free(cl);
}

void gw_claimer_destroy(struct gw_claimer *c)
{
    if (!c)
        return;
    /* Claims waiting on Redis are freed when their reply (or the disconnect) arrives; mark them
     * cancelled and detached. HTTP starts are freed here. */
    struct gw_claim *cl = c->running;
    while (cl) {
        struct gw_claim *next = cl->next;
        cl->cancelled = 1;
        cl->prev = cl->next = NULL;
        if (cl->state == CLAIM_START || cl->state == CLAIM_DEFERRED) {
            cl->c = c;
            c->running = NULL;
            claim_free(cl);
        } else {
            cl->c = NULL;
        }
        cl = next;
    }
    c->running = NULL;
    free(c);
}

static void finish(struct gw_claim *cl, int err)
{
    cl->state = CLAIM_DONE;
    struct gw_claimer *c = cl->c;
    if (!cl->cancelled && c) {
        GW_METRIC_INC(c->m, claims[err < 0 ? cl->b.how : GW_CLAIM_FAILED]);
        size_t i = cl->tcfg ? (size_t)(cl->tcfg - c->gc->common->tenants) : GW_TENANT_SLOTS;
        if (err == GW_ERR_TENANT_MAX_SESSIONS && i < GW_TENANT_SLOTS)
            GW_METRIC_INC(c->m, tenant_max_sessions[i]);
        else if (err == GW_ERR_TENANT_SESSION_RATE && i < GW_TENANT_SLOTS)
            GW_METRIC_INC(c->m, tenant_session_rate[i]);
        else if (err == GW_ERR_TENANT_MAX_MEMORY && i < GW_TENANT_SLOTS)
            GW_METRIC_INC(c->m, tenant_max_memory[i]);
        else if (err == GW_ERR_TENANT_MAX_CPUS && i < GW_TENANT_SLOTS)
            GW_METRIC_INC(c->m, tenant_max_cpus[i]);
        cl->cb(err < 0 ? &cl->b : NULL, err, cl->data);
    }
    if (c)
        claim_free(cl);
    else
        free(cl->meta), free(cl);
}

static void on_unavailable(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    finish(arg, GW_ERR_STORE_UNAVAILABLE);
}

static void on_start_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    finish(arg, GW_ERR_NO_CAPACITY);
}

static int copy_str(char *dst, size_t cap, const struct cm_json *j)
{
    if (!j || j->type != CM_JSON_STRING || j->len == 0 || j->len >= cap)
        return -1;
    memcpy(dst, j->str, j->len + 1);
    return 0;
}

static void free_start_conn(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    evhttp_connection_free(arg);
}

static void on_start_reply(struct evhttp_request *req, void *arg)
{
    struct gw_claim *cl = arg;
    if (cl->state != CLAIM_START)
        return;
    int status = req ? evhttp_request_get_response_code(req) : 0;
    /* The connection must outlive this callback: free it on the next loop turn. (libevent 2.1
     * reads its auto-free flag before calling us, and a kept-alive connection would only be
     * auto-freed once the scheduler closes it: LeakSanitizer finds both.) */
    static const struct timeval zero = {0, 0};
    if (event_base_once(cl->c->base, -1, EV_TIMEOUT, free_start_conn, cl->http, &zero) < 0)
        evhttp_connection_free_on_completion(cl->http);
    cl->http = NULL;
    if (status == 401) {
        /* Our scheduler.api_secret is not the scheduler's: a configuration error, not a lack
         * of capacity (a retry would not help). Logged at most once a second per loop. */
        struct gw_claimer *c = cl->c;
        cm_usec_t now = cm_now_mono();
        if (!c->refused_logged || now - c->refused_logged >= CM_USEC_PER_SEC) {
            cm_log_error("claim",
                         "scheduler refused the start: scheduler.api_secret differs from the "
                         "scheduler's status=401 api=%s not_logged=%u",
                         cl->api, c->refused_quiet);
            c->refused_logged = now;
            c->refused_quiet = 0;
        } else {
            c->refused_quiet++;
        }
        finish(cl, GW_ERR_INTERNAL);
        return;
    }
    if (status == 429) { /* the scheduler's bind found the tenant at a limit: which one */
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        size_t n = evbuffer_get_length(in);
        const char *body = n ? (const char *)evbuffer_pullup(in, -1) : NULL;
        enum gw_err e = GW_ERR_TENANT_MAX_SESSIONS;
        if (body && memmem(body, n, "max_memory", 10))
            e = GW_ERR_TENANT_MAX_MEMORY;
        else if (body && memmem(body, n, "max_cpus", 8))
            e = GW_ERR_TENANT_MAX_CPUS;
        finish(cl, e);
        return;
    }
    if (!req || status != 200) {
        /* 503 from the scheduler, a timeout or a connection failure: no capacity now. */
        finish(cl, GW_ERR_NO_CAPACITY);
        return;
    }
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    const char *body = (const char *)evbuffer_pullup(in, -1);
    char err[64];
    struct cm_json *j = body ? cm_json_parse(body, len, err, sizeof(err)) : NULL;
    const struct cm_json *gen = cm_json_get(j, "gen");
    if (!j || copy_str(cl->b.instance, sizeof(cl->b.instance), cm_json_get(j, "instance")) ||
        copy_str(cl->b.addr, sizeof(cl->b.addr), cm_json_get(j, "addr"))) {
        cm_json_free(j);
        finish(cl, GW_ERR_INTERNAL);
        return;
    }
    if (gen && gen->type == CM_JSON_NUMBER)
        cl->b.gen = (uint64_t)gen->number;
    else if (gen && gen->type == CM_JSON_STRING)
        cl->b.gen = strtoull(gen->str, NULL, 10);
    const struct cm_json *st = cm_json_get(j, "status");
    cl->b.how = (st && st->type == CM_JSON_STRING && strcmp(st->str, "bound") == 0)
                    ? GW_CLAIM_BOUND
                    : GW_CLAIM_STARTED;
    cm_json_free(j);
    finish(cl, -1);
}

static int start_on_scheduler(struct gw_claim *cl, const char *api)
{
    struct gw_claimer *c = cl->c;
    char host[128];
    const char *colon = strrchr(api, ':');
    if (!colon || (size_t)(colon - api) >= sizeof(host))
        return -EINVAL;
    memcpy(host, api, (size_t)(colon - api));
    host[colon - api] = '\0';
    int port = atoi(colon + 1);
    if (port <= 0 || port > 65535)
        return -EINVAL;
    snprintf(cl->api, sizeof(cl->api), "%s", api);
    cl->http = evhttp_connection_base_new(c->base, NULL, host, (unsigned short)port);
    if (!cl->http)
        return -ENOMEM;
    int secs = (int)(c->gc->limits.start_timeout / CM_USEC_PER_SEC) + 1;
    evhttp_connection_set_timeout(cl->http, secs);
    evhttp_connection_set_retries(cl->http, 0);
    struct evhttp_request *req = evhttp_request_new(on_start_reply, cl);
    if (!req)
        return -ENOMEM;
    struct cm_jbuf jb;
    cm_jbuf_init(&jb);
    cm_jbuf_raw(&jb, "{\"template\":", 12);
    cm_jbuf_cstr(&jb, cl->tpl);
    cm_jbuf_raw(&jb, ",\"session\":", 11);
    cm_jbuf_cstr(&jb, cl->b.hash_hex);
    cm_jbuf_raw(&jb, ",\"tenant\":", 10);
    cm_jbuf_cstr(&jb, cl->tenant);
    cm_jbuf_raw(&jb, ",\"source\":", 10);
    cm_jbuf_cstr(&jb, cl->source);
    cm_jbuf_raw(&jb, ",\"key\":", 7);
    cm_jbuf_str(&jb, cl->key, cl->key_len);
    if (cl->key_id[0]) {
        cm_jbuf_raw(&jb, ",\"key_id\":", 10);
        cm_jbuf_cstr(&jb, cl->key_id);
    }
    cm_jbuf_printf(&jb, ",\"ttl_ms\":%" PRIu64 ",\"idle_ms\":%" PRIu64, cl->ttl_ms, cl->idle_ms);
    if (cl->max_sessions)
        cm_jbuf_printf(&jb, ",\"max_sessions\":%" PRIu32, cl->max_sessions);
    if (cl->tcfg && (cl->tcfg->max_memory || cl->tcfg->max_cpu_millis))
        cm_jbuf_printf(&jb, ",\"max_memory\":%" PRIu64 ",\"max_cpu_millis\":%" PRIu64,
                       cl->tcfg->max_memory, cl->tcfg->max_cpu_millis);
    if (cl->meta) {
        cm_jbuf_raw(&jb, ",\"meta\":", 8);
        cm_jbuf_cstr(&jb, cl->meta);
    }
    cm_jbuf_raw(&jb, "}", 1);
    if (jb.failed) {
        cm_jbuf_fini(&jb);
        evhttp_request_free(req);
        return -ENOMEM;
    }
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Host", api);
    evhttp_add_header(h, "Content-Type", "application/json");
    if (c->gc->scheduler_secret) {
        char auth[CM_SECRET_MAX + 8];
        snprintf(auth, sizeof(auth), "Bearer %s", c->gc->scheduler_secret);
        int rc = evhttp_add_header(h, "Authorization", auth); /* copies it */
        explicit_bzero(auth, sizeof(auth));
        if (rc < 0) {
            evhttp_request_free(req);
            return -ENOMEM;
        }
    }
    evbuffer_add(evhttp_request_get_output_buffer(req), jb.data, jb.len);
    cm_jbuf_fini(&jb);
    /* evhttp frees <req> after the callback, and also when this call fails. */
    if (evhttp_make_request(cl->http, req, EVHTTP_REQ_POST, "/v1/start") < 0)
        return -EIO;
    cl->timeout_ev = evtimer_new(c->base, on_start_timeout, cl);
    if (!cl->timeout_ev)
        return -ENOMEM;
    struct timeval tv;
    cm_usec_to_tv(c->gc->limits.start_timeout, &tv);
    evtimer_add(cl->timeout_ev, &tv);
    cl->state = CLAIM_START;
    return 0;
}

static const char *reply_str(const redisReply *r, size_t i)
{
    if (!r || r->type != REDIS_REPLY_ARRAY || i >= r->elements)
        return "";
    const redisReply *e = r->element[i];
    return e->type == REDIS_REPLY_STRING || e->type == REDIS_REPLY_STATUS ? e->str : "";
}

static void on_script(redisReply *reply, const char *err, void *data)
{
    struct gw_claim *cl = data;
    if (!cl->c) { /* claimer destroyed meanwhile */
        free(cl->meta);
        free(cl);
        return;
    }
    if (cl->cancelled) {
        claim_free(cl);
        return;
    }
    if (err || !reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 1) {
        finish(cl, GW_ERR_STORE_UNAVAILABLE);
        return;
    }
    const char *status = reply_str(reply, 0);
    if (cl->mode == GW_CLAIM_MODE_ALIAS) {
        if (strcmp(status, "bound") != 0 || reply->elements < 5 ||
            cm_hash_parse(reply_str(reply, 4), strlen(reply_str(reply, 4)), &cl->b.session) < 0) {
            finish(cl, GW_ERR_NOT_FOUND);
            return;
        }
        cm_hash_hex(cl->b.session, cl->b.session_hex);
        snprintf(cl->b.instance, sizeof(cl->b.instance), "%s", reply_str(reply, 1));
        snprintf(cl->b.addr, sizeof(cl->b.addr), "%s", reply_str(reply, 2));
        cl->b.gen = strtoull(reply_str(reply, 3), NULL, 10);
        cl->b.how = GW_CLAIM_BOUND;
        finish(cl, -1);
        return;
    }
    if (reply->elements < 5) {
        finish(cl, GW_ERR_STORE_UNAVAILABLE);
        return;
    }
    if (strcmp(status, "bound") == 0 || strcmp(status, "new") == 0) {
        snprintf(cl->b.instance, sizeof(cl->b.instance), "%s", reply_str(reply, 1));
        snprintf(cl->b.addr, sizeof(cl->b.addr), "%s", reply_str(reply, 2));
        cl->b.gen = strtoull(reply_str(reply, 3), NULL, 10);
        cl->b.how = status[0] == 'b' ? GW_CLAIM_BOUND : GW_CLAIM_NEW;
        finish(cl, -1);
    } else if (strcmp(status, "empty") == 0) {
        const char *api = reply_str(reply, 4);
        if (!*api || cl->mode == GW_CLAIM_MODE_LOOKUP || start_on_scheduler(cl, api) < 0)
            finish(cl, GW_ERR_NO_CAPACITY);
    } else if (strcmp(status, "lost") == 0) {
        finish(cl, GW_ERR_INSTANCE_LOST);
    } else if (strcmp(status, "limit") == 0) {
        const char *lim = reply_str(reply, 1);
        finish(cl, strcmp(lim, "sessions_per_second") == 0 ? GW_ERR_TENANT_SESSION_RATE
                   : strcmp(lim, "max_memory") == 0        ? GW_ERR_TENANT_MAX_MEMORY
                   : strcmp(lim, "max_cpus") == 0          ? GW_ERR_TENANT_MAX_CPUS
                                                           : GW_ERR_TENANT_MAX_SESSIONS);
    } else if (strcmp(status, "absent") == 0) {
        finish(cl, GW_ERR_NOT_FOUND);
    } else if (strcmp(status, "unknown") == 0) {
        /* Redis lost its data a moment ago and may not know the session yet: as when it is
         * away, a binding the caller has cached is kept (common/store.h, CLAIM) */
        finish(cl, GW_ERR_STORE_UNAVAILABLE);
    } else {
        finish(cl, GW_ERR_INTERNAL);
    }
}

struct gw_claim *gw_claim_start(struct gw_claimer *c, const struct gw_claim_req *req,
                                gw_claim_cb cb, void *data)
{
    struct gw_claim *cl = calloc(1, sizeof(*cl));
    if (!cl)
        return NULL;
    cl->c = c;
    cl->cb = cb;
    cl->data = data;
    cl->mode = req->mode;
    snprintf(cl->tenant, sizeof(cl->tenant), "%s", req->tenant);
    snprintf(cl->source, sizeof(cl->source), "%s", req->source);
    snprintf(cl->tpl, sizeof(cl->tpl), "%s", req->tpl->name);
    cl->key_len = CM_MIN(req->key_len, (size_t)CM_KEY_MAX);
    memcpy(cl->key, req->key, cl->key_len);
    cl->ttl_ms = req->ttl_ms ? req->ttl_ms : req->tpl->ttl / CM_USEC_PER_MSEC;
    cl->idle_ms = req->idle_ms ? req->idle_ms : req->tpl->idle_timeout / CM_USEC_PER_MSEC;
    cl->fail_on_lost = req->tpl->on_lost == CM_LOST_FAIL;
    if (req->key_id)
        snprintf(cl->key_id, sizeof(cl->key_id), "%s", req->key_id);
    if ((cl->tcfg = cm_config_tenant(c->gc->common, cl->tenant))) {
        cl->max_sessions = cm_limit_max_sessions(cl->tcfg, req->api_key);
        cm_limit_session_rate(cl->tcfg, req->api_key, &cl->rate, &cl->burst);
    }
    if (req->meta && !(cl->meta = strdup(req->meta))) {
        free(cl);
        return NULL;
    }
    cl->b.hash = cm_key_hash(cl->tenant, cl->source, cl->key, cl->key_len);
    cm_hash_hex(cl->b.hash, cl->b.hash_hex);
    cl->b.session = cl->b.hash;
    memcpy(cl->b.session_hex, cl->b.hash_hex, sizeof(cl->b.session_hex));

    char now[24], ttl[24], idle[24], stale[24];
    snprintf(now, sizeof(now), "%" PRIu64, cm_now_wall_ms());
    snprintf(ttl, sizeof(ttl), "%" PRIu64, cl->ttl_ms);
    snprintf(idle, sizeof(idle), "%" PRIu64, cl->idle_ms);
    snprintf(stale, sizeof(stale), "%" PRIu64, c->gc->host_stale / CM_USEC_PER_MSEC);
    const char *prefix = c->gc->common->redis.prefix;
    char static_limit[16] = "";
    if (strcmp(req->tpl->driver, "static") == 0)
        snprintf(static_limit, sizeof(static_limit), "%u", req->tpl->sessions_per_instance);
    char max[16] = "", rate[16] = "", burst[16] = "";
    char max_mem[24] = "", max_mcpu[24] = "", need_mem[24] = "", need_mcpu[24] = "";
    if (cl->tcfg && (cl->tcfg->max_memory || cl->tcfg->max_cpu_millis)) {
        snprintf(max_mem, sizeof(max_mem), "%" PRIu64, cl->tcfg->max_memory);
        snprintf(max_mcpu, sizeof(max_mcpu), "%" PRIu64, cl->tcfg->max_cpu_millis);
        snprintf(need_mem, sizeof(need_mem), "%" PRIu64, req->tpl->memory);
        snprintf(need_mcpu, sizeof(need_mcpu), "%" PRIu32, req->tpl->cpu_millis);
    }
    if (cl->max_sessions)
        snprintf(max, sizeof(max), "%" PRIu32, cl->max_sessions);
    if (cl->rate) {
        snprintf(rate, sizeof(rate), "%" PRIu32, cl->rate);
        snprintf(burst, sizeof(burst), "%" PRIu32, cl->burst);
    }
    const char *argv[] = {prefix, cl->b.hash_hex, cl->tenant, cl->source, cl->key, cl->tpl,
                          now, ttl, idle, stale, cl->fail_on_lost ? "fail" : "replace",
                          cl->mode == GW_CLAIM_MODE_LOOKUP ? "lookup" : "claim",
                          cl->meta ? cl->meta : "", static_limit, cl->key_id, max, rate, burst,
                          max_mem, max_mcpu, need_mem, need_mcpu};
    size_t lens[CM_ARRAY_SIZE(argv)];
    for (size_t i = 0; i < CM_ARRAY_SIZE(argv); i++)
        lens[i] = strlen(argv[i]);
    lens[4] = cl->key_len;
    cl->next = c->running;
    if (c->running)
        c->running->prev = cl;
    c->running = cl;
    int rc;
    if (cl->mode == GW_CLAIM_MODE_ALIAS)
        rc = cm_redis_script(c->redis, CM_SCRIPT_RESOLVE, on_script, cl, 3,
                             (const char *[]){prefix, cl->b.hash_hex, cl->tenant},
                             (size_t[]){strlen(prefix), CM_HASH_HEX_LEN, strlen(cl->tenant)});
    else
        /* key_id and the limits (the last ones) only when needed: the claim of a tenant
         * without limits is as it was */
        rc = cm_redis_script(c->redis, CM_SCRIPT_CLAIM, on_script, cl,
                             (int)CM_ARRAY_SIZE(argv) -
                                 (max_mem[0] ? 0
                                  : rate[0]  ? 4
                                  : max[0]   ? 6
                                  : cl->key_id[0] ? 7
                                                  : 8),
                             argv, lens);
    if (rc < 0) {
        /* Not connected: answer store_unavailable on the next loop turn, never inside this
         * call (DESIGN.md section 7: new sessions fail fast while Redis is away). */
        cl->state = CLAIM_DEFERRED;
        cl->timeout_ev = evtimer_new(c->base, on_unavailable, cl);
        if (!cl->timeout_ev) {
            claim_free(cl);
            return NULL;
        }
        struct timeval zero = {0, 0};
        evtimer_add(cl->timeout_ev, &zero);
    }
    return cl;
}

void gw_claim_cancel(struct gw_claim *cl)
{
    if (!cl)
        return;
    if (cl->state == CLAIM_START || cl->state == CLAIM_DEFERRED) {
        claim_free(cl);
        return;
    }
    /* A Redis reply is still coming: it frees the claim. */
    cl->cancelled = 1;
}
