#include "scheduler/usage.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/log.h"
#include "common/redis.h"
#include "common/time.h"
#include "common/usagetab.h"
#include "scheduler/cgroup.h"
#include "scheduler/driver.h"
#include "scheduler/instance.h"
#include "scheduler/sched.h"

#define METRICS 7 /* wall_ms paused_ms cpu_ms mem_peak mem_kib_ms egress_out egress_in */
/* Sessions per script call: as many as fit one call's ARGV (3 + 12 each). */
#define BATCH ((CM_REDIS_MAX_ARGS - 3) / (2 + 2 * METRICS))
_Static_assert(3 + BATCH * (2 + 2 * METRICS) <= CM_REDIS_MAX_ARGS, "one USAGE call's ARGV");
#define VAL_LEN 24
/* The counters by tenant and template (common/usagetab.h): wall_ms paused_ms cpu_ms
 * mem_kib_ms (mem_peak is no counter). */
#define LABELED CM_USAGETAB_METRICS

struct batch {
    int argc;
    const char *argv[3 + BATCH * (2 + 2 * METRICS)];
    char vals[BATCH][1 + METRICS][VAL_LEN];
    uint64_t d[BATCH][LABELED]; /* for the reply */
    int n;
};

/* One USAGE call's deltas, for the counters by tenant and template its reply names. */
struct call {
    struct sch_ctx *ctx;
    size_t n;
    uint64_t d[]; /* n x LABELED */
};

static void on_usage(struct redisReply *r, const char *err, void *data)
{
    struct call *c = data;
    if (err)
        cm_log_warn("usage", "usage not recorded err=\"%s\"", err);
    else if (c && cm_usagetab_add_reply(c->ctx->usage_labels, r, c->n,
                                        (const uint64_t(*)[LABELED])c->d) < 0)
        cm_log_warn("usage", "usage script answered an unexpected reply: not counted in /metrics");
    free(c);
}

static void send_batch(struct sch_ctx *ctx, struct batch *b)
{
    if (!b->n)
        return;
    /* One allocation per call of up to BATCH sessions, once a heartbeat. Without it Redis
     * still records the usage; only /metrics misses it. */
    size_t dsize = (size_t)b->n * sizeof(b->d[0]);
    struct call *c = malloc(sizeof(*c) + dsize);
    if (c) {
        c->ctx = ctx;
        c->n = (size_t)b->n;
        memcpy(c->d, b->d, dsize);
    } else {
        cm_log_warn("usage", "out of memory: %d sessions' usage not counted in /metrics", b->n);
    }
    int rc = sch_script(ctx, CM_SCRIPT_USAGE, on_usage, c, b->argc, b->argv);
    if (rc < 0) {
        cm_log_warn("usage", "%d sessions' usage not recorded err=\"%s\"", b->n, strerror(-rc));
        free(c);
    }
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
        uint64_t *d = b.d[b.n];
        d[0] = dt;
        d[1] = i->pause == SCH_PAUSE_PAUSED ? dt : 0;
        d[2] = cpu;
        d[3] = (st.mem >> 10) * dt;
        /* The egress counts only when there were some: two fields less per session-hour. */
        int nm = i->egress_out || i->egress_in ? METRICS : METRICS - 2;
        snprintf(v[0], VAL_LEN, "%d", nm);
        snprintf(v[1], VAL_LEN, "%" PRIu64, d[0]);
        snprintf(v[2], VAL_LEN, "%" PRIu64, d[1]);
        snprintf(v[3], VAL_LEN, "%" PRIu64, d[2]);
        snprintf(v[4], VAL_LEN, "%" PRIu64, st.mem_peak);
        snprintf(v[5], VAL_LEN, "%" PRIu64, d[3]);
        snprintf(v[6], VAL_LEN, "%" PRIu64, i->egress_out);
        snprintf(v[7], VAL_LEN, "%" PRIu64, i->egress_in);
        i->egress_out = i->egress_in = 0;
        static const char *const names[METRICS] = {"wall_ms",    "paused_ms",  "cpu_ms",
                                                   "mem_peak",   "mem_kib_ms", "egress_out",
                                                   "egress_in"};
        b.argv[b.argc++] = i->session;
        b.argv[b.argc++] = v[0];
        for (int k = 0; k < nm; k++) {
            b.argv[b.argc++] = names[k];
            b.argv[b.argc++] = v[1 + k];
        }
        if (++b.n == BATCH)
            send_batch(ctx, &b);
    }
    send_batch(ctx, &b);
}

static const struct cm_usagetab_metric prom_metrics[LABELED] = {
    {"berth_usage_wall_seconds_total",
     "Time sessions were bound to a sandbox of this host, by the session's tenant and template "
     "(as in GET /v1/usage).",
     1000},
    {"berth_usage_paused_seconds_total",
     "Of the wall time, the time sessions' sandboxes were frozen, by tenant and template.", 1000},
    {"berth_usage_cpu_seconds_total",
     "CPU time of every process of sessions' sandboxes, by the session's tenant and template.",
     1000},
    {"berth_usage_memory_kib_seconds_total",
     "Sandbox memory in KiB times seconds, by the session's tenant and template: divided by the "
     "wall seconds, the average memory in KiB.",
     1000},
};

void sch_usage_prom(struct sch_ctx *ctx, struct cm_jbuf *b)
{
    cm_usagetab_write(b, &ctx->usage_labels, 1, prom_metrics);
}
