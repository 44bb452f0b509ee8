#include "scheduler/usage.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/log.h"
#include "common/time.h"
#include "scheduler/cgroup.h"
#include "scheduler/driver.h"
#include "scheduler/instance.h"
#include "scheduler/sched.h"

#define BATCH 64  /* sessions per script call */
#define METRICS 5 /* wall_ms paused_ms cpu_ms mem_peak mem_kib_ms */
#define VAL_LEN 24

struct batch {
    int argc;
    const char *argv[3 + BATCH * (2 + 2 * METRICS)];
    char vals[BATCH][1 + METRICS][VAL_LEN];
    int n;
};

static void on_usage(struct redisReply *r, const char *err, void *data)
{
    (void)r, (void)data;
    if (err)
        cm_log_warn("usage", "usage not recorded err=\"%s\"", err);
}

static void send_batch(struct sch_ctx *ctx, struct batch *b)
{
    if (b->n && sch_script(ctx, CM_SCRIPT_USAGE, on_usage, NULL, b->argc, b->argv) < 0)
        cm_log_warn("usage", "redis not connected: %d sessions' usage not recorded", b->n);
    b->argc = 3;
    b->n = 0;
}

void sch_usage_sample(struct sch_ctx *ctx)
{
    static struct batch b; /* one loop: reused, not reentered */
    char now_s[24], ret_s[24];
    uint64_t now_ms = cm_now_mono() / CM_USEC_PER_MSEC;
    snprintf(now_s, sizeof(now_s), "%" PRIu64, cm_now_wall_ms());
    snprintf(ret_s, sizeof(ret_s), "%" PRIu64, ctx->cfg->redis.usage_retention / CM_USEC_PER_MSEC);
    b.argv[0] = ctx->cfg->redis.prefix;
    b.argv[1] = now_s;
    b.argv[2] = ret_s;
    b.argc = 3;
    b.n = 0;
    int connected = sch_redis_connected(ctx);
    for (struct sch_inst *i = ctx->insts; i; i = i->next) {
        if (i->state != SCH_INST_BOUND || !i->agent_bound || !i->di || !i->session[0]) {
            i->usage_at = 0;
            continue;
        }
        struct sch_cg_stats st = {0};
        int have = i->drv->ops->stats && i->drv->ops->stats(i->drv, i->di, &st) == 0;
        if (!i->usage_at) { /* the first sample only sets the marks */
            i->usage_at = now_ms;
            i->usage_cpu_ms = st.cpu_ms;
            continue;
        }
        uint64_t dt = now_ms - i->usage_at;
        uint64_t cpu = have && st.cpu_ms > i->usage_cpu_ms ? st.cpu_ms - i->usage_cpu_ms : 0;
        i->usage_at = now_ms;
        if (have)
            i->usage_cpu_ms = st.cpu_ms;
        if (!connected || dt == 0)
            continue;
        char(*v)[VAL_LEN] = b.vals[b.n];
        snprintf(v[0], VAL_LEN, "%d", METRICS);
        snprintf(v[1], VAL_LEN, "%" PRIu64, dt);
        snprintf(v[2], VAL_LEN, "%" PRIu64, i->pause == SCH_PAUSE_PAUSED ? dt : 0);
        snprintf(v[3], VAL_LEN, "%" PRIu64, cpu);
        snprintf(v[4], VAL_LEN, "%" PRIu64, st.mem_peak);
        snprintf(v[5], VAL_LEN, "%" PRIu64, (st.mem >> 10) * dt);
        static const char *const names[METRICS] = {"wall_ms", "paused_ms", "cpu_ms", "mem_peak",
                                                   "mem_kib_ms"};
        b.argv[b.argc++] = i->session;
        b.argv[b.argc++] = v[0];
        for (int k = 0; k < METRICS; k++) {
            b.argv[b.argc++] = names[k];
            b.argv[b.argc++] = v[1 + k];
        }
        if (++b.n == BATCH)
            send_batch(ctx, &b);
    }
    send_batch(ctx, &b);
}
