#include "gateway/usage.h"

#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/log.h"
#include "common/redis.h"
#include "common/store.h"
#include "common/usagetab.h"
#include "gateway/config.h"
#include "gateway/worker.h"

#define METRICS CM_USAGETAB_METRICS /* requests bytes_in bytes_out active_ms */
/* Sessions per script call: as many as fit one call's ARGV (3 + 10 each). */
#define BATCH ((CM_REDIS_MAX_ARGS - 3) / (2 + 2 * METRICS))
_Static_assert(3 + BATCH * (2 + 2 * METRICS) <= CM_REDIS_MAX_ARGS, "one USAGE call's ARGV");
#define VAL_LEN 24

static struct gw_usage_slot *find(struct gw_usage *u, struct cm_hash h, int add)
{
    size_t i = (size_t)(h.lo % GW_USAGE_SLOTS);
    for (size_t n = 0; n < GW_USAGE_SLOTS; n++, i = (i + 1) % GW_USAGE_SLOTS) {
        struct gw_usage_slot *s = &u->slots[i];
        if (!s->used) {
            if (!add || u->n_used >= GW_USAGE_SLOTS * 3 / 4) /* keep probes short */
                return NULL;
            memset(s, 0, sizeof(*s));
            s->used = 1;
            s->h = h;
            u->n_used++;
            return s;
        }
        if (s->h.hi == h.hi && s->h.lo == h.lo)
            return s;
    }
    return NULL;
}

int gw_usage_begin(struct gw_usage *u, struct cm_hash h, cm_usec_t now)
{
    struct gw_usage_slot *s = find(u, h, 1);
    if (!s) {
        u->dropped++;
        return 0;
    }
    if (s->inflight++ == 0)
        s->since = now;
    s->requests++;
    return 1;
}

void gw_usage_end(struct gw_usage *u, struct cm_hash h, cm_usec_t now, uint64_t in, uint64_t out)
{
    struct gw_usage_slot *s = find(u, h, 0);
    if (!s || !s->inflight)
        return;
    s->bytes_in += in;
    s->bytes_out += out;
    if (--s->inflight == 0 && now > s->since)
        s->active_us += now - s->since;
}

/* One USAGE call's deltas, for the counters by tenant and template its reply names. */
struct call {
    struct cm_usagetab *labels;
    size_t n;
    uint64_t d[]; /* n x METRICS */
};

static void on_usage(struct redisReply *r, const char *err, void *data)
{
    struct call *c = data;
    if (err)
        cm_log_warn("usage", "usage not recorded err=\"%s\"", err);
    else if (c && cm_usagetab_add_reply(c->labels, r, c->n, (const uint64_t(*)[METRICS])c->d) < 0)
        cm_log_warn("usage", "usage script answered an unexpected reply: not counted in /metrics");
    free(c);
}

struct batch {
    int argc, n;
    const char *argv[3 + BATCH * (2 + 2 * METRICS)];
    size_t lens[3 + BATCH * (2 + 2 * METRICS)];
    char hex[BATCH][CM_HASH_HEX_LEN + 1];
    char vals[BATCH][1 + METRICS][VAL_LEN];
    uint64_t d[BATCH][METRICS]; /* the same values, for the reply */
};

static void send_batch(struct gw_worker *w, struct batch *b)
{
    if (!b->n)
        return;
    for (int i = 0; i < b->argc; i++)
        b->lens[i] = strlen(b->argv[i]);
    /* One allocation per call of up to BATCH sessions (per flush, never per request). Without
     * it Redis still records the usage; only /metrics misses it. */
    size_t dsize = (size_t)b->n * sizeof(b->d[0]);
    struct call *c = malloc(sizeof(*c) + dsize);
    if (c) {
        c->labels = w->usage->labels;
        c->n = (size_t)b->n;
        memcpy(c->d, b->d, dsize);
    } else {
        cm_log_warn("usage", "out of memory: %d sessions' usage not counted in /metrics", b->n);
    }
    int rc = cm_redis_script(w->redis, CM_SCRIPT_USAGE, on_usage, c, b->argc, b->argv, b->lens);
    if (rc < 0) {
        cm_log_warn("usage", "%d sessions' usage not recorded err=\"%s\"", b->n, strerror(-rc));
        free(c);
    }
    b->argc = 3;
    b->n = 0;
}

void gw_usage_flush(struct gw_worker *w)
{
    static __thread struct batch b; /* per loop thread; never reentered */
    struct gw_usage *u = w->usage;
    if (!u || !u->n_used)
        return;
    char now_s[24], ret_s[24];
    cm_usec_t now = cm_now_mono();
    snprintf(now_s, sizeof(now_s), "%" PRIu64, cm_now_wall_ms());
    snprintf(ret_s, sizeof(ret_s), "%" PRIu64,
             w->gc->common->redis.usage_retention / CM_USEC_PER_MSEC);
    b.argv[0] = w->gc->common->redis.prefix;
    b.argv[1] = now_s;
    b.argv[2] = ret_s;
    b.argc = 3;
    b.n = 0;
    /* The table is rebuilt: sessions with nothing in flight and nothing to write go. */
    static __thread struct gw_usage_slot keep[GW_USAGE_SLOTS];
    uint32_t n_keep = 0;
    for (size_t i = 0; i < GW_USAGE_SLOTS; i++) {
        struct gw_usage_slot *s = &u->slots[i];
        if (!s->used)
            continue;
        if (s->inflight && now > s->since) { /* a long stream counts as it goes */
            s->active_us += now - s->since;
            s->since = now;
        }
        if (s->requests || s->bytes_in || s->bytes_out || s->active_us >= 1000) {
            char(*v)[VAL_LEN] = b.vals[b.n];
            uint64_t *d = b.d[b.n];
            cm_hash_hex(s->h, b.hex[b.n]);
            d[0] = s->requests;
            d[1] = s->bytes_in;
            d[2] = s->bytes_out;
            d[3] = s->active_us / 1000;
            snprintf(v[0], VAL_LEN, "%d", METRICS);
            for (int k = 0; k < METRICS; k++)
                snprintf(v[1 + k], VAL_LEN, "%" PRIu64, d[k]);
            static const char *const names[METRICS] = {"requests", "bytes_in", "bytes_out",
                                                       "active_ms"};
            b.argv[b.argc++] = b.hex[b.n];
            b.argv[b.argc++] = v[0];
            for (int k = 0; k < METRICS; k++) {
                b.argv[b.argc++] = names[k];
                b.argv[b.argc++] = v[1 + k];
            }
            s->requests = 0;
            s->bytes_in = s->bytes_out = 0;
            s->active_us %= 1000;
            if (++b.n == BATCH)
                send_batch(w, &b);
        }
        if (s->inflight)
            keep[n_keep++] = *s;
    }
    send_batch(w, &b);
    memset(u->slots, 0, sizeof(u->slots));
    u->n_used = 0;
    for (uint32_t i = 0; i < n_keep; i++) {
        struct gw_usage_slot *s = find(u, keep[i].h, 1);
        if (s)
            *s = keep[i];
    }
}

static const struct cm_usagetab_metric prom_metrics[METRICS] = {
    {"berth_usage_requests_total",
     "Data-plane requests of sessions, by the session's tenant and template (as in GET "
     "/v1/usage).",
     1},
    {"berth_usage_bytes_in_total",
     "Body bytes from clients to sessions, by the session's tenant and template.", 1},
    {"berth_usage_bytes_out_total",
     "Body bytes from sessions to clients, by the session's tenant and template.", 1},
    {"berth_usage_active_seconds_total",
     "Time at least one data-plane exchange of a session was in flight, by the session's "
     "tenant and template.",
     1000},
};

void gw_usage_prom(struct cm_jbuf *b, struct cm_usagetab *const *tabs, size_t n)
{
    cm_usagetab_write(b, tabs, n, prom_metrics);
}
