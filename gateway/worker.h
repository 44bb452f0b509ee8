/* A data-plane worker: one thread, one event loop, its own listener (SO_REUSEPORT), Redis
 * clients, claimer, binding cache, upstream pools and metric shard. Nothing on the per-request
 * path is shared between workers except the read-only config; the activity table
 * (touchtab.h) is read once per activity_flush and cache_ttl of a session. */
#ifndef GW_WORKER_H
#define GW_WORKER_H

#include <llhttp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/key.h"
#include "common/time.h"
#include "gateway/metrics.h"
#include "gateway/stream.h"

struct event_base;
struct event;
struct evconnlistener;
struct cm_redis;
struct gw_config;
struct gw_claimer;
struct gw_cache;
struct gw_upstreams;
struct gw_conn;
struct gw_h1_header;
struct gw_refresh;
struct gw_touchtab;

/* Reads per call: large bodies move in large pieces; the buffer is the loop's, not a
 * connection's, so idle connections do not hold it. */
#define GW_SCRATCH_SIZE (128 * 1024)
/* A request head that arrives whole in one read (the common case) waits out its exchange (it
 * is kept for a transparent retry until the response head is sent) in one of the loop's head
 * slots, not in the connection's input buffer, whose chain libevent would allocate and free
 * for every request. Free slots are kept on a list (up to GW_HEAD_SLOTS_KEPT), so after the
 * first requests the hot path allocates nothing; a slot is held only while an exchange waits
 * for its response head, never by an idle connection or a stream. Longer heads use the input
 * buffer as before. */
#define GW_HEAD_SLOT 4096
#define GW_HEAD_SLOTS_KEPT 256
/* HTTP/2 streams' exchanges kept for reuse per loop (their structs and stream buffers). None
 * under AddressSanitizer: a stale pointer to a freed exchange must stay a reported
 * use-after-free, not a write into the next stream's. */
static inline size_t gw_vconn_spare_max(void)
{
#if defined(__SANITIZE_ADDRESS__)
    return 0;
#else
    return 1024;
#endif
}
/* How long a closing connection keeps reading (and discarding) so the client sees our error
 * response instead of a reset. */
#define GW_LINGER_USEC (2 * CM_USEC_PER_SEC)

struct gw_worker {
    int index;
    const struct gw_config *gc;
    struct event_base *base;
    struct evconnlistener *listener;
    struct evconnlistener *tls_listener; /* gateway.tls_listen, or NULL */
    struct cm_redis *redis; /* commands */
    struct cm_redis *sub;   /* `inval` subscription */
    struct gw_claimer *claimer;
    struct gw_cache *cache;
    struct gw_usage *usage; /* usage.h: per-session counters until the next flush */
    struct gw_upstreams *ups;
    struct gw_metrics metrics;
    struct gw_stream_scratch scratch; /* every read of this loop lands here first */
    void *free_slots;        /* head slots for reuse: a list linked through their first bytes */
    size_t n_free_slots;
    /* the limits as libevent common timeouts (O(1) to arm and re-arm, unlike the heap) */
    /* to_response: the first wait for a response head, min(response_timeout, resume_timeout);
     * to_response_rest: what is left of response_timeout once the instance has taken the
     * request (NULL when resume_timeout >= response_timeout). */
    const struct timeval *to_keepalive, *to_header, *to_linger, *to_connect, *to_response,
        *to_response_rest, *to_stream_idle, *to_h2_send;
    /* scratch for parsing one head at a time (the loop is single-threaded) */
    struct gw_h1_header *headers;
    llhttp_settings_t req_head_settings, req_body_settings;
    llhttp_settings_t resp_head_settings, resp_body_settings;
    struct gw_conn *conns;   /* every open client connection */
    struct gw_conn *vconn_spare; /* HTTP/2 streams' ended exchanges, kept for reuse */
    size_t n_vconn_spare;
    uint64_t n_conns;
    int accepting;           /* listener enabled (off at max_connections) */
    struct event *tick_ev;   /* activity flush of long streams */
    struct event *stop_ev;   /* re-check timer while draining */
    struct event *wake_ev;   /* read end of wake_pipe: gw_worker_stop() from another thread */
    int wake_pipe[2];
    /* activity waiting for the next flush: session hashes (hex) and their cache keys */
    char (*touch_hex)[33];       /* queue: [touch_head, n_touch) of touch_cap */
    struct cm_hash *touch_key;
    size_t touch_head, n_touch, touch_cap;
    int touch_inflight;          /* a touch script call is under way */
    struct event *touch_ev;      /* one-shot: sends queued activity a moment after the first */
    /* the loops' shared note of touches and confirmed gens (NULL with one loop); borrowed:
     * whoever set it frees it after gw_worker_destroy() of every loop */
    struct gw_touchtab *touchtab;
    struct gw_refresh *refreshes; /* background checks of stale bindings under way */
    char reqid_prefix[9];
    uint64_t reqid_seq;
    uint64_t access_seq;     /* exchanges seen, for gateway.access_log.sample */
    int redis_up_before;     /* for wholesale cache flush after a reconnect */
    int sub_up_before;       /* the same for the `inval` subscription's connection */
    pthread_t thread;
    int stopping;
    cm_usec_t stop_deadline; /* monotonic: open exchanges are cut after this */
};

/* Turns accepting on or off on every listener of <w> (w->accepting follows). */
void gw_worker_accepting(struct gw_worker *w, int on);

/* Creates worker <index>: its loop, listener socket (bound now, so errors show at start-up) and
 * clients. Returns NULL with a message in <err>. */
struct gw_worker *gw_worker_create(int index, const struct gw_config *gc, char *err,
                                   size_t errlen);
/* Runs the loop on a new thread. Returns 0 or a negative errno. */
int gw_worker_start(struct gw_worker *w);
/* Asks the loop to stop (any thread, through a pipe: the loops run without libevent's locks):
 * stop accepting, close idle connections, finish within gateway.shutdown_grace. */
void gw_worker_stop(struct gw_worker *w);
/* Joins the thread and frees everything. Takes NULL. */
void gw_worker_destroy(struct gw_worker *w);

/* A head slot of GW_HEAD_SLOT bytes (from the list, else malloc), or NULL. Loop thread only. */
static inline char *gw_worker_slot_get(struct gw_worker *w)
{
    void *s = w->free_slots;
    if (!s)
        return malloc(GW_HEAD_SLOT);
    memcpy(&w->free_slots, s, sizeof(void *));
    w->n_free_slots--;
    return s;
}
/* Gives a slot back: kept for reuse, or freed beyond GW_HEAD_SLOTS_KEPT. */
static inline void gw_worker_slot_put(struct gw_worker *w, char *s)
{
    if (w->n_free_slots >= GW_HEAD_SLOTS_KEPT) {
        free(s);
        return;
    }
    memcpy(s, &w->free_slots, sizeof(void *));
    w->free_slots = s;
    w->n_free_slots++;
}

/* Next request id (16 hex digits) into <out>. Loop thread only. */
void gw_worker_request_id(struct gw_worker *w, char out[17]);

#endif
