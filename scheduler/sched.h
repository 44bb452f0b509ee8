/* The scheduler's context: one libevent loop, one struct sch_ctx reached by every callback.
 * This header is internal to scheduler/: instance.c, pool.c, recover.c and api.c share the
 * layout; everything else talks to the scheduler through Redis or its HTTP API.
 *
 * Lifecycle: sch_ctx_create() connects to Redis (a command client and a subscriber on
 * `P cmd:<host>`), binds the API and starts the timers. Nothing starts or adopts instances until
 * the first Redis connection has run recovery (recover.c). SIGTERM/SIGINT end the loop; the
 * instances keep running and the next scheduler adopts them. */
#ifndef SCH_SCHED_H
#define SCH_SCHED_H

#include <stdint.h>

#include "common/config.h"
#include "common/key.h"
#include "common/store.h"
#include "scheduler/config.h"

struct event;
struct event_base;
struct cm_redis;
struct cm_usagetab;
struct redisReply;
struct sch_agentctl;
struct sch_api;
struct sch_driver;
struct sch_drivers;
struct sch_inst;
struct sch_recovery;

/* Per template pool bookkeeping (pool.c). */
struct sch_pool {
    const struct cm_template *tpl;
    uint64_t warm; /* LLEN of P pool:<host>:<tpl> at the last check */
    int inflight;  /* an LLEN is on its way */
    int again;     /* a refill was asked for while one was in flight */
};

struct sch_ctx {
    struct event_base *base;
    const struct cm_config *cfg;
    const struct sch_config *sc;
    struct sch_drivers *drivers; /* the registry; a template's driver: its `driver:` name */
    struct cm_redis *redis; /* commands and scripts */
    struct cm_redis *sub;   /* the P cmd:<host> subscription */
    struct sch_api *api;
    struct sch_relay *relay; /* relay.h: NULL unless scheduler.instance_relay.listen is set */
    struct event *relay_ev;  /* the relay process's end */
    struct sch_egress *egress; /* egress.h: NULL when scheduler.egress.enabled is false */
    struct event *egress_ev;   /* the egress proxy process's end */
    struct sch_agentctl *agentctl; /* requests to the agents' control sockets */
    struct cm_usagetab *usage_labels; /* usage.c: by tenant and template, for GET /metrics */
    char api_addr[80];             /* "host:port" as registered (real port when 0 was configured) */
    int draining; /* sch_drain(): no new instances; kept in <run_dir>/draining across restarts */

    struct sch_inst *insts; /* every instance this scheduler knows, any state */
    uint32_t n_live;        /* instances counted against capacity */
    struct sch_pool *pools; /* cfg->n_templates entries */

    struct event *heartbeat_ev, *reap_ev, *sigterm_ev, *sigint_ev;
    int reap_inflight;
    int hostdown_inflight; /* the sweep of hosts whose heartbeat stopped: replies awaited */
    struct sch_recovery *recovery; /* recover.c, while recovering */
    int recovering, recovered;
    /* reconcile.c: the token in P host:<host>:mark ("" while Redis may lack our records) */
    char mark[CM_HASH_HEX_LEN + 1];
    int mark_inflight;            /* a GET of the marker is on its way */
    int reconciling, reconcile_again;
    int stopping;
};

/* Creates the context on <base>. Borrows <cfg>, <sc> and <base>. Returns NULL with a message
 * in <err>. */
struct sch_ctx *sch_ctx_create(struct event_base *base, const struct cm_config *cfg,
                               const struct sch_config *sc, char *err, size_t errlen);
/* Releases every instance without touching it, closes Redis and the API. Takes NULL. */
void sch_ctx_destroy(struct sch_ctx *ctx);

/* Redis helpers: argv given as NUL-terminated strings. Return 0 or a negative errno (then the
 * callback does not run). The key arguments are built by the caller with sch_key(). */
int sch_redis(struct sch_ctx *ctx, void (*cb)(struct redisReply *, const char *, void *),
              void *data, int argc, const char **argv);
int sch_script(struct sch_ctx *ctx, enum cm_script s,
               void (*cb)(struct redisReply *, const char *, void *), void *data, int argc,
               const char **argv);
/* Writes "<prefix><fmt...>" into <buf>; returns <buf>. */
const char *sch_key(const struct sch_ctx *ctx, char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* XADD P events MAXLEN ~ 100000 * type <type> ts <now> <kv pairs...> (NULL-terminated). */
void sch_event(struct sch_ctx *ctx, const char *type, ...);
int sch_redis_connected(const struct sch_ctx *ctx);
/* Does this scheduler start instances of <tpl>? (Every driver but "static", whose instances
 * are existing upstreams the gateway registers itself.) */
int sch_template_started_here(const struct cm_template *tpl);
/* The driver of <tpl> (created at start-up for every template started here), or NULL. */
struct sch_driver *sch_template_driver(const struct sch_ctx *ctx, const struct cm_template *tpl);
/* Sends the heartbeat now (also refreshes `free` after capacity changes). */
void sch_heartbeat(struct sch_ctx *ctx);
/* Drain (<on> 1): no new instances here: warm ones are ended, the pools not refilled, starts
 * refused (503 no_capacity), the host advertised with no room (`draining` in its record, which
 * the claim script skips); bound sessions go on until they end. <on> 0 undoes it. Kept in
 * <run_dir>/draining, so a restarted scheduler still drains. Returns 0 or -errno (the file). */
int sch_drain(struct sch_ctx *ctx, int on);

#endif
