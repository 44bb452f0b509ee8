/* Where an exchange's session lives: claims (a bind, a lookup, an alias) and the
 * background revalidation of stale cache entries, which outlives the connection. */
#include "gateway/conn_int.h"

#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/redis.h"
#include "gateway/activity.h"
#include "gateway/cache.h"
#include "gateway/claim.h"
#include "gateway/conn.h"
#include "gateway/metrics.h"
#include "gateway/upstream.h"
#include "gateway/worker.h"

struct gw_refresh {
    struct gw_refresh *next, *prev; /* worker's list: freed at shutdown if still pending */
    struct gw_worker *w;
    struct cm_hash key;
};

static void refresh_free(struct gw_refresh *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        r->w->refreshes = r->next;
    if (r->next)
        r->next->prev = r->prev;
    free(r);
}

void gw_binding_refreshes_free(struct gw_worker *w)
{
    while (w->refreshes)
        refresh_free(w->refreshes);
}

static void on_refreshed(const struct gw_binding *b, int err, void *data)
{
    struct gw_refresh *r = data;
    struct gw_worker *w = r->w;
    struct gw_cache_entry *e = gw_cache_get(w->cache, r->key);
    if (e) {
        e->refreshing = 0;
        if (err < 0)
            gw_cache_put(w->cache, b, gw_cache_expiry(w->gc->cache_ttl, b->hash, cm_now_mono()));
        else if (err != GW_ERR_STORE_UNAVAILABLE)
            gw_cache_drop(w->cache, r->key); /* gone or lost: the next request asks again */
    }
    refresh_free(r);
}

/* What a claim for c's session asks the claimer, in <mode>. */
static struct gw_claim_req claim_req(const struct gw_conn *c, enum gw_claim_mode mode)
{
    return (struct gw_claim_req){
        .tenant = c->route->tenant,
        .source = gw_conn_key_source(c->kind),
        .key = c->key,
        .key_len = c->key_len,
        .tpl = c->route->tpl,
        .mode = mode,
    };
}

/* Checks a stale binding with Redis in the background (lookup only: never binds). */
void gw_binding_refresh(struct gw_conn *c, struct gw_cache_entry *e)
{
    struct gw_refresh *r = calloc(1, sizeof(*r));
    if (!r)
        return;
    r->w = c->w;
    r->key = c->hash;
    r->next = c->w->refreshes;
    if (r->next)
        r->next->prev = r;
    c->w->refreshes = r;
    struct gw_claim_req req =
        claim_req(c, c->kind == KEY_SID ? GW_CLAIM_MODE_LOOKUP : GW_CLAIM_MODE_ALIAS);
    if (!gw_claim_start(c->w->claimer, &req, on_refreshed, r)) {
        refresh_free(r);
        return;
    }
    e->refreshing = 1;
    GW_METRIC_INC(&c->w->metrics, revalidations[GW_REVAL_LOOKUP]);
}

static void on_claimed(const struct gw_binding *b, int err, void *data)
{
    struct gw_conn *c = data;
    struct gw_worker *w = c->w;
    c->claim = NULL;
    gw_stream_read_enable(&c->cs);
    if (err == GW_ERR_STORE_UNAVAILABLE) {
        struct gw_cache_entry *stale = gw_cache_get(w->cache, c->hash);
        if (stale) { /* the store timed out: a binding we knew is better than a 503 */
            memcpy(c->instance, stale->instance, sizeof(c->instance));
            memcpy(c->addr, stale->addr, sizeof(c->addr));
            c->session = stale->session;
            c->session_hex[0] = '\0';
            c->from_cache = 1;
            gw_up_forward(c, NULL);
            return;
        }
    }
    if (err >= 0) {
        if (err != GW_ERR_STORE_UNAVAILABLE)
            GW_XLOG(debug, c, "claim failed session=%s err=%s", gw_conn_hash_hex(c),
                    gw_err_info((enum gw_err)err)->code);
        if (err == GW_ERR_NOT_FOUND || (err == GW_ERR_INSTANCE_LOST && c->kind != KEY_SID))
            err = GW_ERR_SESSION_NOT_FOUND; /* MCP: tells the client to initialize again */
        gw_conn_send_error(c, (enum gw_err)err, 0);
        return;
    }
    c->session = b->session;
    memcpy(c->session_hex, b->session_hex, sizeof(c->session_hex));
    cm_usec_t now = cm_now_mono();
    struct gw_cache_entry *e =
        gw_cache_put(w->cache, b, gw_cache_expiry(w->gc->cache_ttl, b->hash, now));
    /* The claim script recorded the activity. The next touch is due within activity_flush,
     * spread by the session's (random) hash: sessions started together, as a batch of agents
     * or a benchmark's warm-up, must not all come due in the same instant. */
    if (e)
        e->last_flush = now - (cm_usec_t)(b->session.lo % (w->gc->activity_flush / 2 + 1));
    memcpy(c->instance, b->instance, sizeof(c->instance));
    memcpy(c->addr, b->addr, sizeof(c->addr));
    c->unproven = c->keyless_new && b->how != GW_CLAIM_BOUND;
    if (b->how != GW_CLAIM_BOUND)
        GW_XLOG(debug, c, "session bound session=%s instance=%s how=%s", gw_conn_hash_hex(c),
                b->instance, b->how == GW_CLAIM_NEW ? "pool" : "started");
    gw_up_forward(c, NULL);
}

void gw_binding_claim(struct gw_conn *c)
{
    struct gw_worker *w = c->w;
    /* a preview link only reaches a session that exists: it never creates one */
    struct gw_claim_req req = claim_req(c, c->kind != KEY_SID ? GW_CLAIM_MODE_ALIAS
                                           : c->preview_port  ? GW_CLAIM_MODE_LOOKUP
                                                              : GW_CLAIM_MODE_CLAIM);
    c->state = CS_ROUTING;
    gw_stream_read_disable(&c->cs);
    c->claim = gw_claim_start(w->claimer, &req, on_claimed, c);
    if (!c->claim)
        gw_conn_send_error(c, GW_ERR_INTERNAL, 1);
}

void gw_binding_unreachable(struct gw_conn *c)
{
    struct gw_worker *w = c->w;
    if (c->up) {
        gw_upconn_release(c->up, 0);
        c->up = NULL;
    }
    gw_cache_drop(w->cache, c->hash);
    if (c->from_cache && !c->reclaimed && c->head_pending) {
        /* The cached binding may be stale (inval lost): ask Redis once more. */
        c->reclaimed = 1;
        c->from_cache = 0;
        gw_binding_claim(c);
        return;
    }
    GW_XLOG(warn, c, "instance unreachable session=%s instance=%s addr=%s", gw_conn_hash_hex(c),
            c->instance, c->addr);
    /* An MCP client learns from 404 that its session ended and initializes again. */
    gw_conn_send_error(c, c->kind == KEY_SID ? GW_ERR_INSTANCE_LOST : GW_ERR_SESSION_NOT_FOUND, 0);
}
