#include "scheduler/sched.h"

#include <errno.h>
#include <fcntl.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/redis.h"
#include "common/usagetab.h"
#include "scheduler/agentctl.h"
#include "scheduler/api.h"
#include "scheduler/driver.h"
#include "scheduler/inst_egress.h"
#include "scheduler/instance.h"
#include "scheduler/pause.h"
#include "scheduler/pool.h"
#include "scheduler/reconcile.h"
#include "scheduler/recover.h"
#include "scheduler/relay.h"
#include "scheduler/usage.h"

#define MAX_ARGV CM_REDIS_MAX_ARGS
#define REAP_BATCH "100"
#define EVENTS_MAXLEN "100000"

/* ------------------------------------------------------------------ Redis helpers */

const char *sch_key(const struct sch_ctx *ctx, char *buf, size_t len, const char *fmt, ...)
{
    int n = snprintf(buf, len, "%s", ctx->cfg->redis.prefix);
    va_list ap;
    va_start(ap, fmt);
    if (n >= 0 && (size_t)n < len)
        vsnprintf(buf + n, len - (size_t)n, fmt, ap);
    va_end(ap);
    return buf;
}

int sch_redis(struct sch_ctx *ctx, void (*cb)(struct redisReply *, const char *, void *),
              void *data, int argc, const char **argv)
{
    size_t lens[MAX_ARGV];
    if (argc > MAX_ARGV)
        return -E2BIG;
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    return cm_redis_argv(ctx->redis, cb, data, argc, argv, lens);
}

int sch_script(struct sch_ctx *ctx, enum cm_script s,
               void (*cb)(struct redisReply *, const char *, void *), void *data, int argc,
               const char **argv)
{
    size_t lens[MAX_ARGV];
    if (argc > MAX_ARGV)
        return -E2BIG;
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    return cm_redis_script(ctx->redis, s, cb, data, argc, argv, lens);
}

int sch_template_started_here(const struct cm_template *tpl)
{
    return strcmp(tpl->driver, "static") != 0;
}

struct sch_driver *sch_template_driver(const struct sch_ctx *ctx, const struct cm_template *tpl)
{
    return sch_template_started_here(tpl) ? sch_drivers_get(ctx->drivers, tpl->driver) : NULL;
}

int sch_redis_connected(const struct sch_ctx *ctx)
{
    return ctx->redis && cm_redis_state(ctx->redis) == CM_REDIS_CONNECTED;
}

static void on_logged(struct redisReply *reply, const char *err, void *data)
{
    (void)reply;
    struct sch_ctx *ctx = data;
    if (err && !ctx->stopping)
        cm_log_warn("redis", "command failed err=\"%s\"", err);
}

void sch_event(struct sch_ctx *ctx, const char *type, ...)
{
    const char *argv[MAX_ARGV];
    char key[256], ts[24];
    int argc = 0;
    snprintf(ts, sizeof(ts), "%" PRIu64, cm_now_wall_ms());
    argv[argc++] = "XADD";
    argv[argc++] = sch_key(ctx, key, sizeof(key), "events");
    argv[argc++] = "MAXLEN";
    argv[argc++] = "~";
    argv[argc++] = EVENTS_MAXLEN;
    argv[argc++] = "*";
    argv[argc++] = "type";
    argv[argc++] = type;
    argv[argc++] = "ts";
    argv[argc++] = ts;
    va_list ap;
    va_start(ap, type);
    const char *s;
    while ((s = va_arg(ap, const char *)) && argc < MAX_ARGV)
        argv[argc++] = s;
    va_end(ap);
    sch_redis(ctx, on_logged, ctx, argc, argv);
}

/* ------------------------------------------------------------------ heartbeat, reaper */

void sch_heartbeat(struct sch_ctx *ctx)
{
    if (!sch_redis_connected(ctx))
        return;
    char key[256], now[24], cap[16], free_[16], drivers[128];
    sch_drivers_names(ctx->drivers, drivers, sizeof(drivers));
    snprintf(now, sizeof(now), "%" PRIu64, cm_now_wall_ms());
    snprintf(cap, sizeof(cap), "%u", ctx->sc->capacity);
    snprintf(free_, sizeof(free_), "%u",
             ctx->draining || ctx->n_live >= ctx->sc->capacity ? 0
                                                                : ctx->sc->capacity - ctx->n_live);
    const char *hset[] = {"HSET",     sch_key(ctx, key, sizeof(key), "host:%s", ctx->sc->host_id),
                          "api",      ctx->api_addr,
                          "capacity", cap,
                          "free",     free_,
                          "driver",   drivers,
                          "draining", ctx->draining ? "1" : "0",
                          "relay",    ctx->relay ? sch_relay_advertised(ctx->relay) : ""};
    sch_redis(ctx, on_logged, ctx, (int)CM_ARRAY_SIZE(hset), hset);
    /* The zset entry last: a host is claimable only once its hash is there. */
    if (ctx->recovered) {
        const char *zadd[] = {"ZADD", sch_key(ctx, key, sizeof(key), "hosts"), now,
                              ctx->sc->host_id};
        sch_redis(ctx, on_logged, ctx, 4, zadd);
    }
}

static void drain_path(const struct sch_ctx *ctx, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/draining", ctx->sc->run_dir);
}

int sch_drain(struct sch_ctx *ctx, int on)
{
    char path[512];
    drain_path(ctx, path, sizeof(path));
    if (on) {
        int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
            return -errno;
        close(fd);
    } else if (unlink(path) < 0 && errno != ENOENT) {
        return -errno;
    }
    if (ctx->draining == on)
        return 0;
    ctx->draining = on;
    unsigned ended = 0, bound = 0;
    for (struct sch_inst *i = ctx->insts; i; i = i->next)
        bound += i->state == SCH_INST_BOUND;
    if (on) {
        /* Warm (and starting) instances would only be claimed: end them now. */
        for (struct sch_inst *i = ctx->insts, *next; i; i = next) {
            next = i->next;
            if (i->state == SCH_INST_WARM || (i->state == SCH_INST_STARTING && !i->req)) {
                sch_inst_destroy(i, "draining");
                ended++;
            }
        }
    }
    cm_log_info("main", "%s host=%s warm_ended=%u bound=%u", on ? "draining" : "drain ended",
                ctx->sc->host_id, ended, bound);
    sch_event(ctx, on ? "host_draining" : "host_undrained", "host", ctx->sc->host_id, NULL);
    sch_heartbeat(ctx);
    if (!on)
        sch_pool_refill(ctx, NULL);
    return 0;
}

static void on_heartbeat(evutil_socket_t fd, short what, void *arg)
{
    struct sch_ctx *ctx = arg;
    (void)fd, (void)what;
    sch_heartbeat(ctx);
    sch_reconcile_check(ctx); /* refills the pools when Redis still holds our records */
    sch_pause_check(ctx);
    sch_usage_sample(ctx);
}

static void on_release_reply(struct redisReply *reply, const char *err, void *data)
{
    struct sch_ctx *ctx = data;
    if (err) {
        if (!ctx->stopping)
            cm_log_warn("reaper", "release failed err=\"%s\"", err);
        return;
    }
    if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements >= 3 &&
        reply->element[0]->type == REDIS_REPLY_STRING &&
        strcmp(reply->element[0]->str, "released") == 0)
        cm_log_info("reaper", "session expired inst=%s host=%s",
                    reply->element[1]->type == REDIS_REPLY_STRING ? reply->element[1]->str : "",
                    reply->element[2]->type == REDIS_REPLY_STRING ? reply->element[2]->str : "");
}

static void on_expired(struct redisReply *reply, const char *err, void *data)
{
    struct sch_ctx *ctx = data;
    ctx->reap_inflight = 0;
    if (err || !reply || reply->type != REDIS_REPLY_ARRAY) {
        if (!ctx->stopping)
            cm_log_warn("reaper", "cannot read expiry err=\"%s\"", err ? err : "bad reply");
        return;
    }
    char now[24];
    snprintf(now, sizeof(now), "%" PRIu64, cm_now_wall_ms());
    for (size_t i = 0; i < reply->elements; i++) {
        if (reply->element[i]->type != REDIS_REPLY_STRING)
            continue;
        const char *argv[] = {ctx->cfg->redis.prefix, reply->element[i]->str, "", "expired", now};
        sch_script(ctx, CM_SCRIPT_RELEASE, on_release_reply, ctx, 5, argv);
    }
}

static void on_hostdown_reply(struct redisReply *reply, const char *err, void *data)
{
    struct sch_ctx *ctx = data;
    ctx->hostdown_inflight--;
    if (err)
        cm_log_warn("hosts", "hostdown script failed err=\"%s\"", err);
    else if (reply && reply->type == REDIS_REPLY_INTEGER && reply->integer >= 0)
        cm_log_warn("hosts", "host down: its sessions follow on_lost sessions_lost=%lld",
                    (long long)reply->integer);
}

static void on_stale_hosts(struct redisReply *reply, const char *err, void *data)
{
    struct sch_ctx *ctx = data;
    ctx->hostdown_inflight--;
    if (err || !reply || reply->type != REDIS_REPLY_ARRAY)
        return;
    char now[24], after[24];
    snprintf(now, sizeof(now), "%" PRIu64, cm_now_wall_ms());
    snprintf(after, sizeof(after), "%" PRIu64, ctx->sc->host_down_after / CM_USEC_PER_MSEC);
    for (size_t i = 0; i < reply->elements; i++) {
        const struct redisReply *e = reply->element[i];
        if (e->type != REDIS_REPLY_STRING || strcmp(e->str, ctx->sc->host_id) == 0)
            continue;
        cm_log_warn("hosts", "no heartbeat from a host for host_down_after: marking it down "
                    "host=%s", e->str);
        const char *argv[] = {ctx->cfg->redis.prefix, e->str, now, after};
        if (sch_script(ctx, CM_SCRIPT_HOSTDOWN, on_hostdown_reply, ctx, 4, argv) == 0)
            ctx->hostdown_inflight++;
    }
}

/* Hosts whose heartbeat stopped (host_down_after): every scheduler looks, the script makes
 * it happen once. */
static void sweep_hosts(struct sch_ctx *ctx)
{
    if (!ctx->sc->host_down_after || ctx->hostdown_inflight || !ctx->recovered)
        return;
    char key[256], before[24];
    uint64_t now = cm_now_wall_ms(), after = ctx->sc->host_down_after / CM_USEC_PER_MSEC;
    snprintf(before, sizeof(before), "(%" PRIu64, now > after ? now - after : 0);
    const char *argv[] = {"ZRANGEBYSCORE", sch_key(ctx, key, sizeof(key), "hosts"), "-inf",
                          before, "LIMIT", "0", "16"};
    if (sch_redis(ctx, on_stale_hosts, ctx, 7, argv) == 0)
        ctx->hostdown_inflight++;
}

static void on_reap(evutil_socket_t fd, short what, void *arg)
{
    struct sch_ctx *ctx = arg;
    (void)fd, (void)what;
    if (sch_redis_connected(ctx))
        sweep_hosts(ctx);
    if (ctx->reap_inflight || !sch_redis_connected(ctx))
        return;
    char key[256], now[24];
    snprintf(now, sizeof(now), "%" PRIu64, cm_now_wall_ms());
    const char *argv[] = {
        "ZRANGEBYSCORE", sch_key(ctx, key, sizeof(key), "expiry"), "-inf", now, "LIMIT", "0",
        REAP_BATCH};
    if (sch_redis(ctx, on_expired, ctx, 7, argv) == 0)
        ctx->reap_inflight = 1;
}

/* ------------------------------------------------------------------ commands */

static void on_command(const char *channel, const char *msg, size_t len, void *data)
{
    struct sch_ctx *ctx = data;
    char buf[256], *save = NULL;
    (void)channel;
    if (len >= sizeof(buf)) {
        cm_log_warn("cmd", "command too long len=%zu", len);
        return;
    }
    memcpy(buf, msg, len);
    buf[len] = '\0';
    char *verb = strtok_r(buf, " ", &save);
    char *id = strtok_r(NULL, " ", &save);
    char *arg = strtok_r(NULL, " ", &save);
    if (!verb || !id) {
        cm_log_warn("cmd", "malformed command msg=\"%.*s\"", (int)len, msg);
        return;
    }
    if (strcmp(verb, "egress") == 0 && arg) {
        sch_egress_command(ctx, id, arg);
        return;
    }
    struct sch_inst *inst = sch_inst_find(ctx, id);
    if (strcmp(verb, "bind") == 0 && arg) {
        if (!inst) {
            cm_log_warn("cmd", "bind for an unknown instance inst=%s session=%s", id, arg);
            /* An instance of ours that is gone, still listed in Redis (a failover that kept
             * a pool entry whose removal the old primary never saw): the session must not
             * stay bound to it. The lost script marks it lost, so its next request follows
             * on_lost. Not while recovering: adoption is still finding our instances. */
            size_t hl = strlen(ctx->sc->host_id);
            if (ctx->recovered && !ctx->recovering && strncmp(id, ctx->sc->host_id, hl) == 0 &&
                id[hl] == '-') {
                char now[24];
                snprintf(now, sizeof(now), "%" PRIu64, cm_now_wall_ms());
                const char *argv[] = {ctx->cfg->redis.prefix, id, now, "unknown to its host"};
                sch_script(ctx, CM_SCRIPT_LOST, on_logged, ctx, 4, argv);
            }
            return;
        }
        sch_inst_bind(inst, arg);
    } else if (strcmp(verb, "destroy") == 0) {
        if (inst) {
            if (inst->state == SCH_INST_ADOPTING)
                inst->destroy_pending = 1; /* recover.c destroys it once adopted */
            else
                sch_inst_destroy(inst, "released");
            return;
        }
        /* Not in our table: remove whatever traces it left, and its record. */
        cm_log_warn("cmd", "destroy for an unknown instance inst=%s", id);
        sch_drivers_purge(ctx->drivers, id);
        char key[256];
        const char *del[] = {"DEL", sch_key(ctx, key, sizeof(key), "i:%s", id)};
        sch_redis(ctx, on_logged, ctx, 2, del);
    } else {
        cm_log_warn("cmd", "unknown command msg=\"%.*s\"", (int)len, msg);
    }
}

/* Recovery needs both connections: the subscription must be live before we read what Redis
 * knows, or a bind published in between would be missed. */
static void maybe_recover(struct sch_ctx *ctx)
{
    if (!ctx->recovered && !ctx->recovering && sch_redis_connected(ctx) && ctx->sub &&
        cm_redis_state(ctx->sub) == CM_REDIS_CONNECTED)
        sch_recover_start(ctx);
}

static void on_redis_state(struct cm_redis *r, int connected, void *data)
{
    struct sch_ctx *ctx = data;
    cm_log_info("redis", "%s addr=%s", connected ? "connected" : "disconnected",
                cm_redis_address(r));
    if (connected) {
        maybe_recover(ctx);
        sch_heartbeat(ctx);
        sch_reconcile_check(ctx); /* a restarted Redis may have come back empty */
    }
}

/* Wrong redis.username / password (or db): the client keeps retrying; say why, once per
 * different refusal (the subscriber is refused alike and stays quiet). */
static void on_redis_refused(struct cm_redis *r, const char *err, void *data)
{
    struct sch_ctx *ctx = data;
    cm_log_error("redis", "refused, retrying addr=%s user=%s err=\"%s\"",
                 cm_redis_address(r),
                 ctx->cfg->redis.username ? ctx->cfg->redis.username : "default", err);
}

static void on_sub_state(struct cm_redis *r, int connected, void *data)
{
    struct sch_ctx *ctx = data;
    (void)r;
    if (!connected)
        return;
    if (ctx->recovered)
        sch_recover_resync(ctx); /* commands published while we were away are lost */
    else
        maybe_recover(ctx);
}

/* ------------------------------------------------------------------ context */

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct sch_ctx *ctx = arg;
    (void)what;
    cm_log_info("main", "signal received, stopping; instances keep running signal=%d", (int)sig);
    ctx->stopping = 1;
    event_base_loopbreak(ctx->base);
}

static struct event *add_timer(struct sch_ctx *ctx, cm_usec_t every,
                               void (*cb)(evutil_socket_t, short, void *))
{
    struct event *ev = event_new(ctx->base, -1, EV_PERSIST, cb, ctx);
    struct timeval tv;
    cm_usec_to_tv(every, &tv);
    if (ev && event_add(ev, &tv) < 0) {
        event_free(ev);
        return NULL;
    }
    return ev;
}

/* The relay process ended (a crash: it ends only with us): another one, told every instance. */
static void on_relay_exit(evutil_socket_t fd, short what, void *arg)
{
    struct sch_ctx *ctx = arg;
    (void)fd, (void)what;
    event_free(ctx->relay_ev);
    ctx->relay_ev = NULL;
    int rc = sch_relay_respawn(ctx->relay);
    cm_log_error("relay", "the relay process ended: connections through it were cut status=%d",
                 rc);
    if (rc < 0) {
        cm_log_error("relay", "cannot start another relay process: %s", strerror(-rc));
        return;
    }
    unsigned n = 0;
    for (struct sch_inst *i = ctx->insts; i; i = i->next)
        if (i->di && sch_relay_add(ctx->relay, i->id, i->di->addr) == 0)
            n++;
    ctx->relay_ev = event_new(ctx->base, sch_relay_exit_fd(ctx->relay), EV_READ, on_relay_exit,
                              ctx);
    if (!ctx->relay_ev || event_add(ctx->relay_ev, NULL) < 0)
        cm_log_error("relay", "cannot watch the new relay process");
    cm_log_info("relay", "relay process started again instances=%u", n);
}

struct sch_ctx *sch_ctx_create(struct event_base *base, const struct cm_config *cfg,
                               const struct sch_config *sc, char *err, size_t errlen)
{
    struct sch_ctx *ctx = calloc(1, sizeof(*ctx));
    if (!ctx) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    ctx->base = base;
    ctx->cfg = cfg;
    ctx->sc = sc;
    char dpath[512];
    drain_path(ctx, dpath, sizeof(dpath));
    if (access(dpath, F_OK) == 0) {
        ctx->draining = 1;
        cm_log_info("main", "draining (since before the restart: %s) host=%s", dpath,
                    sc->host_id);
    }
    /* Templates of other drivers (static: existing upstreams the gateway registers itself)
     * are not ours: no pools, no starts. */
    for (size_t i = 0; i < cfg->n_templates; i++)
        if (!sch_template_started_here(&cfg->templates[i]))
            cm_log_info("main", "template not started by this scheduler template=%s driver=%s",
                        cfg->templates[i].name, cfg->templates[i].driver);
    /* The relay first: it is forked, and should take as little of our state as can be. */
    if (sc->instance_relay.listen) {
        ctx->relay = sch_relay_create(&sc->instance_relay, sc->api_secret, err, errlen);
        if (!ctx->relay)
            goto fail;
        ctx->relay_ev = event_new(base, sch_relay_exit_fd(ctx->relay), EV_READ, on_relay_exit,
                                  ctx);
        if (!ctx->relay_ev || event_add(ctx->relay_ev, NULL) < 0) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        cm_log_info("relay", "instance relay up listen=%s advertise=%s",
                    sc->instance_relay.listen, sch_relay_advertised(ctx->relay));
    }
    if (sch_egress_start(ctx, err, errlen) < 0)
        goto fail;
    if (sch_pool_init(ctx) < 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    ctx->drivers = sch_drivers_create(sch_driver_builtin, sc, base);
    if (!ctx->drivers) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    /* Every known driver is probed (GET /v1/status says which work here); only those the
     * templates name are created, and one that is unknown or cannot work here stops us. */
    sch_drivers_probe_all(ctx->drivers);
    for (size_t i = 0; i < sch_drivers_count(ctx->drivers); i++) {
        const char *why = "";
        int ok = sch_drivers_available(ctx->drivers, i, &why);
        cm_log_info("driver", "probed driver=%s available=%s reason=\"%s\"",
                    sch_drivers_name(ctx->drivers, i), ok == 1 ? "yes" : "no", why);
    }
    if (sch_drivers_for_templates(ctx->drivers, cfg, 1, err, errlen) < 0)
        goto fail;
    for (size_t i = 0; i < cfg->n_templates; i++) {
        const struct cm_template *t = &cfg->templates[i];
        struct sch_driver *d = sch_template_driver(ctx, t);
        if (t->pause_after && d && !d->ops->pause)
            cm_log_warn("pause",
                        "this driver cannot pause: idle.pause_after is ignored "
                        "template=%s driver=%s",
                        t->name, d->ops->name);
    }
    ctx->agentctl = sch_agentctl_create(base);
    ctx->usage_labels = cm_usagetab_create();
    if (!ctx->agentctl || !ctx->usage_labels) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    ctx->api = sch_api_create(ctx, err, errlen);
    if (!ctx->api)
        goto fail;

    ctx->redis = cm_redis_create(base, &cfg->redis, on_redis_state, ctx);
    ctx->sub = cm_redis_create(base, &cfg->redis, on_sub_state, ctx);
    if (ctx->redis)
        cm_redis_set_refused_cb(ctx->redis, on_redis_refused, ctx);
    char channel[256];
    sch_key(ctx, channel, sizeof(channel), "cmd:%s", sc->host_id);
    if (!ctx->redis || !ctx->sub || cm_redis_subscribe(ctx->sub, channel, on_command, ctx) < 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    ctx->heartbeat_ev = add_timer(ctx, sc->heartbeat, on_heartbeat);
    ctx->reap_ev = add_timer(ctx, sc->reap_interval, on_reap);
    ctx->sigterm_ev = evsignal_new(base, SIGTERM, on_signal, ctx);
    ctx->sigint_ev = evsignal_new(base, SIGINT, on_signal, ctx);
    if (!ctx->heartbeat_ev || !ctx->reap_ev || !ctx->sigterm_ev || !ctx->sigint_ev ||
        event_add(ctx->sigterm_ev, NULL) < 0 || event_add(ctx->sigint_ev, NULL) < 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    char drivers[128];
    sch_drivers_names(ctx->drivers, drivers, sizeof(drivers));
    cm_log_info("main", "scheduler up host=%s api=%s drivers=%s capacity=%u", sc->host_id,
                ctx->api_addr, drivers, sc->capacity);
    return ctx;
fail:
    sch_ctx_destroy(ctx);
    return NULL;
}

void sch_ctx_destroy(struct sch_ctx *ctx)
{
    if (!ctx)
        return;
    ctx->stopping = 1;
    /* The API first: pending starts answer 503 while the instances still exist. */
    sch_api_destroy(ctx->api);
    ctx->api = NULL;
    /* Redis next: its pending callbacks run now (with errors) and must find everything. */
    cm_redis_destroy(ctx->sub);
    cm_redis_destroy(ctx->redis);
    ctx->sub = ctx->redis = NULL;
    /* Agent requests in flight hold instances and recovery checks: fail them now. */
    sch_agentctl_destroy(ctx->agentctl);
    ctx->agentctl = NULL;
    sch_recover_abort(ctx);
    sch_inst_release_all(ctx);
    if (ctx->relay_ev)
        event_free(ctx->relay_ev);
    ctx->relay_ev = NULL;
    sch_egress_stop(ctx);
    sch_relay_destroy(ctx->relay); /* ends relayed connections: see README, "Instance relay" */
    ctx->relay = NULL;
    struct event *evs[] = {ctx->heartbeat_ev, ctx->reap_ev, ctx->sigterm_ev, ctx->sigint_ev};
    for (size_t i = 0; i < CM_ARRAY_SIZE(evs); i++)
        if (evs[i])
            event_free(evs[i]);
    sch_drivers_destroy(ctx->drivers);
    sch_pool_fini(ctx);
    cm_usagetab_destroy(ctx->usage_labels); /* after Redis: no USAGE reply is still to come */
    free(ctx);
}
