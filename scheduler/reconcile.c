#include "scheduler/reconcile.h"

#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/log.h"
#include "scheduler/driver.h"
#include "scheduler/instance.h"
#include "scheduler/pool.h"
#include "scheduler/sched.h"

/* After a reconcile, gateways treat a session Redis does not know as "not known yet" (they
 * keep a cached binding) until P epoch's time: every scheduler reads its marker at each
 * heartbeat, so within a few heartbeats every host has written back its bound sessions. */
#define SETTLE_HEARTBEATS 3

/* One reconcile round: the replies still to come and what they said. */
struct round {
    struct sch_ctx *ctx;
    int pending;
    unsigned warm, starting, stopping, kept, vanished, taken, claimed, failed;
};

/* One instance's script on its way. */
struct item {
    struct round *r;
    struct sch_inst *inst; /* holds a reference */
    char session[CM_HASH_HEX_LEN + 1];
};

static void on_logged(struct redisReply *reply, const char *err, void *data)
{
    struct sch_ctx *ctx = data;
    (void)reply;
    if (err && !ctx->stopping)
        cm_log_warn("reconcile", "redis command failed err=\"%s\"", err);
}

static int set_mark(struct sch_ctx *ctx)
{
    char key[256];
    if (cm_random_id(ctx->mark) < 0) {
        ctx->mark[0] = '\0';
        return -1;
    }
    const char *argv[] = {"SET", sch_key(ctx, key, sizeof(key), "host:%s:mark", ctx->sc->host_id),
                          ctx->mark};
    if (sch_redis(ctx, on_logged, ctx, 3, argv) < 0) {
        ctx->mark[0] = '\0';
        return -1;
    }
    return 0;
}

static void set_epoch(struct sch_ctx *ctx, uint64_t at_ms,
                      void (*cb)(struct redisReply *, const char *, void *), void *data)
{
    char key[256], at[24];
    snprintf(at, sizeof(at), "%" PRIu64, at_ms);
    const char *argv[] = {"SET", sch_key(ctx, key, sizeof(key), "epoch"), at, "NX"};
    if (sch_redis(ctx, cb, data, 4, argv) < 0)
        cb(NULL, "not connected", data);
}

/* When gateways may count a session Redis does not know as ended: after a reconcile, the other
 * hosts get SETTLE_HEARTBEATS to write theirs back. */
static uint64_t settle_at(const struct sch_ctx *ctx, uint64_t now_ms)
{
    return now_ms + SETTLE_HEARTBEATS * (ctx->sc->heartbeat / CM_USEC_PER_MSEC);
}

void sch_reconcile_mark(struct sch_ctx *ctx)
{
    /* now, not settle_at(): a fresh Redis must not answer "unknown" (503) for a while after
     * every first start. (Known gap: a host that recovers first closes the window of another
     * host that has not reconciled yet.) */
    if (set_mark(ctx) == 0)
        set_epoch(ctx, cm_now_wall_ms(), on_logged, ctx);
}

/* ------------------------------------------------------------------ the round */

static void round_step(struct round *r)
{
    struct sch_ctx *ctx = r->ctx;
    if (--r->pending > 0)
        return;
    ctx->reconciling = 0;
    if (r->failed)
        ctx->mark[0] = '\0'; /* not all written back: the next heartbeat reconciles again */
    if (!ctx->stopping) {
        cm_log_warn("reconcile",
                    "redis had lost this host's records: written back warm=%u starting=%u "
                    "stopping=%u bound_kept=%u bound_lost=%u bound_taken=%u claimed=%u "
                    "failed=%u live=%u",
                    r->warm, r->starting, r->stopping, r->kept, r->vanished, r->taken, r->claimed,
                    r->failed, ctx->n_live);
        sch_heartbeat(ctx);
        sch_pool_refill(ctx, NULL);
    }
    free(r);
    if (ctx->reconcile_again && !ctx->stopping) {
        ctx->reconcile_again = 0;
        sch_reconcile_start(ctx, "asked again while reconciling");
    }
}

static void on_epoch(struct redisReply *reply, const char *err, void *data)
{
    struct round *r = data;
    (void)reply;
    if (err) {
        r->failed++;
        if (!r->ctx->stopping)
            cm_log_warn("reconcile", "cannot write the epoch err=\"%s\"", err);
    }
    round_step(r);
}

static const char *reply_str(const struct redisReply *rp, size_t i)
{
    if (!rp || rp->type != REDIS_REPLY_ARRAY || i >= rp->elements ||
        rp->element[i]->type != REDIS_REPLY_STRING)
        return "";
    return rp->element[i]->str;
}

static void on_item(struct redisReply *reply, const char *err, void *data)
{
    struct item *it = data;
    struct round *r = it->r;
    struct sch_inst *inst = it->inst;
    const char *st = reply_str(reply, 0);
    if (err || !*st) {
        r->failed++;
        if (!r->ctx->stopping)
            cm_log_warn("reconcile", "cannot write back inst=%s err=\"%s\"", inst->id,
                        err ? err : "bad reply");
    } else if (strcmp(st, "warm") == 0) {
        r->warm++;
    } else if (strcmp(st, "starting") == 0) {
        r->starting++;
    } else if (strcmp(st, "releasing") == 0) {
        r->stopping++;
    } else if (strcmp(st, "bound") == 0) {
        r->kept++;
    } else if (strcmp(st, "claimed") == 0) {
        /* A claim bound it between the loss and this script: its bind command is on its way
         * (or was missed with the subscription); binding again is idempotent. */
        r->claimed++;
        const char *h = reply_str(reply, 1);
        if (*h && inst->state == SCH_INST_WARM)
            sch_inst_bind(inst, h);
    } else if (strcmp(st, "vanished") == 0 || strcmp(st, "taken") == 0 ||
               strcmp(st, "released") == 0) {
        /* Redis no longer binds the session to this instance (its record vanished: now a lost
         * record, so its next request follows on_lost; or it is another instance's, or being
         * released): free the capacity. */
        if (st[0] == 'v')
            r->vanished++;
        else
            r->taken++;
        if (inst->state == SCH_INST_BOUND && strcmp(inst->session, it->session) == 0) {
            cm_log_warn("reconcile", "ending instance inst=%s session=%s redis=%s", inst->id,
                        it->session, st);
            sch_inst_destroy(inst, st[0] == 'v' ? "redis lost its session"
                                                : "session no longer on this instance");
        }
    }
    sch_inst_unref(inst);
    free(it);
    round_step(r);
}

static int send_item(struct round *r, struct sch_inst *inst, const char *state, uint64_t now_ms,
                     cm_usec_t now_mono)
{
    struct sch_ctx *ctx = r->ctx;
    struct item *it = calloc(1, sizeof(*it));
    if (!it)
        return -1;
    it->r = r;
    it->inst = inst;
    snprintf(it->session, sizeof(it->session), "%s", inst->session);
    char now[24], started[24], pid[16], ttl[24], pub[SCH_ADDR_MAX];
    cm_usec_t age = now_mono > inst->started ? now_mono - inst->started : 0;
    snprintf(now, sizeof(now), "%" PRIu64, now_ms);
    snprintf(started, sizeof(started), "%" PRIu64, now_ms - age / CM_USEC_PER_MSEC);
    snprintf(pid, sizeof(pid), "%d", (int)inst->di->pid);
    snprintf(ttl, sizeof(ttl), "%" PRIu64, (uint64_t)(inst->tpl->ttl / CM_USEC_PER_MSEC) + 1);
    const char *argv[] = {ctx->cfg->redis.prefix,
                          ctx->sc->host_id,
                          inst->id,
                          inst->tpl->name,
                          sch_inst_addr(inst, pub, sizeof(pub)),
                          state,
                          it->session,
                          started,
                          pid,
                          now,
                          ttl,
                          inst->drv->ops->name};
    sch_inst_ref(inst);
    r->pending++;
    if (sch_script(ctx, CM_SCRIPT_RECONCILE, on_item, it, (int)CM_ARRAY_SIZE(argv), argv) < 0) {
        r->pending--;
        sch_inst_unref(inst);
        free(it);
        return -1;
    }
    return 0;
}

void sch_reconcile_start(struct sch_ctx *ctx, const char *why)
{
    if (!ctx->recovered || ctx->stopping || !sch_redis_connected(ctx))
        return;
    if (ctx->reconciling) {
        ctx->reconcile_again = 1;
        return;
    }
    struct round *r = calloc(1, sizeof(*r));
    if (!r)
        return;
    r->ctx = ctx;
    r->pending = 1; /* the epoch write, sent last */
    cm_log_warn("reconcile",
                "redis lacks this host's records, writing them back host=%s why=\"%s\"",
                ctx->sc->host_id, why);
    /* The marker first: a second loss while the records are written takes it along and is
     * caught at the next heartbeat. */
    if (set_mark(ctx) < 0) {
        free(r);
        return;
    }
    ctx->reconciling = 1;
    uint64_t now_ms = cm_now_wall_ms();
    cm_usec_t now_mono = cm_now_mono();
    for (struct sch_inst *i = ctx->insts; i; i = i->next) {
        const char *state = NULL;
        switch (i->state) {
        case SCH_INST_STARTING:
            state = "starting";
            break;
        case SCH_INST_WARM:
            state = "warm";
            break;
        case SCH_INST_BOUND:
            state = "bound";
            break;
        case SCH_INST_STOPPING:
            state = "releasing";
            break;
        default:
            break; /* adopting (no reconcile before recovery) or gone */
        }
        if (!state || !i->tpl || !i->di)
            continue;
        if (send_item(r, i, state, now_ms, now_mono) < 0)
            r->failed++;
    }
    /* Last, after every session this host writes back: gateways wait a few heartbeats more
     * for the other hosts before they take an unknown session as ended. */
    set_epoch(ctx, settle_at(ctx, now_ms), on_epoch,
              r);
}

/* ------------------------------------------------------------------ the check */

static void on_mark(struct redisReply *reply, const char *err, void *data)
{
    struct sch_ctx *ctx = data;
    ctx->mark_inflight = 0;
    if (err || !reply || ctx->stopping || ctx->reconciling)
        return;
    if (reply->type == REDIS_REPLY_STRING && ctx->mark[0] && strcmp(reply->str, ctx->mark) == 0) {
        sch_pool_refill(ctx, NULL);
        return;
    }
    sch_reconcile_start(ctx,
                        reply->type == REDIS_REPLY_STRING ? "marker changed" : "marker missing");
}

void sch_reconcile_check(struct sch_ctx *ctx)
{
    if (!ctx->recovered || ctx->stopping || ctx->reconciling || ctx->mark_inflight ||
        !sch_redis_connected(ctx))
        return;
    char key[256];
    const char *argv[] = {"GET", sch_key(ctx, key, sizeof(key), "host:%s:mark", ctx->sc->host_id)};
    if (sch_redis(ctx, on_mark, ctx, 2, argv) == 0)
        ctx->mark_inflight = 1;
}
