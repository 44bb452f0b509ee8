/* One load-generating event loop: its share of the connections and sessions, the HTTP/1.1
 * client state machine (llhttp parses responses), request scheduling (closed loop, open loop at a
 * fixed rate, or held SSE streams), the stickiness check and the statistics.
 *
 * A thread runs in stages driven by main.c, each one event_base loop on the calling thread:
 *   lg_client_prepare()  connect, then one unmeasured request per session ("prime") in request
 *                        modes; open every stream in SSE mode (returns when all are open or
 *                        failed);
 *   lg_client_run()      the run: warmup then the measured window (request modes), or the hold
 *                        time (SSE); returns when the window is over and nothing is in flight;
 *   lg_client_destroy()  closes everything.
 * A struct lg_client is used by one thread at a time. */
#ifndef LG_CLIENT_H
#define LG_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "bench/loadgen/hist.h"
#include "bench/loadgen/opts.h"

enum lg_err {
    LG_ERR_CONNECT,     /* connect() failed or was refused */
    LG_ERR_READ,        /* read error (reset) */
    LG_ERR_WRITE,       /* write error */
    LG_ERR_TIMEOUT,     /* no complete response (or no stream open) within --timeout */
    LG_ERR_EOF,         /* the peer closed before the response was complete */
    LG_ERR_PARSE,       /* malformed or unsolicited response bytes */
    LG_ERR_NO_INSTANCE, /* a 2xx response without the instance header(s) */
    LG_ERR_STATUS,      /* a non-2xx response (see status counts) */
    LG_ERR_STICKY,      /* a response from another instance than the session's first one */
    LG_ERR_STREAM_CLOSED, /* SSE: an open stream ended during the hold */
    LG_ERR_COUNT
};
extern const char *const lg_err_names[LG_ERR_COUNT];

#define LG_MAX_INSTANCES 64

struct lg_instance_count {
    char name[96];
    uint64_t responses;
};

struct lg_stats {
    struct lg_hist lat;       /* ns: scheduled (rate) or actual (max) send to last response byte */
    struct lg_hist sse_open;  /* ns: connect start to the stream's "open" event */
    struct lg_hist sse_cross; /* ns: upstream wrote a tick event to the client read it */
    uint64_t requests;        /* responses completed for requests of the measured window */
    uint64_t responses_all;   /* every response completed, priming and warmup included */
    uint64_t ok;              /* ...of which 2xx */
    uint64_t status[600];     /* measured responses by status code */
    uint64_t errors[LG_ERR_COUNT]; /* measured window, and every stickiness / stream error */
    uint64_t errors_unmeasured;    /* other errors during priming and warmup */
    uint64_t body_in, body_out;    /* body bytes of measured requests (response, request) */
    uint64_t unsent;          /* open loop: scheduled in the window but never sent */
    uint64_t sent;            /* requests sent in the window */
    uint64_t reconnects;      /* connections re-opened (errors or server-side closes) */
    uint64_t sessions_new;    /* session ids put into use (initial ones and churned ones) */
    uint64_t sessions_checked; /* sessions whose instance was seen at least once */
    uint64_t sessions_violated; /* sessions seen on more than one instance */
    uint64_t responses_checked; /* responses compared against their session's instance */
    uint64_t sse_streams, sse_opened, sse_failed, sse_events;
    struct lg_instance_count inst[LG_MAX_INSTANCES];
    size_t n_inst;
    uint64_t inst_overflow;   /* responses from instances beyond LG_MAX_INSTANCES names */
};

struct lg_client;

/* Returns a new client for thread <index> of o->threads (connections, sessions and streams are
 * split evenly), or NULL on allocation failure. Borrows <o> for its life. */
struct lg_client *lg_client_create(const struct lg_opts *o, uint32_t index);
void lg_client_destroy(struct lg_client *c);
/* Stage 1; returns 0, or -EIO when a connection could not be established within o->timeout
 * (request modes; SSE failures are counted instead). */
int lg_client_prepare(struct lg_client *c);
/* Stage 2 from <t_run> (CLOCK_MONOTONIC ns, the same for every thread). Returns 0. */
int lg_client_run(struct lg_client *c, uint64_t t_run);
const struct lg_stats *lg_client_stats(const struct lg_client *c);
/* Adds <src> into <dst> (histograms merged, counters summed, instance counts joined). */
void lg_stats_merge(struct lg_stats *dst, const struct lg_stats *src);
void lg_stats_init(struct lg_stats *s);
uint64_t lg_now_ns(void);

#endif
