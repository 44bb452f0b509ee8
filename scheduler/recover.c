#include "scheduler/recover.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/log.h"
#include "scheduler/agentctl.h"
#include "scheduler/driver.h"
#include "scheduler/instance.h"
#include "scheduler/pool.h"
#include "scheduler/reconcile.h"
#include "scheduler/report.h"
#include "scheduler/sched.h"

#define STATUS_TIMEOUT (2 * CM_USEC_PER_SEC)

struct sch_recovery {
    struct sch_ctx *ctx;
    int pending;  /* per-instance checks not finished */
    int listed;   /* the SMEMBERS reply has been handled */
    int failed;   /* Redis failed on the way: retry on the next connect */
    char **known; /* ids in P host:<host>:instances */
    /* Every created driver's list of the ids it left traces of, taken when recovery starts:
     * which driver owns an instance (Redis may have lost the record, or a forged one may name
     * another driver). NULL when a list failed: then the recorded driver is trusted and no
     * orphan is purged. */
    struct sch_drivers_traces *traces;
    unsigned adopted, lost, purged, destroyed;
};

/* One instance being checked. */
struct check {
    struct sch_recovery *rec;
    struct sch_inst *inst; /* holds a reference */
    const struct cm_template *tpl;
    struct sch_dinst *di;
    char state[16];
    char session[CM_HASH_HEX_LEN + 1];
};

static void on_logged(struct redisReply *reply, const char *err, void *data)
{
    struct sch_ctx *ctx = data;
    (void)reply;
    if (err && !ctx->stopping)
        cm_log_warn("recover", "redis command failed err=\"%s\"", err);
}

static void srem(struct sch_ctx *ctx, const char *id)
{
    char key[256];
    const char *argv[] = {
        "SREM", sch_key(ctx, key, sizeof(key), "host:%s:instances", ctx->sc->host_id), id};
    sch_redis(ctx, on_logged, ctx, 3, argv);
}

static void run_lost(struct sch_ctx *ctx, const char *id, const char *reason)
{
    char now[24];
    snprintf(now, sizeof(now), "%" PRIu64, cm_now_wall_ms());
    const char *argv[] = {ctx->cfg->redis.prefix, id, now, reason};
    sch_script(ctx, CM_SCRIPT_LOST, on_logged, ctx, 4, argv);
}

/* Each pool list becomes exactly the adopted warm instances of its template: entries of
 * instances that are gone would otherwise count as warm forever. One MULTI/EXEC per template,
 * so a claim never sees the list half rebuilt. */
static void rebuild_pools(struct sch_ctx *ctx)
{
    for (size_t t = 0; t < ctx->cfg->n_templates; t++) {
        const struct cm_template *tpl = &ctx->cfg->templates[t];
        if (!sch_template_started_here(tpl))
            continue;
        char key[256];
        sch_key(ctx, key, sizeof(key), "pool:%s:%s", ctx->sc->host_id, tpl->name);
        const char *multi[] = {"MULTI"}, *exec[] = {"EXEC"}, *del[] = {"DEL", key};
        sch_redis(ctx, on_logged, ctx, 1, multi);
        sch_redis(ctx, on_logged, ctx, 2, del);
        const char *push[16 + 2] = {"RPUSH", key};
        int n = 2;
        for (struct sch_inst *i = ctx->insts; i; i = i->next) {
            if (i->tpl != tpl || i->state != SCH_INST_WARM)
                continue;
            push[n++] = i->id;
            if (n == (int)CM_ARRAY_SIZE(push)) {
                sch_redis(ctx, on_logged, ctx, n, push);
                n = 2;
            }
        }
        if (n > 2)
            sch_redis(ctx, on_logged, ctx, n, push);
        sch_redis(ctx, on_logged, ctx, 1, exec);
    }
}

static void purge_orphan(const char *id, struct sch_driver *owner, void *data)
{
    struct sch_recovery *rec = data;
    struct sch_ctx *ctx = rec->ctx;
    int known = sch_inst_find(ctx, id) != NULL;
    for (char **k = rec->known; k && *k && !known; k++)
        known = strcmp(*k, id) == 0;
    if (known)
        return;
    if (!owner) {
        cm_log_error("recover", "orphan listed by several drivers, left alone inst=%s", id);
        return;
    }
    cm_log_warn("recover", "purging orphan inst=%s driver=%s", id, owner->ops->name);
    owner->ops->purge(owner, id);
    rec->purged++;
}

/* The driver owning instance <id>: the one whose traces hold it. The record's `driver` only
 * decides between several that list it, or when the traces could not be listed. */
static struct sch_driver *owner_of(struct sch_recovery *rec, const char *id, const char *recorded)
{
    struct sch_ctx *ctx = rec->ctx;
    if (!rec->traces)
        return recorded ? sch_drivers_get(ctx->drivers, recorded) : NULL;
    int ambiguous = 0;
    struct sch_driver *owner = sch_drivers_owner(rec->traces, id, recorded, &ambiguous);
    if (ambiguous && !owner)
        cm_log_error("recover",
                     "instance listed by several drivers, none recorded inst=%s "
                     "recorded=%s",
                     id, recorded ? recorded : "-");
    else if (owner && recorded && strcmp(recorded, owner->ops->name) != 0)
        cm_log_warn("recover",
                    "record names another driver than the instance's traces "
                    "inst=%s recorded=%s traces=%s",
                    id, recorded, owner->ops->name);
    return owner;
}

static void finish_recovery(struct sch_recovery *rec)
{
    struct sch_ctx *ctx = rec->ctx;
    if (rec->pending > 0 || !rec->listed)
        return;
    ctx->recovery = NULL;
    ctx->recovering = 0;
    if (rec->failed || ctx->stopping) {
        cm_log_warn("recover", "recovery interrupted, will retry on the next connect");
        /* Entries still adopting were never taken over: drop them for the next round. */
        struct sch_inst *i = ctx->insts;
        while (i) {
            struct sch_inst *next = i->next;
            if (i->state == SCH_INST_ADOPTING)
                sch_inst_forget(i);
            i = next;
        }
        cm_strv_free(rec->known);
        sch_drivers_traces_free(rec->traces);
        free(rec);
        return;
    }
    /* Traces of our ids that Redis does not know: orphans, purged by the driver that left
     * them. */
    if (rec->traces)
        sch_drivers_traces_each(rec->traces, purge_orphan, rec);
    else
        cm_log_warn("recover", "cannot list the drivers' instances: orphans not purged");
    cm_log_info("recover", "recovery done adopted=%u lost=%u destroyed=%u purged=%u live=%u",
                rec->adopted, rec->lost, rec->destroyed, rec->purged, ctx->n_live);
    cm_strv_free(rec->known);
    sch_drivers_traces_free(rec->traces);
    free(rec);
    rebuild_pools(ctx);
    ctx->recovered = 1;
    sch_reconcile_mark(ctx);
    sch_heartbeat(ctx);
    sch_pool_refill(ctx, NULL);
}

static void check_done(struct check *c)
{
    struct sch_recovery *rec = c->rec;
    sch_inst_unref(c->inst);
    free(c);
    rec->pending--;
    finish_recovery(rec);
}

static void decide(struct check *c, int ready, int agent_has_session, const char *reply, int err);

/* The agent answered (or not): its reply runs inside the sandbox, so it is parsed strictly and
 * logged sanitized. */
static void on_status(const char *reply, int err, void *data)
{
    int ready = 0, agent_has_session = 0;
    char shown[128] = "";
    if (reply) {
        sch_report_status(reply, strlen(reply), &ready, &agent_has_session);
        sch_report_sanitize(reply, strlen(reply), shown, sizeof(shown));
    }
    decide(data, ready, agent_has_session, reply ? shown : NULL, err);
}

/* What the adopted instance becomes, from what its agent said (<reply>: sanitized, NULL when
 * it did not answer). */
static void decide(struct check *c, int ready, int agent_has_session, const char *reply, int err)
{
    struct sch_inst *inst = c->inst;
    struct sch_ctx *ctx = inst->ctx;
    if (ctx->stopping || inst->state != SCH_INST_ADOPTING) {
        if (c->di)
            inst->drv->ops->release(inst->drv, c->di);
        check_done(c);
        return;
    }
    int bound = strcmp(c->state, "bound") == 0;
    struct sch_dinst *di = c->di;
    c->di = NULL;
    sch_inst_adopted(inst, c->tpl, di, bound && ready && c->tpl, c->session);
    if (inst->state == SCH_INST_GONE) {
        check_done(c);
        return;
    }
    const char *why = NULL;
    int lost = 0;
    if (!ready) {
        why = reply ? "agent not ready after restart" : "agent unresponsive after restart";
        lost = bound;
        cm_log_warn("recover", "%s inst=%s reply=\"%s\" err=\"%s\"", why, inst->id,
                    reply ? reply : "", err ? strerror(-err) : "");
    } else if (!c->tpl) {
        why = "template no longer configured";
        lost = bound;
    } else if (strcmp(c->state, "warm") == 0 && agent_has_session) {
        why = "agent bound but Redis says warm";
    } else if (strcmp(c->state, "warm") != 0 && !bound) {
        why = strcmp(c->state, "releasing") == 0 ? "released" : "was starting at restart";
    } else if (inst->destroy_pending) {
        why = "released";
    }
    if (why) {
        if (lost)
            sch_inst_stop(inst, why, 1);
        else
            sch_inst_destroy(inst, why);
        c->rec->destroyed++;
    } else {
        c->rec->adopted++;
        cm_log_info("recover", "adopted inst=%s template=%s state=%s pid=%d session=%s", inst->id,
                    c->tpl->name, c->state, (int)inst->di->pid, bound ? c->session : "-");
    }
    check_done(c);
}

static const char *field(const struct redisReply *r, const char *name)
{
    for (size_t i = 0; i + 1 < r->elements; i += 2)
        if (r->element[i]->type == REDIS_REPLY_STRING && strcmp(r->element[i]->str, name) == 0 &&
            r->element[i + 1]->type == REDIS_REPLY_STRING)
            return r->element[i + 1]->str;
    return NULL;
}

static void on_record(struct redisReply *reply, const char *err, void *data)
{
    struct check *c = data;
    struct sch_inst *inst = c->inst;
    struct sch_ctx *ctx = inst->ctx;
    if (err || !reply || reply->type != REDIS_REPLY_ARRAY) {
        c->rec->failed = 1;
        check_done(c);
        return;
    }
    if (ctx->stopping) {
        check_done(c);
        return;
    }
    const char *host = field(reply, "host"), *tpl = field(reply, "template");
    const char *state = field(reply, "state"), *session = field(reply, "session");
    const char *recorded = field(reply, "driver");
    struct sch_driver *owner = owner_of(c->rec, inst->id, recorded);
    if (reply->elements == 0 || !host || strcmp(host, ctx->sc->host_id) != 0) {
        /* No record (or another host's): nothing can be bound to it. */
        cm_log_warn("recover", "no instance record, purging inst=%s", inst->id);
        if (owner)
            owner->ops->purge(owner, inst->id);
        else
            sch_drivers_purge(ctx->drivers, inst->id);
        srem(ctx, inst->id);
        sch_inst_forget(inst);
        c->rec->purged++;
        check_done(c);
        return;
    }
    c->tpl = tpl ? cm_config_template(ctx->cfg, tpl) : NULL;
    snprintf(c->state, sizeof(c->state), "%s", state ? state : "");
    snprintf(c->session, sizeof(c->session), "%s", session ? session : "");
    char msg[256] = "no driver in use here left traces of it";
    int rc = -ESRCH;
    if (owner) {
        inst->drv = owner;
        rc = owner->ops->adopt(owner, inst->id, &c->di, msg, sizeof(msg));
    }
    if (rc < 0) {
        cm_log_warn("recover", "instance gone while the scheduler was away inst=%s err=\"%s\"",
                    inst->id, msg);
        if (owner)
            owner->ops->purge(owner, inst->id);
        run_lost(ctx, inst->id, "gone while the scheduler was down");
        srem(ctx, inst->id);
        sch_inst_forget(inst);
        c->rec->lost++;
        check_done(c);
        return;
    }
    if (!recorded || strcmp(recorded, owner->ops->name) != 0) {
        /* Written before drivers were recorded, or changed in Redis: the traces decide. */
        char key[256];
        const char *hset[] = {"HSET", sch_key(ctx, key, sizeof(key), "i:%s", inst->id), "driver",
                              owner->ops->name};
        sch_redis(ctx, on_logged, ctx, 4, hset);
    }
    if (c->di->paused) {
        /* A restored VM clone not resumed yet: its agent runs only after bind; QEMU already
         * said it is paused, which is a warm instance's state (ready, no session). */
        decide(c, 1, 0, "paused VM", 0);
        return;
    }
    /* A paused (frozen) instance answers nothing: thaw it first (sch_inst_adopted() then tells
     * its agent to RESUME and counts the time it was paused). */
    if (owner->ops->pause && owner->ops->pause(owner, c->di, 0, msg, sizeof(msg)) < 0)
        cm_log_warn("recover", "cannot thaw inst=%s err=\"%s\"", inst->id, msg);
    cm_usec_t timeout = owner->ops->agent_timeout ? owner->ops->agent_timeout : STATUS_TIMEOUT;
    if (sch_agentctl_request(ctx->agentctl, c->di->ctl, "STATUS", timeout, on_status, c) < 0)
        on_status(NULL, -ENOMEM, c);
}

static void on_members(struct redisReply *reply, const char *err, void *data)
{
    struct sch_recovery *rec = data;
    struct sch_ctx *ctx = rec->ctx;
    rec->listed = 1;
    if (err || !reply || reply->type != REDIS_REPLY_ARRAY || ctx->stopping) {
        rec->failed = 1;
        finish_recovery(rec);
        return;
    }
    rec->known = calloc(reply->elements + 1, sizeof(char *));
    if (!rec->known) {
        rec->failed = 1;
        finish_recovery(rec);
        return;
    }
    size_t nk = 0;
    for (size_t i = 0; i < reply->elements; i++) {
        const struct redisReply *e = reply->element[i];
        if (e->type != REDIS_REPLY_STRING || e->len > SCH_INST_ID_MAX)
            continue;
        if (!(rec->known[nk] = strdup(e->str)))
            break;
        nk++;
        if (sch_inst_find(ctx, e->str))
            continue; /* adopted by an earlier, interrupted round */
        struct check *c = calloc(1, sizeof(*c));
        struct sch_inst *inst = c ? sch_inst_adopting(ctx, e->str) : NULL;
        if (!inst) {
            free(c);
            rec->failed = 1;
            break;
        }
        c->rec = rec;
        c->inst = inst;
        sch_inst_ref(inst);
        char key[256];
        const char *argv[] = {"HGETALL", sch_key(ctx, key, sizeof(key), "i:%s", e->str)};
        rec->pending++;
        if (sch_redis(ctx, on_record, c, 2, argv) < 0) {
            rec->failed = 1;
            check_done(c);
        }
    }
    finish_recovery(rec);
}

void sch_recover_start(struct sch_ctx *ctx)
{
    struct sch_recovery *rec = calloc(1, sizeof(*rec));
    if (!rec)
        return;
    rec->ctx = ctx;
    rec->traces = sch_drivers_list_all(ctx->drivers);
    ctx->recovery = rec;
    ctx->recovering = 1;
    cm_log_info("recover", "reconciling instances with Redis host=%s", ctx->sc->host_id);
    char key[256];
    const char *argv[] = {"SMEMBERS",
                          sch_key(ctx, key, sizeof(key), "host:%s:instances", ctx->sc->host_id)};
    if (sch_redis(ctx, on_members, rec, 2, argv) < 0) {
        rec->listed = 1;
        rec->failed = 1;
        finish_recovery(rec);
    }
}

void sch_recover_abort(struct sch_ctx *ctx)
{
    /* Redis callbacks have run (with errors) before this; agent requests may still be
     * pending in a loop that will not run again. Nothing to do but forget the pointer. */
    ctx->recovery = NULL;
}

/* ------------------------------------------------------------------ resync */

static void on_resync(struct redisReply *reply, const char *err, void *data)
{
    struct sch_inst *inst = data;
    if (!err && reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
        inst->state == SCH_INST_WARM && !inst->pushing && !inst->ctx->stopping) {
        const struct redisReply *st = reply->element[0], *se = reply->element[1];
        if (st->type != REDIS_REPLY_STRING) {
            /* Redis lost it (restarted empty?): write back every record, not only this one. */
            sch_reconcile_start(inst->ctx, "a warm instance's record vanished");
        } else if (strcmp(st->str, "bound") == 0 && se->type == REDIS_REPLY_STRING) {
            cm_log_info("recover", "resync: bind missed while away inst=%s", inst->id);
            sch_inst_bind(inst, se->str);
        } else if (strcmp(st->str, "releasing") == 0) {
            sch_inst_destroy(inst, "released");
        }
    }
    sch_inst_unref(inst);
}

/* A pool list may hold ids of instances that are gone: after a failover, the new primary
 * kept an entry whose removal the old one took (or never got). Each such entry is taken out,
 * so that no claim binds a session to it. */
static void on_pool_entries(struct redisReply *reply, const char *err, void *data)
{
    struct sch_ctx *ctx = data;
    if (err || !reply || reply->type != REDIS_REPLY_ARRAY || ctx->stopping)
        return;
    for (size_t k = 0; k + 1 < reply->elements; k += 2) { /* key, then its entries */
        const redisReply *key = reply->element[k], *ids = reply->element[k + 1];
        if (key->type != REDIS_REPLY_STRING || ids->type != REDIS_REPLY_ARRAY)
            continue;
        for (size_t i = 0; i < ids->elements; i++) {
            const redisReply *id = ids->element[i];
            if (id->type != REDIS_REPLY_STRING)
                continue;
            struct sch_inst *inst = sch_inst_find(ctx, id->str);
            if (inst && (inst->state == SCH_INST_WARM || inst->state == SCH_INST_STARTING))
                continue;
            cm_log_warn("recover", "resync: a pool lists an instance that is not warm here: "
                                   "removed inst=%s",
                        id->str);
            const char *argv[] = {"LREM", key->str, "0", id->str};
            sch_redis(ctx, on_logged, ctx, 4, argv);
        }
    }
}

void sch_recover_resync(struct sch_ctx *ctx)
{
    for (size_t t = 0; t < ctx->cfg->n_templates; t++) {
        const struct cm_template *tpl = &ctx->cfg->templates[t];
        if (!sch_template_started_here(tpl))
            continue;
        char key[256];
        sch_key(ctx, key, sizeof(key), "pool:%s:%s", ctx->sc->host_id, tpl->name);
        /* One reply that names its key (the callback needs it) and holds its entries. */
        const char *argv[] = {"EVAL", "return {KEYS[1], redis.call('LRANGE', KEYS[1], 0, -1)}",
                              "1", key};
        sch_redis(ctx, on_pool_entries, ctx, 4, argv);
    }
    for (struct sch_inst *i = ctx->insts; i; i = i->next) {
        if (i->state != SCH_INST_WARM || i->pushing)
            continue;
        char key[256];
        const char *argv[] = {"HMGET", sch_key(ctx, key, sizeof(key), "i:%s", i->id), "state",
                              "session"};
        sch_inst_ref(i);
        if (sch_redis(ctx, on_resync, i, 4, argv) < 0)
            sch_inst_unref(i);
    }
}
