#include "scheduler/pool.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/log.h"
#include "scheduler/instance.h"
#include "scheduler/sched.h"

/* Data of one LLEN (or RPOP) on its way: the pool by index, robust against nothing but a
 * context that outlives every Redis callback (cm_redis_destroy fails them before we free). */
struct pool_op {
    struct sch_ctx *ctx;
    size_t idx;
};

int sch_pool_init(struct sch_ctx *ctx)
{
    size_t n = ctx->cfg->n_templates;
    ctx->pools = calloc(n ? n : 1, sizeof(*ctx->pools));
    if (!ctx->pools)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        ctx->pools[i].tpl = &ctx->cfg->templates[i];
    return 0;
}

void sch_pool_fini(struct sch_ctx *ctx)
{
    free(ctx->pools);
    ctx->pools = NULL;
}

unsigned sch_pool_starting(const struct sch_ctx *ctx, const struct cm_template *tpl)
{
    unsigned n = 0;
    for (const struct sch_inst *i = ctx->insts; i; i = i->next)
        if (i->tpl == tpl && i->for_pool &&
            (i->state == SCH_INST_STARTING || (i->state == SCH_INST_WARM && i->pushing)))
            n++;
    return n;
}

/* Instances starting for any pool of this host (those of POST /v1/start are not counted). */
static unsigned pool_starts(const struct sch_ctx *ctx)
{
    unsigned n = 0;
    for (const struct sch_inst *i = ctx->insts; i; i = i->next)
        if (i->for_pool && i->state == SCH_INST_STARTING)
            n++;
    return n;
}

static void refill_one(struct sch_ctx *ctx, size_t idx);

static void on_trim(struct redisReply *reply, const char *err, void *data)
{
    struct pool_op *op = data;
    struct sch_ctx *ctx = op->ctx;
    free(op);
    if (err || !reply || reply->type != REDIS_REPLY_STRING || ctx->stopping)
        return;
    struct sch_inst *inst = sch_inst_find(ctx, reply->str);
    if (inst && inst->state == SCH_INST_WARM)
        sch_inst_destroy(inst, "pool above max");
    else
        cm_log_warn("pool", "popped an unknown or busy instance inst=%s", reply->str);
}

static void on_llen(struct redisReply *reply, const char *err, void *data)
{
    struct pool_op *op = data;
    struct sch_ctx *ctx = op->ctx;
    size_t idx = op->idx;
    struct sch_pool *p = &ctx->pools[idx];
    free(op);
    p->inflight = 0;
    if (ctx->stopping)
        return;
    if (err || !reply || reply->type != REDIS_REPLY_INTEGER) {
        cm_log_warn("pool", "LLEN failed template=%s err=\"%s\"", p->tpl->name,
                    err ? err : "unexpected reply");
        return;
    }
    p->warm = (uint64_t)reply->integer;
    uint64_t starting = sch_pool_starting(ctx, p->tpl);
    uint64_t have = p->warm + starting;
    const struct cm_template *t = p->tpl;
    if (have < t->pool_min) {
        uint64_t need = t->pool_min - have;
        /* Bounded, so that a start storm (a new host, many pools) cannot take so much CPU
         * that no instance gets ready within its ready_timeout: all would be killed and
         * started again, forever. The rest follows as starts finish (on_pushed, heartbeat). */
        unsigned busy = pool_starts(ctx);
        uint64_t budget = busy < ctx->sc->pool_max_starting ? ctx->sc->pool_max_starting - busy : 0;
        if (need > budget) {
            cm_log_debug("pool", "starts held back template=%s missing=%llu starting=%u", t->name,
                         (unsigned long long)need, busy);
            need = budget;
        }
        for (uint64_t i = 0; i < need; i++) {
            char err_msg[256];
            if (ctx->n_live >= ctx->sc->capacity) {
                cm_log_debug("pool", "at capacity template=%s missing=%llu", t->name,
                             (unsigned long long)(need - i));
                break;
            }
            if (!sch_inst_start(ctx, t, 1, NULL, err_msg, sizeof(err_msg))) {
                cm_log_error("pool", "cannot start a warm instance template=%s err=\"%s\"", t->name,
                             err_msg);
                break;
            }
        }
    } else if (have > t->pool_max && p->warm > 0) {
        uint64_t excess = have - t->pool_max;
        if (excess > p->warm)
            excess = p->warm;
        char key[256];
        for (uint64_t i = 0; i < excess; i++) {
            struct pool_op *top = malloc(sizeof(*top));
            if (!top)
                break;
            *top = (struct pool_op){ctx, idx};
            const char *rpop[] = {
                "RPOP", sch_key(ctx, key, sizeof(key), "pool:%s:%s", ctx->sc->host_id, t->name)};
            if (sch_redis(ctx, on_trim, top, 2, rpop) < 0) {
                free(top);
                break;
            }
        }
    }
    if (p->again) {
        p->again = 0;
        refill_one(ctx, idx);
    }
}

static void refill_one(struct sch_ctx *ctx, size_t idx)
{
    struct sch_pool *p = &ctx->pools[idx];
    if (p->inflight) {
        p->again = 1;
        return;
    }
    struct pool_op *op = malloc(sizeof(*op));
    if (!op)
        return;
    *op = (struct pool_op){ctx, idx};
    char key[256];
    const char *llen[] = {
        "LLEN", sch_key(ctx, key, sizeof(key), "pool:%s:%s", ctx->sc->host_id, p->tpl->name)};
    if (sch_redis(ctx, on_llen, op, 2, llen) < 0) {
        free(op);
        return;
    }
    p->inflight = 1;
}

void sch_pool_refill(struct sch_ctx *ctx, const struct cm_template *tpl)
{
    if (!ctx->recovered || ctx->stopping || ctx->draining || !sch_redis_connected(ctx))
        return;
    for (size_t i = 0; i < ctx->cfg->n_templates; i++)
        if ((!tpl || ctx->pools[i].tpl == tpl) && sch_template_started_here(ctx->pools[i].tpl))
            refill_one(ctx, i);
}
