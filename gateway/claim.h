/* Finding a session's instance: the claim script (one Redis round trip: existing binding, or a
 * warm instance bound now), then, if every pool is empty, an on-demand start on the scheduler the
 * script named (bounded by limits.start_timeout). One claimer per event loop; used by the data
 * plane on a cache miss and by the control API to create sessions. */
#ifndef GW_CLAIM_H
#define GW_CLAIM_H

#include <stddef.h>
#include <stdint.h>

#include "common/key.h"
#include "gateway/errors.h"
#include "gateway/metrics.h"

struct event_base;
struct cm_redis;
struct cm_template;
struct gw_config;
struct gw_claimer;
struct gw_claim;

#define GW_INSTANCE_ID_MAX 64
#define GW_ADDR_MAX 192

enum gw_claim_mode {
    GW_CLAIM_MODE_CLAIM,  /* bind an instance if the session has none */
    GW_CLAIM_MODE_LOOKUP, /* only report an existing binding ("absent" otherwise) */
    GW_CLAIM_MODE_ALIAS,  /* <source>/<key> name an alias (MCP or legacy SSE session id):
                           * follow it to its bound session, never bind (GW_ERR_NOT_FOUND) */
};

struct gw_claim_req {
    const char *tenant;
    const char *source; /* CM_KEY_SRC_* */
    const char *key;
    size_t key_len;
    const struct cm_template *tpl;
    enum gw_claim_mode mode;
    uint64_t ttl_ms, idle_ms; /* 0: the template's defaults */
    const char *meta;         /* JSON text stored with a new session, or NULL */
    const char *key_id;       /* a control API call's API key id (12 hex digits), for the
                               * created and bound events; NULL for the data plane */
    const struct cm_api_key *api_key; /* its key's own limits (NULL: the tenant's) */
};

struct gw_binding {
    struct cm_hash hash; /* what was looked up: the session hash, or the alias hash */
    char hash_hex[CM_HASH_HEX_LEN + 1];
    struct cm_hash session; /* the session's hash (equal to hash unless an alias) */
    char session_hex[CM_HASH_HEX_LEN + 1];
    char instance[GW_INSTANCE_ID_MAX];
    char addr[GW_ADDR_MAX];
    uint64_t gen;
    enum gw_claim_result how; /* BOUND, NEW or STARTED */
};

/* Result: <b> (borrowed for the call) when <err> is -1; else <b> is NULL and <err> is one of
 * GW_ERR_STORE_UNAVAILABLE, GW_ERR_NO_CAPACITY, GW_ERR_INSTANCE_LOST, GW_ERR_TENANT_MAX_SESSIONS
 * (a new session over the tenant's limits.max_sessions), GW_ERR_NOT_FOUND (lookup
 * of an absent session), GW_ERR_INTERNAL. Runs on the claimer's loop, never inside
 * gw_claim_start(). */
typedef void (*gw_claim_cb)(const struct gw_binding *b, int err, void *data);

/* Returns a new claimer; free with gw_claimer_destroy(). Borrows every argument for its life.
 * <m> receives claim counts. */
struct gw_claimer *gw_claimer_create(struct event_base *base, struct cm_redis *redis,
                                     const struct gw_config *gc, struct gw_metrics *m);
/* Cancels (without callbacks) every claim still running, then frees. Takes NULL. */
void gw_claimer_destroy(struct gw_claimer *c);

/* Starts a claim. Copies what it needs from <req>. Returns a handle valid until <cb> runs or
 * gw_claim_cancel() is called, or NULL when it could not start (out of memory: no callback). */
struct gw_claim *gw_claim_start(struct gw_claimer *c, const struct gw_claim_req *req,
                                gw_claim_cb cb, void *data);
/* The caller no longer wants the answer (client went away): <cb> will not run. */
void gw_claim_cancel(struct gw_claim *claim);

#endif
