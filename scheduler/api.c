#include "scheduler/api.h"

#include <errno.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/httpd.h"
#include "common/json.h"
#include "common/key.h"
#include "common/log.h"
#include "common/prom.h"
#include "common/secret.h"
#include "scheduler/driver.h"
#include "scheduler/instance.h"
#include "scheduler/paths.h"
#include "scheduler/pause.h"
#include "scheduler/pool.h"
#include "scheduler/relay.h"
#include "scheduler/sched.h"
#include "scheduler/usage.h"

#define META_MAX 4096

struct sch_start_req {
    struct sch_api *api;
    struct sch_start_req *prev, *next;
    struct cm_httpd_req *http; /* NULL once the client went away */
    const struct cm_template *tpl;
    char h[CM_HASH_HEX_LEN + 1];
    char tenant[64];
    char source[8];
    char key[CM_KEY_MAX + 1];
    char key_id[13]; /* the API key of a control API create (12 hex), or "" */
    char *meta;
    char ttl[24], idle[24];
    char max_sessions[16]; /* the tenant's limits.max_sessions as the gateway sent it, or "" */
    char max_mem[24], max_mcpu[24]; /* its max_memory and max_cpu_millis, or "" */
    struct sch_inst *inst; /* holds a reference */
    int binding;           /* the bind script is in flight: its callback frees us */
};

struct sch_api {
    struct sch_ctx *ctx;
    struct cm_httpd *http;
    struct cm_httpd *health; /* scheduler.health_listen, or NULL */
    struct sch_start_req *reqs;
    unsigned n_pending;
    cm_usec_t unauth_logged; /* when a refused request was last logged (monotonic) */
    unsigned unauth_quiet;   /* refusals not logged since */
};

/* ------------------------------------------------------------------ replies */

static void reply_json(struct cm_httpd_req *req, int status, struct cm_jbuf *b)
{
    cm_jbuf_raw(b, "\n", 1);
    if (b->failed)
        cm_httpd_reply_error(req, 500, "internal", "out of memory");
    else
        cm_httpd_reply(req, status, "application/json", b->data, b->len);
}

static void reply_error(struct cm_httpd_req *req, int status, const char *code, const char *fmt,
                        ...) CM_PRINTF(4, 5);
static void reply_error(struct cm_httpd_req *req, int status, const char *code, const char *fmt,
                        ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    cm_httpd_reply_error(req, status, code, msg);
}

/* ------------------------------------------------------------------ start requests */

static void on_conn_close(void *arg)
{
    struct sch_start_req *r = arg;
    r->http = NULL; /* the request went with its connection */
}

static void detach_http(struct sch_start_req *r)
{
    if (r->http)
        cm_httpd_set_close_cb(r->http, NULL, NULL);
}

static void req_unlink(struct sch_start_req *r)
{
    struct sch_api *api = r->api;
    if (!api)
        return; /* left behind by sch_api_destroy() */
    if (r->prev)
        r->prev->next = r->next;
    else
        api->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    api->n_pending--;
    r->api = NULL;
}

static void req_free(struct sch_start_req *r)
{
    req_unlink(r);
    if (r->inst)
        sch_inst_unref(r->inst);
    free(r->meta);
    free(r);
}

static void req_error(struct sch_start_req *r, int status, const char *code, const char *msg)
{
    detach_http(r);
    if (r->http)
        reply_error(r->http, status, code, "%s", msg);
    req_free(r);
}

static void on_bind_script(struct redisReply *reply, const char *err, void *data)
{
    struct sch_start_req *r = data;
    struct sch_inst *inst = r->inst;
    r->binding = 0;
    if (!r->api) {
        /* The API is gone (the scheduler stops; Redis fails what is in flight): nobody to
         * answer, and the instances are released with everything else. */
        req_free(r);
        return;
    }
    if (err || !reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 4) {
        cm_log_error("api", "bind script failed inst=%s session=%s err=\"%s\"", inst->id, r->h,
                     err ? err : "unexpected reply");
        sch_inst_destroy(inst, "bind failed");
        req_error(r, 503, "store_unavailable", err ? err : "unexpected reply from Redis");
        return;
    }
    const char *v[4];
    for (int i = 0; i < 4; i++)
        v[i] = reply->element[i]->type == REDIS_REPLY_STRING ? reply->element[i]->str : "";
    if (strcmp(v[0], "new") != 0) {
        /* The script put our instance into the pool: it is warm now. */
        inst->for_pool = 1;
    }
    if (strcmp(v[0], "limit") == 0) {
        const char *lim = v[1][0] ? v[1] : "max_sessions";
        cm_log_info("api", "start refused: tenant %s at its limit %s session=%s", r->tenant, lim,
                    r->h);
        char msg[96];
        snprintf(msg, sizeof(msg), "the tenant is at its limit %s", lim);
        /* the refill first: req_error() frees <r> (and its reference on <inst>) */
        sch_pool_refill(r->api->ctx, inst->tpl);
        req_error(r, 429, "tenant_limit", msg);
        return;
    }
    if (strcmp(v[0], "new") != 0 && strcmp(v[0], "bound") != 0) {
        cm_log_warn("api", "session belongs to another tenant session=%s", r->h);
        sch_pool_refill(r->api->ctx, inst->tpl);
        req_error(r, 409, "session_conflict", "the session exists for another tenant");
        return;
    }
    cm_log_info("api", "start answered inst=%s session=%s status=%s gen=%s", v[1], r->h, v[0],
                v[3]);
    detach_http(r);
    if (r->http) {
        struct cm_jbuf b;
        cm_jbuf_init(&b);
        cm_jbuf_raw(&b, "{\"status\":", 10);
        cm_jbuf_cstr(&b, v[0]);
        cm_jbuf_raw(&b, ",\"instance\":", 12);
        cm_jbuf_cstr(&b, v[1]);
        cm_jbuf_raw(&b, ",\"addr\":", 8);
        cm_jbuf_cstr(&b, v[2]);
        cm_jbuf_printf(&b, ",\"gen\":%lld}", strtoll(v[3], NULL, 10));
        reply_json(r->http, 200, &b);
        cm_jbuf_fini(&b);
    }
    if (strcmp(v[0], "new") != 0)
        sch_pool_refill(r->api->ctx, inst->tpl);
    req_free(r);
}

/* instance.c calls this when the start ends. */
static void on_instance_ready(struct sch_inst *inst, const char *code, const char *msg,
                              struct sch_start_req *r)
{
    struct sch_ctx *ctx = r->api->ctx;
    if (code) {
        req_error(r, strcmp(code, "start_timeout") == 0 ? 504 : 502, code, msg);
        return;
    }
    char now[24], need_mem[24], need_mcpu[24], pub[SCH_ADDR_MAX];
    snprintf(now, sizeof(now), "%" PRIu64, cm_now_wall_ms());
    snprintf(need_mem, sizeof(need_mem), "%" PRIu64, r->tpl->memory);
    snprintf(need_mcpu, sizeof(need_mcpu), "%" PRIu32, r->tpl->cpu_millis);
    const char *argv[] = {ctx->cfg->redis.prefix,
                          r->h,
                          r->tenant,
                          r->source,
                          r->key,
                          r->tpl->name,
                          now,
                          r->ttl,
                          r->idle,
                          inst->id,
                          sch_inst_addr(inst, pub, sizeof(pub)),
                          ctx->sc->host_id,
                          r->meta ? r->meta : "",
                          r->key_id,
                          r->max_sessions,
                          r->max_mem,
                          r->max_mcpu,
                          need_mem,
                          need_mcpu};
    r->binding = 1; /* before: the callback may free <r> */
    /* key_id and max_sessions (the last ARGVs) only when the gateway sent them */
    int argc = (int)CM_ARRAY_SIZE(argv) - (r->max_mem[0]        ? 0
                                           : r->max_sessions[0] ? 4
                                           : r->key_id[0]       ? 5
                                                                : 6);
    if (sch_script(ctx, CM_SCRIPT_BIND, on_bind_script, r, argc, argv) < 0) {
        r->binding = 0;
        sch_inst_destroy(inst, "redis not connected");
        req_error(r, 503, "store_unavailable", "Redis is not connected");
    }
}

static int json_str(const struct cm_json *body, const char *name, int required, char *out,
                    size_t outlen, char *why, size_t whylen)
{
    const struct cm_json *v = cm_json_get(body, name);
    if (!v) {
        if (required)
            snprintf(why, whylen, "%s is required", name);
        else
            out[0] = '\0';
        return required ? -EINVAL : 0;
    }
    if (v->type != CM_JSON_STRING || strlen(v->str) != v->len || v->len + 1 > outlen) {
        snprintf(why, whylen, "%s must be a string of at most %zu bytes", name, outlen - 1);
        return -EINVAL;
    }
    memcpy(out, v->str, v->len + 1);
    return 0;
}

/* ttl_ms / idle_ms: optional positive integers up to <max> (ms); default <def>. */
static int json_ms(const struct cm_json *body, const char *name, uint64_t def, uint64_t max,
                   char *out, size_t outlen, char *why, size_t whylen)
{
    const struct cm_json *v = cm_json_get(body, name);
    uint64_t ms = def;
    if (v) {
        if (v->type != CM_JSON_NUMBER || v->number < 1 || v->number > (double)max ||
            floor(v->number) != v->number) {
            snprintf(why, whylen, "%s must be an integer 1..%" PRIu64, name, max);
            return -EINVAL;
        }
        ms = (uint64_t)v->number;
    }
    snprintf(out, outlen, "%" PRIu64, ms);
    return 0;
}

static void handle_start(struct sch_api *api, struct cm_httpd_req *req)
{
    struct sch_ctx *ctx = api->ctx;
    size_t len;
    const char *text = cm_httpd_body(req, &len); /* at most api_max_body: common/httpd.c */
    char why[256], tpl_name[64];
    struct cm_json *body = cm_json_parse(text, len, why, sizeof(why));
    if (!body) {
        reply_error(req, 400, "bad_request", "invalid JSON: %s", why);
        return;
    }
    struct sch_start_req *r = calloc(1, sizeof(*r));
    if (!r) {
        cm_json_free(body);
        reply_error(req, 503, "no_capacity", "out of memory");
        return;
    }
    r->api = api;
    r->http = req;
    int rc = body->type == CM_JSON_OBJECT ? 0 : -EINVAL;
    if (rc < 0)
        snprintf(why, sizeof(why), "the body must be a JSON object");
    if (rc == 0)
        rc = json_str(body, "template", 1, tpl_name, sizeof(tpl_name), why, sizeof(why));
    if (rc == 0 && !(r->tpl = cm_config_template(ctx->cfg, tpl_name))) {
        cm_json_free(body);
        free(r);
        reply_error(req, 404, "unknown_template", "no template named '%s'", tpl_name);
        return;
    }
    if (rc == 0 && !sch_template_started_here(r->tpl)) {
        reply_error(req, 400, "bad_request",
                    "template '%s' uses the %s driver: a scheduler starts no instances of it",
                    tpl_name, r->tpl->driver);
        cm_json_free(body);
        free(r);
        return;
    }
    struct cm_hash parsed;
    char meta[META_MAX + 1];
    if (rc == 0 && (rc = json_str(body, "session", 1, r->h, sizeof(r->h), why, sizeof(why))) == 0 &&
        cm_hash_parse(r->h, strlen(r->h), &parsed) < 0) {
        rc = -EINVAL;
        snprintf(why, sizeof(why), "session must be the 32 hex digit session hash");
    }
    if (rc == 0 &&
        (rc = json_str(body, "tenant", 1, r->tenant, sizeof(r->tenant), why, sizeof(why))) == 0 &&
        !sch_safe_name(r->tenant, strlen(r->tenant))) {
        rc = -EINVAL;
        snprintf(why, sizeof(why), "tenant must be 1-63 characters of [A-Za-z0-9._-]");
    }
    const char *code400 = "bad_request";
    if (rc == 0 && !cm_config_tenant(ctx->cfg, r->tenant)) {
        /* Only the configured tenants own sessions (and storage under storage_root). */
        rc = -EINVAL;
        code400 = "unknown_tenant";
        snprintf(why, sizeof(why), "no tenant named '%s'", r->tenant);
    }
    if (rc == 0 &&
        (rc = json_str(body, "source", 1, r->source, sizeof(r->source), why, sizeof(why))) == 0 &&
        strcmp(r->source, CM_KEY_SRC_SID) && strcmp(r->source, CM_KEY_SRC_MCP) &&
        strcmp(r->source, CM_KEY_SRC_SSE)) {
        rc = -EINVAL;
        snprintf(why, sizeof(why), "source must be sid, mcp or sse");
    }
    if (rc == 0 && (rc = json_str(body, "key", 1, r->key, sizeof(r->key), why, sizeof(why))) == 0 &&
        !cm_key_valid(r->key, strlen(r->key))) {
        rc = -EINVAL;
        snprintf(why, sizeof(why), "key must be 1-128 visible ASCII characters");
    }
    /* key_id: the API key of the control API call that creates the session, for the created
     * and bound events (the gateway's name for it: 12 lower-case hex digits) */
    if (rc == 0 &&
        (rc = json_str(body, "key_id", 0, r->key_id, sizeof(r->key_id), why, sizeof(why))) == 0 &&
        r->key_id[0] && strspn(r->key_id, "0123456789abcdef") != 12) { /* at most 12: json_str */
        rc = -EINVAL;
        snprintf(why, sizeof(why), "key_id must be 12 lower-case hex digits");
    }
    if (rc == 0)
        rc = json_ms(body, "ttl_ms", r->tpl->ttl / CM_USEC_PER_MSEC,
                     r->tpl->max_ttl / CM_USEC_PER_MSEC, r->ttl, sizeof(r->ttl), why, sizeof(why));
    if (rc == 0)
        rc = json_ms(body, "idle_ms", r->tpl->idle_timeout / CM_USEC_PER_MSEC,
                     r->tpl->max_idle_timeout / CM_USEC_PER_MSEC, r->idle, sizeof(r->idle), why,
                     sizeof(why));
    /* max_sessions: the tenant's limit as the gateway applies it (the bind re-checks it) */
    const struct cm_json *ms = cm_json_get(body, "max_sessions");
    if (rc == 0 && ms) {
        if (ms->type != CM_JSON_NUMBER || ms->number < 0 ||
            ms->number > (double)CM_TENANT_MAX_SESSIONS || floor(ms->number) != ms->number) {
            rc = -EINVAL;
            snprintf(why, sizeof(why), "max_sessions must be an integer 0..%u",
                     CM_TENANT_MAX_SESSIONS);
        } else if (ms->number > 0) {
            snprintf(r->max_sessions, sizeof(r->max_sessions), "%u", (unsigned)ms->number);
        }
    }
    /* max_memory, max_cpu_millis: the tenant's limits, which the bind checks the template's
     * memory and cpus against (and then counts them) */
    const char *room[2] = {"max_memory", "max_cpu_millis"};
    char *room_out[2] = {r->max_mem, r->max_mcpu};
    for (int k = 0; k < 2 && rc == 0; k++) {
        const struct cm_json *v = cm_json_get(body, room[k]);
        if (!v)
            continue;
        if (v->type != CM_JSON_NUMBER || v->number < 0 || v->number > 1e18 ||
            floor(v->number) != v->number) {
            rc = -EINVAL;
            snprintf(why, sizeof(why), "%s must be a whole number", room[k]);
        } else {
            snprintf(room_out[k], sizeof(r->max_mem), "%" PRIu64, (uint64_t)v->number);
        }
    }
    if (rc == 0 && (!r->max_mem[0]) != (!r->max_mcpu[0])) {
        rc = -EINVAL;
        snprintf(why, sizeof(why), "max_memory and max_cpu_millis go together");
    }
    if (rc == 0 && (rc = json_str(body, "meta", 0, meta, sizeof(meta), why, sizeof(why))) == 0 &&
        meta[0] && !(r->meta = strdup(meta))) {
        rc = -ENOMEM;
        snprintf(why, sizeof(why), "out of memory");
    }
    cm_json_free(body);
    if (rc < 0) {
        free(r->meta);
        free(r);
        reply_error(req, 400, code400, "%s", why);
        return;
    }
    const char *code = NULL;
    if (ctx->stopping)
        code = "shutting_down", snprintf(why, sizeof(why), "the scheduler is stopping");
    else if (!sch_redis_connected(ctx) || !ctx->recovered)
        code = "store_unavailable",
        snprintf(why, sizeof(why), "%s",
                 ctx->recovered ? "Redis is not connected" : "recovering after a restart");
    else if (ctx->draining)
        code = "no_capacity", snprintf(why, sizeof(why), "host %s is draining", ctx->sc->host_id);
    else if (api->n_pending >= ctx->sc->api_max_pending)
        code = "no_capacity",
        snprintf(why, sizeof(why), "too many starts in flight (api_max_pending %u)",
                 ctx->sc->api_max_pending);
    else if (ctx->n_live >= ctx->sc->capacity)
        code = "no_capacity", snprintf(why, sizeof(why), "host %s is at capacity (%u instances)",
                                       ctx->sc->host_id, ctx->sc->capacity);
    if (code) {
        free(r->meta);
        free(r);
        reply_error(req, 503, code, "%s", why);
        return;
    }
    r->next = api->reqs;
    if (api->reqs)
        api->reqs->prev = r;
    api->reqs = r;
    api->n_pending++;
    struct sch_inst *inst = sch_inst_start(ctx, r->tpl, 0, r, why, sizeof(why));
    if (!inst) {
        cm_log_error("api", "start failed template=%s err=\"%s\"", r->tpl->name, why);
        req_error(r, ctx->n_live >= ctx->sc->capacity ? 503 : 502,
                  ctx->n_live >= ctx->sc->capacity ? "no_capacity" : "start_failed", why);
        return;
    }
    r->inst = inst;
    sch_inst_ref(inst);
    cm_httpd_set_close_cb(req, on_conn_close, r);
}

/* ------------------------------------------------------------------ status */

/* <full>: the caller sent the secret. Without it, host-level counts only: no instance,
 * session, address or driver detail (paths, cgroups). */
static void handle_status(struct sch_api *api, struct cm_httpd_req *req, int full)
{
    struct sch_ctx *ctx = api->ctx;
    unsigned by_state[SCH_INST_GONE + 1] = {0};
    for (struct sch_inst *i = ctx->insts; i; i = i->next)
        by_state[i->state]++;
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    cm_jbuf_raw(&b, "{\"host\":", 8);
    cm_jbuf_cstr(&b, ctx->sc->host_id);
    if (full) {
        cm_jbuf_raw(&b, ",\"api\":", 7);
        cm_jbuf_cstr(&b, ctx->api_addr);
    }
    cm_jbuf_printf(&b,
                   ",\"authenticated\":%s,\"capacity\":%u,\"live\":%u,\"free\":%u,"
                   "\"redis\":\"%s\",\"recovered\":%s,\"pending_starts\":%u",
                   full ? "true" : "false", ctx->sc->capacity, ctx->n_live,
                   ctx->n_live >= ctx->sc->capacity ? 0 : ctx->sc->capacity - ctx->n_live,
                   sch_redis_connected(ctx) ? "connected" : "disconnected",
                   ctx->recovered ? "true" : "false", api->n_pending);
    cm_jbuf_printf(&b, ",\"draining\":%s", ctx->draining ? "true" : "false");
    if (full && ctx->relay) {
        struct sch_relay_stats rs;
        sch_relay_get_stats(ctx->relay, &rs);
        cm_jbuf_printf(&b, ",\"relay\":{\"advertise\":");
        cm_jbuf_cstr(&b, sch_relay_advertised(ctx->relay));
        cm_jbuf_printf(&b,
                       ",\"accepted\":%" PRIu64 ",\"relayed\":%" PRIu64 ",\"refused\":%" PRIu64
                       ",\"active\":%" PRIu64 "}",
                       rs.accepted, rs.relayed, rs.refused, rs.active);
    }
    if (full) {
        cm_jbuf_raw(&b, ",\"drivers\":", 11);
        sch_drivers_status(ctx->drivers, &b);
    }
    cm_jbuf_raw(&b, ",\"states\":{", 11);
    for (int s = 0; s < SCH_INST_GONE; s++)
        cm_jbuf_printf(&b, "%s\"%s\":%u", s ? "," : "", sch_inst_state_name((enum sch_inst_state)s),
                       by_state[s]);
    cm_jbuf_raw(&b, "},\"pools\":[", 11);
    int first = 1;
    for (size_t i = 0; i < ctx->cfg->n_templates; i++) {
        const struct sch_pool *p = &ctx->pools[i];
        if (!sch_template_started_here(p->tpl))
            continue;
        cm_jbuf_raw(&b, first ? "{\"template\":" : ",{\"template\":", first ? 12 : 13);
        first = 0;
        cm_jbuf_cstr(&b, p->tpl->name);
        cm_jbuf_printf(&b, ",\"min\":%u,\"max\":%u,\"warm\":%" PRIu64 ",\"starting\":%u}",
                       p->tpl->pool_min, p->tpl->pool_max, p->warm, sch_pool_starting(ctx, p->tpl));
    }
    if (!full) {
        cm_jbuf_raw(&b, "]}", 2);
        reply_json(req, 200, &b);
        cm_jbuf_fini(&b);
        return;
    }
    cm_jbuf_raw(&b, "],\"instances\":[", 15);
    for (struct sch_inst *i = ctx->insts; i; i = i->next) {
        cm_jbuf_raw(&b, i == ctx->insts ? "{\"id\":" : ",{\"id\":", i == ctx->insts ? 6 : 7);
        cm_jbuf_cstr(&b, i->id);
        cm_jbuf_raw(&b, ",\"template\":", 12);
        cm_jbuf_cstr(&b, i->tpl ? i->tpl->name : "");
        cm_jbuf_raw(&b, ",\"driver\":", 10);
        cm_jbuf_cstr(&b, i->drv ? i->drv->ops->name : "");
        cm_jbuf_printf(&b, ",\"state\":\"%s\",\"pid\":%d,\"addr\":", sch_inst_state_name(i->state),
                       i->di ? (int)i->di->pid : 0);
        char pub[SCH_ADDR_MAX];
        cm_jbuf_cstr(&b, sch_inst_addr(i, pub, sizeof(pub)));
        cm_jbuf_raw(&b, ",\"session\":", 11);
        cm_jbuf_cstr(&b, i->session);
        cm_jbuf_printf(&b, ",\"agent_bound\":%s,\"pause\":\"%s\"}",
                       i->agent_bound ? "true" : "false", sch_pause_state_name(i->pause));
    }
    cm_jbuf_raw(&b, "]}", 2);
    reply_json(req, 200, &b);
    cm_jbuf_fini(&b);
}

/* ------------------------------------------------------------------ metrics */

/* GET /metrics (with the secret): the host's instances and the usage counters by tenant and
 * template, in the Prometheus text format. */
static void handle_metrics(struct sch_api *api, struct cm_httpd_req *req)
{
    struct sch_ctx *ctx = api->ctx;
    unsigned by_state[SCH_INST_GONE + 1] = {0};
    for (struct sch_inst *i = ctx->insts; i; i = i->next)
        by_state[i->state]++;
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    cm_prom_family(&b, "berth_scheduler_capacity", "gauge",
                   "Instances this host may run at once (scheduler.capacity).");
    cm_jbuf_printf(&b, "berth_scheduler_capacity %u\n", ctx->sc->capacity);
    cm_prom_family(&b, "berth_scheduler_instances", "gauge",
                   "Instances this scheduler knows, by state.");
    for (int s = 0; s < SCH_INST_GONE; s++)
        cm_jbuf_printf(&b, "berth_scheduler_instances{state=\"%s\"} %u\n",
                       sch_inst_state_name((enum sch_inst_state)s), by_state[s]);
    cm_prom_family(&b, "berth_scheduler_redis_up", "gauge",
                   "1 when the scheduler's Redis client is connected.");
    cm_jbuf_printf(&b, "berth_scheduler_redis_up %d\n", sch_redis_connected(ctx) ? 1 : 0);
    sch_usage_prom(ctx, &b);
    if (b.failed)
        cm_httpd_reply_error(req, 500, "internal", "out of memory");
    else
        cm_httpd_reply(req, 200, CM_PROM_CONTENT_TYPE, b.data, b.len);
    cm_jbuf_fini(&b);
}

/* ------------------------------------------------------------------ pause, resume */

/* POST /v1/instances/{id}/pause|resume: waits for the outcome (sch_pause(), sch_resume()). */
struct pause_req {
    struct sch_pause_wait w; /* first: the callback gets it */
    struct cm_httpd_req *http;
    struct sch_inst *inst; /* holds a reference */
};

static void pause_done(struct sch_pause_wait *w, int status, const char *code, const char *msg)
{
    struct pause_req *p = (struct pause_req *)w;
    if (p->http) {
        cm_httpd_set_close_cb(p->http, NULL, NULL);
        if (status == 200) {
            struct cm_jbuf b;
            cm_jbuf_init(&b);
            cm_jbuf_raw(&b, "{\"instance\":", 12);
            cm_jbuf_cstr(&b, p->inst->id);
            cm_jbuf_raw(&b, ",\"session\":", 11);
            cm_jbuf_cstr(&b, p->inst->session);
            cm_jbuf_printf(&b, ",\"pause\":\"%s\"}", sch_pause_state_name(p->inst->pause));
            reply_json(p->http, 200, &b);
            cm_jbuf_fini(&b);
        } else {
            reply_error(p->http, status, code, "%s", msg ? msg : "");
        }
    }
    sch_inst_unref(p->inst);
    free(p);
}

static void pause_gone(void *arg)
{
    struct pause_req *p = arg;
    sch_pause_cancel(p->inst, &p->w);
    sch_inst_unref(p->inst);
    free(p);
}

/* "{id}" and the action of "/v1/instances/{id}/{action}", or -1. */
static int instance_action(const char *path, char *id, size_t idlen, int *ret_resume)
{
    static const char prefix[] = "/v1/instances/";
    size_t pl = sizeof(prefix) - 1;
    if (strncmp(path, prefix, pl) != 0)
        return -1;
    const char *slash = strchr(path + pl, '/');
    if (!slash || (size_t)(slash - path - pl) >= idlen || slash == path + pl)
        return -1;
    if (strcmp(slash, "/pause") == 0)
        *ret_resume = 0;
    else if (strcmp(slash, "/resume") == 0)
        *ret_resume = 1;
    else
        return -1;
    memcpy(id, path + pl, (size_t)(slash - path - pl));
    id[slash - path - pl] = '\0';
    return 0;
}

static void handle_pause(struct sch_api *api, struct cm_httpd_req *req, const char *id, int resume)
{
    struct sch_inst *inst = sch_inst_find(api->ctx, id);
    if (!inst || inst->state == SCH_INST_GONE) {
        reply_error(req, 404, "not_found", "no instance %s on this host", id);
        return;
    }
    struct pause_req *p = calloc(1, sizeof(*p));
    if (!p) {
        reply_error(req, 503, "overloaded", "out of memory");
        return;
    }
    p->w.cb = pause_done;
    p->http = req;
    p->inst = inst;
    /* ?key_id=<12 hex>: the gateway's name of the API key that asked (for the event) */
    const char *q = cm_httpd_query(req);
    inst->api_key_id[0] = '\0';
    if (q && strncmp(q, "key_id=", 7) == 0 && strlen(q + 7) == 12 &&
        strspn(q + 7, "0123456789abcdef") == 12)
        memcpy(inst->api_key_id, q + 7, 13);
    sch_inst_ref(inst);
    cm_httpd_set_close_cb(req, pause_gone, p);
    if (resume)
        sch_resume(inst, "api", &p->w);
    else
        sch_pause(inst, "api", &p->w);
}

/* ------------------------------------------------------------------ routing */

/* A request without the right secret: logged at most once a second (with how many were not),
 * so that a caller probing the API cannot flood the log. */
static void log_refused(struct sch_api *api, struct cm_httpd_req *req, int had_header)
{
    cm_usec_t now = cm_now_mono();
    if (api->unauth_logged && now - api->unauth_logged < CM_USEC_PER_SEC) {
        api->unauth_quiet++;
        return;
    }
    cm_log_warn("api", "request refused: %s secret method=%s path=%s not_logged=%u",
                had_header ? "wrong" : "no", cm_httpd_method_name(req), cm_httpd_path(req),
                api->unauth_quiet);
    api->unauth_logged = now;
    api->unauth_quiet = 0;
}

/* 1 when <req> carries "Authorization: Bearer <scheduler.api_secret>". */
static int authenticated(const struct sch_api *api, const struct cm_httpd_req *req)
{
    return cm_secret_bearer_ok(cm_httpd_header(req, "Authorization"), api->ctx->sc->api_secret);
}

static void reply_unauthorized(struct sch_api *api, struct cm_httpd_req *req)
{
    log_refused(api, req, cm_httpd_header(req, "Authorization") != NULL);
    (void)cm_httpd_add_header(req, "WWW-Authenticate", "Bearer");
    reply_error(req, 401, "unauthorized",
                "send \"Authorization: Bearer <secret>\" with the secret of "
                "scheduler.api_secret / api_secret_file");
}

static void reply_healthz(struct sch_api *api, struct cm_httpd_req *req)
{
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    cm_jbuf_printf(&b, "{\"status\":\"ok\",\"redis\":\"%s\",\"recovered\":%s}",
                   sch_redis_connected(api->ctx) ? "connected" : "disconnected",
                   api->ctx->recovered ? "true" : "false");
    reply_json(req, 200, &b);
    cm_jbuf_fini(&b);
}

/* The health listener: GET /healthz alone. */
static void on_health_request(struct cm_httpd_req *req, void *arg)
{
    if (strcmp(cm_httpd_path(req), "/healthz") != 0) {
        reply_error(req, 404, "not_found", "no such endpoint");
    } else if (cm_httpd_method(req) != CM_HTTP_GET) {
        (void)cm_httpd_add_header(req, "Allow", "GET");
        reply_error(req, 405, "method_not_allowed", "use GET");
    } else {
        reply_healthz(arg, req);
    }
}

/* POST (<on>) or DELETE /v1/drain: sched.c's sch_drain(), then the host's state. */
static void handle_drain(struct sch_api *api, struct cm_httpd_req *req, int on)
{
    struct sch_ctx *ctx = api->ctx;
    int rc = sch_drain(ctx, on);
    if (rc < 0) {
        reply_error(req, 500, "internal", "cannot record the drain in run_dir: %s",
                    strerror(-rc));
        return;
    }
    unsigned bound = 0;
    for (struct sch_inst *i = ctx->insts; i; i = i->next)
        bound += i->state == SCH_INST_BOUND;
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    cm_jbuf_raw(&b, "{\"host\":", 8);
    cm_jbuf_cstr(&b, ctx->sc->host_id);
    cm_jbuf_printf(&b, ",\"draining\":%s,\"bound\":%u}", ctx->draining ? "true" : "false",
                   bound);
    reply_json(req, 200, &b);
    cm_jbuf_fini(&b);
}

static void on_request(struct cm_httpd_req *req, void *arg)
{
    struct sch_api *api = arg;
    const char *path = cm_httpd_path(req);
    enum cm_http_method m = cm_httpd_method(req);
    const char *allow = NULL;
    if (strcmp(path, "/v1/start") == 0) {
        if (m == CM_HTTP_POST) {
            if (!authenticated(api, req))
                reply_unauthorized(api, req);
            else
                handle_start(api, req);
            return;
        }
        allow = "POST";
    } else if (strncmp(path, "/v1/instances/", 14) == 0) {
        char id[SCH_INST_ID_MAX + 1];
        int resume = 0;
        if (instance_action(path, id, sizeof(id), &resume) < 0) {
            reply_error(req, 404, "not_found", "no such endpoint");
            return;
        }
        if (m == CM_HTTP_POST) {
            if (!authenticated(api, req))
                reply_unauthorized(api, req);
            else
                handle_pause(api, req, id, resume);
            return;
        }
        allow = "POST";
    } else if (strcmp(path, "/v1/drain") == 0) {
        if (m == CM_HTTP_POST || m == CM_HTTP_DELETE) {
            if (!authenticated(api, req))
                reply_unauthorized(api, req);
            else
                handle_drain(api, req, m == CM_HTTP_POST);
            return;
        }
        allow = "POST, DELETE";
    } else if (strcmp(path, "/metrics") == 0) {
        if (m == CM_HTTP_GET) {
            if (!authenticated(api, req))
                reply_unauthorized(api, req);
            else
                handle_metrics(api, req);
            return;
        }
        allow = "GET";
    } else if (strcmp(path, "/v1/status") == 0 || strcmp(path, "/healthz") == 0) {
        if (m == CM_HTTP_GET && path[1] == 'v') {
            /* Open, but the instances (sessions, addresses) only to who has the secret; a
             * wrong secret is refused rather than answered with less. */
            const char *auth = cm_httpd_header(req, "Authorization");
            if (auth && !authenticated(api, req))
                reply_unauthorized(api, req);
            else
                handle_status(api, req, auth != NULL);
            return;
        }
        if (m == CM_HTTP_GET) {
            reply_healthz(api, req);
            return;
        }
        allow = "GET";
    } else {
        reply_error(req, 404, "not_found", "no such endpoint");
        return;
    }
    (void)cm_httpd_add_header(req, "Allow", allow);
    reply_error(req, 405, "method_not_allowed", "use %s", allow);
}

struct sch_api *sch_api_create(struct sch_ctx *ctx, char *err, size_t errlen)
{
    struct sch_api *api = calloc(1, sizeof(*api));
    if (!api) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    api->ctx = ctx;
    struct cm_httpd_limits lim = {.max_header_bytes = ctx->sc->api_max_header_bytes,
                                  .max_body = ctx->sc->api_max_body,
                                  .timeout = ctx->sc->api_timeout,
                                  .header_timeout = ctx->sc->api_header_timeout,
                                  .max_connections = ctx->sc->api_max_connections};
    api->http = cm_httpd_create(ctx->base, &lim, on_request, api);
    if (!api->http) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    uint16_t port;
    int rc = cm_httpd_listen(api->http, ctx->sc->api_host, ctx->sc->api_port, &port);
    if (rc < 0) {
        snprintf(err, errlen, "cannot listen on %s:%u: %s", ctx->sc->api_host, ctx->sc->api_port,
                 strerror(-rc));
        goto fail;
    }
    const char *adv = ctx->sc->api_advertise;
    if (adv && strchr(adv, ':') && (adv[0] != '[' || strstr(adv, "]:")))
        snprintf(ctx->api_addr, sizeof(ctx->api_addr), "%s", adv); /* host:port */
    else
        snprintf(ctx->api_addr, sizeof(ctx->api_addr), "%s:%u", adv ? adv : ctx->sc->api_host,
                 port);
    if (ctx->sc->health_host) {
        /* Probes only, on connections of their own: the API's (which starts on behalf of
         * tenants' sessions can fill) never make a probe wait or fail. */
        struct cm_httpd_limits pl = {.max_header_bytes = 4096,
                                     .max_body = 0,
                                     .timeout = ctx->sc->api_header_timeout,
                                     .header_timeout = ctx->sc->api_header_timeout,
                                     .max_connections = ctx->sc->health_max_conns};
        api->health = cm_httpd_create(ctx->base, &pl, on_health_request, api);
        rc = api->health
                 ? cm_httpd_listen(api->health, ctx->sc->health_host, ctx->sc->health_port, NULL)
                 : -ENOMEM;
        if (rc < 0) {
            snprintf(err, errlen, "health_listen: cannot listen on %s:%u: %s", ctx->sc->health_host,
                     ctx->sc->health_port, strerror(-rc));
            goto fail;
        }
    }
    sch_inst_set_ready_cb(on_instance_ready);
    return api;
fail:
    sch_api_destroy(api);
    return NULL;
}

void sch_api_destroy(struct sch_api *api)
{
    if (!api)
        return;
    while (api->reqs) {
        struct sch_start_req *r = api->reqs;
        if (r->inst)
            sch_inst_drop_req(r->inst);
        if (!r->binding) {
            req_error(r, 503, "shutting_down", "the scheduler is stopping");
            continue;
        }
        /* Its bind script's callback still comes (cm_redis_destroy() fails it): answer now,
         * leave it to that callback to free. */
        detach_http(r);
        if (r->http)
            reply_error(r->http, 503, "shutting_down", "%s", "the scheduler is stopping");
        r->http = NULL;
        req_unlink(r);
    }
    cm_httpd_destroy(api->http);
    cm_httpd_destroy(api->health);
    free(api);
}
