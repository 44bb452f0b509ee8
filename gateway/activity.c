#include "gateway/activity.h"

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/redis.h"
#include "common/store.h"
#include "gateway/cache.h"
#include "gateway/config.h"
#include "gateway/touchtab.h"
#include "gateway/worker.h"

/* The first touch waits this long for others to join its call. */
#define DELAY_USEC 20000

struct call {
    struct gw_worker *w;
    size_t n;
    struct cm_hash keys[GW_ACTIVITY_PER_CALL];
};

static void arm(struct gw_worker *w)
{
    struct timeval tv = {0, DELAY_USEC};
    if (!evtimer_pending(w->touch_ev, NULL))
        evtimer_add(w->touch_ev, &tv);
}

/* <e> was confirmed with Redis (<by>): fresh until <fresh>, unless it already was longer. */
static void extend(struct gw_worker *w, struct gw_cache_entry *e, cm_usec_t fresh, enum gw_reval by)
{
    if (fresh > e->expires)
        e->expires = fresh;
    GW_METRIC_INC(&w->metrics, revalidations[by]);
}

static void on_touched(redisReply *reply, const char *err, void *data)
{
    struct call *t = data;
    struct gw_worker *w = t->w;
    /* Each answer is the binding's gen in Redis, 0 when the session is no longer bound
     * (deleted, expired, lost): forget that binding. The same gen as the cached one confirms
     * it: it stays fresh for another cache_ttl, so a session in use is revalidated by its
     * touches and never needs a lookup of its own. A newer gen: rebound elsewhere (its
     * invalidation missed or still on its way): forget it, the next request asks. An older
     * one: the entry changed after the touch was sent; keep it. */
    if (!err && reply && reply->type == REDIS_REPLY_ARRAY) {
        cm_usec_t now = cm_now_mono();
        for (size_t i = 0; i < reply->elements && i < t->n; i++) {
            const redisReply *r = reply->element[i];
            /* -1: Redis does not know the session yet (it lost its data; the schedulers are
             * writing back what they run): keep the binding, neither drop nor confirm it. */
            if (r->type != REDIS_REPLY_INTEGER || r->integer < 0)
                continue;
            struct gw_cache_entry *e = gw_cache_get(w->cache, t->keys[i]);
            if (!e)
                continue;
            uint64_t gen = r->integer > 0 ? (uint64_t)r->integer : 0;
            /* worth telling the other loops too, unless it is older than this entry */
            if (w->touchtab && (gen == 0 || gen >= e->gen))
                gw_touchtab_confirm(w->touchtab, e->session, gen, now);
            if (gen == 0 || gen > e->gen)
                gw_cache_drop(w->cache, t->keys[i]);
            else if (gen == e->gen)
                extend(w, e, gw_cache_expiry(w->gc->cache_ttl, e->hash, now), GW_REVAL_TOUCH);
        }
    }
    free(t);
    w->touch_inflight = 0;
    /* A full call's worth waiting (a burst): the next call right away. Less: the timer's
     * next round, so that a steady trickle of touches goes out as a few calls a second, not
     * as one small call after every reply (each script call costs Redis ~50 us before its
     * first session). Redis trouble: the timer too, no tight loop of failing calls. */
    size_t waiting = w->n_touch - w->touch_head;
    if (!err && waiting >= GW_ACTIVITY_PER_CALL)
        gw_activity_flush(w);
    else if (waiting)
        arm(w);
}

void gw_activity_flush(struct gw_worker *w)
{
    size_t avail = w->n_touch - w->touch_head;
    if (avail == 0 || w->touch_inflight)
        return;
    size_t n = avail < GW_ACTIVITY_PER_CALL ? avail : GW_ACTIVITY_PER_CALL;
    struct call *t = malloc(sizeof(*t));
    if (!t)
        return;
    t->w = w;
    t->n = n;
    char ms[24];
    snprintf(ms, sizeof(ms), "%" PRIu64, cm_now_wall_ms());
    const char *argv[2 + GW_ACTIVITY_PER_CALL];
    size_t lens[2 + GW_ACTIVITY_PER_CALL];
    argv[0] = w->gc->common->redis.prefix;
    lens[0] = strlen(argv[0]);
    argv[1] = ms;
    lens[1] = strlen(ms);
    for (size_t i = 0; i < n; i++) {
        argv[2 + i] = w->touch_hex[w->touch_head + i];
        lens[2 + i] = CM_HASH_HEX_LEN;
        t->keys[i] = w->touch_key[w->touch_head + i];
    }
    w->touch_head += n;
    if (w->touch_head == w->n_touch)
        w->touch_head = w->n_touch = 0;
    /* Not sent (Redis away): these touches are lost; the sessions' next requests after
     * activity_flush queue them again. */
    if (cm_redis_script(w->redis, CM_SCRIPT_TOUCH, on_touched, t, (int)(2 + n), argv, lens) < 0)
        free(t);
    else
        w->touch_inflight = 1;
}

static int make_room(struct gw_worker *w)
{
    if (w->n_touch < w->touch_cap)
        return 0;
    if (w->touch_head > 0) { /* slide the queue back to the front */
        size_t live = w->n_touch - w->touch_head;
        memmove(w->touch_hex, w->touch_hex + w->touch_head, live * sizeof(*w->touch_hex));
        memmove(w->touch_key, w->touch_key + w->touch_head, live * sizeof(*w->touch_key));
        w->touch_head = 0;
        w->n_touch = live;
        return 0;
    }
    if (w->touch_cap >= GW_ACTIVITY_QUEUE_MAX)
        return -1;
    size_t cap = w->touch_cap ? w->touch_cap * 2 : 256;
    void *hex = realloc(w->touch_hex, cap * sizeof(*w->touch_hex));
    if (!hex)
        return -1;
    w->touch_hex = hex;
    void *key = realloc(w->touch_key, cap * sizeof(*w->touch_key));
    if (!key)
        return -1;
    w->touch_key = key;
    w->touch_cap = cap;
    return 0;
}

void gw_activity_touch_entry(struct gw_worker *w, struct gw_cache_entry *e)
{
    cm_usec_t now = cm_now_mono();
    if (now - e->last_flush < w->gc->activity_flush)
        return;
    if (make_room(w) < 0)
        return; /* last_flush unchanged: the next request tries again */
    e->last_flush = now;
    /* Another loop queued this session's touch less than activity_flush ago (its connections
     * reach several loops), and the reply to its touch before confirmed the binding this loop
     * has: that touch carries the session's activity, and the confirmation revalidates this
     * loop's entry as its own touch would have (so a missed invalidation is still caught
     * within about a flush here too). This loop asks again a flush from now. Otherwise (a
     * session's first touches, a binding that changed, another session in the slot) it
     * touches too: a touch too many, never one too few. */
    if (w->touchtab && !gw_touchtab_claim(w->touchtab, e->session, now, w->gc->activity_flush) &&
        gw_activity_confirmed_elsewhere(w, e, now, 2 * w->gc->activity_flush))
        return;
    cm_hash_hex(e->session, w->touch_hex[w->n_touch]);
    w->touch_key[w->n_touch] = e->hash;
    w->n_touch++;
    if (w->n_touch - w->touch_head >= GW_ACTIVITY_PER_CALL)
        gw_activity_flush(w);
    else
        arm(w);
}

int gw_activity_confirmed_elsewhere(struct gw_worker *w, struct gw_cache_entry *e, cm_usec_t now,
                                    cm_usec_t within)
{
    cm_usec_t age;
    if (!w->touchtab || !gw_touchtab_confirmed(w->touchtab, e->session, e->gen, now, within, &age))
        return 0;
    cm_usec_t fresh = gw_cache_expiry(w->gc->cache_ttl, e->hash, now - age);
    if (fresh <= now)
        return 0;
    extend(w, e, fresh, GW_REVAL_LOOP);
    return 1;
}

void gw_activity_touch(struct gw_worker *w, struct cm_hash h)
{
    struct gw_cache_entry *e = gw_cache_get(w->cache, h);
    if (e)
        gw_activity_touch_entry(w, e);
}

void gw_activity_free(struct gw_worker *w)
{
    free(w->touch_hex);
    free(w->touch_key);
    w->touch_hex = NULL;
    w->touch_key = NULL;
    w->touch_head = w->n_touch = w->touch_cap = 0;
}
