/* Usage metering on the gateway's side (issue 17): per session, the data-plane requests, the
 * body bytes in and out, and the time a request or stream of it was in flight (active_ms: the
 * union of its exchanges' times on this loop), counted in a fixed table per loop (no
 * allocation, no Redis on the request path) and written every gateway.activity_flush with
 * the USAGE script (common/store.h). Bounded: a table of GW_USAGE_SLOTS sessions per loop;
 * what does not fit is counted in berth_gateway_usage_dropped_total. What a gateway crash
 * loses is one flush interval. With several loops, exchanges of one session on two loops at
 * once count their overlap twice. One loop's.
 * The same deltas, once the USAGE script has answered which tenant and template each session
 * belongs to, go to the loop's counters by tenant and template (common/usagetab.h: bounded,
 * what does not fit is the (other) series), which the admin's /metrics sums over the loops as
 * berth_usage_{requests,bytes_in,bytes_out,active_seconds}_total{tenant,template}: work done
 * in the flush's reply, none on the request path. A call that failed (Redis not connected,
 * a script error) is in neither; one whose reply did not come in time (the Redis client's
 * command timeout, a connection lost after sending) may be in Redis and not in the
 * counters. */
#ifndef GW_USAGE_H
#define GW_USAGE_H

#include <stddef.h>
#include <stdint.h>

#include "common/key.h"
#include "common/time.h"

#define GW_USAGE_SLOTS 4096

struct gw_worker;
struct cm_jbuf;
struct cm_usagetab;

struct gw_usage_slot {
    struct cm_hash h;
    uint32_t inflight, requests;
    uint64_t bytes_in, bytes_out, active_us;
    cm_usec_t since; /* while inflight: when the active time counted so far ends */
    uint8_t used;
};

struct gw_usage {
    struct gw_usage_slot slots[GW_USAGE_SLOTS];
    struct cm_usagetab *labels; /* by tenant and template; owned; the admin thread reads it */
    uint32_t n_used;
    uint64_t dropped;
};

/* An exchange of session <h> went to its instance at <now>. Returns 1 when it is counted
 * (then call gw_usage_end() for it), 0 when the table is full. */
int gw_usage_begin(struct gw_usage *u, struct cm_hash h, cm_usec_t now);
/* ...and ended at <now>, with these body bytes. */
void gw_usage_end(struct gw_usage *u, struct cm_hash h, cm_usec_t now, uint64_t in, uint64_t out);
/* Writes what was counted since the last flush (USAGE script calls) and forgets the sessions
 * with nothing in flight. */
void gw_usage_flush(struct gw_worker *w);
/* Appends the berth_usage_* counter families, summed over the loops' tables <tabs> (<n> of
 * them), to <b>. Any thread (the admin's). */
void gw_usage_prom(struct cm_jbuf *b, struct cm_usagetab *const *tabs, size_t n);

#endif
