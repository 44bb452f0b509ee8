/* Session activity, written to Redis so the scheduler's reaper sees sessions in use: at most
 * once per gateway.activity_flush per session, queued and sent in small script calls, one at
 * a time per worker. Redis often shares a core with the gateway: one large script (every
 * session of a burst at once) would stall the requests queued behind it, so the queue drains
 * in calls of at most GW_ACTIVITY_PER_CALL sessions: a full one as soon as the last call is
 * answered, a partial one every 20 ms. One worker's loop only. */
#ifndef GW_ACTIVITY_H
#define GW_ACTIVITY_H

#include "common/key.h"
#include "common/time.h"

struct gw_worker;

#define GW_ACTIVITY_PER_CALL 32
/* Sessions waiting at most; beyond, a touch waits for that session's next request. */
#define GW_ACTIVITY_QUEUE_MAX 65536

struct gw_cache_entry;

/* Queues activity for the session bound under cache key <h> if it is due and the worker still
 * has its binding cached. */
void gw_activity_touch(struct gw_worker *w, struct cm_hash h);
/* The same for a cache entry the caller holds (saves the lookup). */
void gw_activity_touch_entry(struct gw_worker *w, struct gw_cache_entry *e);
/* With several loops (w->touchtab set): whether another loop's touch had Redis confirm <e>'s
 * binding (its session and gen) at most <within> before <now>, recently enough that <e> is
 * fresh at <now> when counted from that reply. If so, <e> is made fresh as this loop's own
 * touch would have (counted as a revalidation by "loop") and 1 is returned; else 0, <e>
 * unchanged. */
int gw_activity_confirmed_elsewhere(struct gw_worker *w, struct gw_cache_entry *e, cm_usec_t now,
                                    cm_usec_t within);
/* Sends the next call's worth of queued activity unless one is under way. */
void gw_activity_flush(struct gw_worker *w);
/* Frees the queue (at worker destruction, after its Redis client). */
void gw_activity_free(struct gw_worker *w);

#endif
