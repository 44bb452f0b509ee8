/* The admin listener: the control API (/v1/sessions...), /healthz, /readyz and /metrics. It runs
 * on its own thread with its own event loop and Redis client, so that nothing it does can stall
 * a data-plane loop. */
#ifndef GW_ADMIN_H
#define GW_ADMIN_H

#include <stddef.h>
#include <stdint.h>

#include "common/time.h"
#include "gateway/api_json.h"

struct cm_config;
struct gw_config;
struct gw_metrics;
struct gw_admin;

/* The admin listener's limits: the optional "gateway.admin" mapping of the config. Its HTTP is
 * common/httpd.c: a request over a limit, unparsable or too slow gets a JSON error with a
 * stable code (413 body_too_large, 431 headers_too_large, 400 bad_request, 408
 * request_timeout, 503 overloaded) and the connection closes.
 *   max_body          request body (size), 1KiB..64MiB, default 1MiB
 *   max_header_bytes  request line + headers (size), 1KiB..1MiB, default 16KiB
 *   timeout           per connection: keep-alive idleness, reading one request (from its first
 *                     byte) and writing an answer, 1s..1h, default 60s. A request being
 *                     handled is not bound by it: a create waits at most
 *                     gateway.limits.start_timeout for an on-demand start
 *   max_connections   admin connections open at once, 1..100000, default 256; more are
 *                     answered 503 overloaded and closed
 *   scrape_timeout    Redis reads made by one /metrics scrape, 10ms..10s, default 250ms
 *   max_hosts         hosts listed by GET /v1/pools, 1..100000, default 1000
 *   max_metadata      a session's metadata as stored (size), 0..1MiB, default 16KiB
 *   list_default      sessions per page of GET /v1/sessions, 1..list_max, default 100
 *   list_max          largest ?limit accepted, 1..10000, default 1000 */
struct gw_admin_limits {
    uint64_t max_body;
    uint64_t max_header_bytes;
    cm_usec_t timeout;
    cm_usec_t scrape_timeout;
    uint32_t max_hosts;
    uint32_t max_connections;
    struct gw_api_limits api;
};

/* Reads gateway.admin from <cfg> into <ret> (defaults for missing keys). Returns 0, or -EINVAL
 * with "file:line:col: gateway.admin.key: message" in <err>. */
int gw_admin_limits_load(const struct cm_config *cfg, struct gw_admin_limits *ret, char *err,
                         size_t errlen);

/* Reads gateway.admin, binds gc->admin_listen and starts the admin thread. Borrows <gc> and the
 * <n_shards> metric shards (one per worker) until gw_admin_stop(); the pointer array itself is
 * copied. Returns a new admin or NULL with a message in <err>. */
struct gw_admin *gw_admin_start(const struct gw_config *gc, struct gw_metrics *const *shards,
                                int n_shards, char *err, size_t errlen);
/* Tells the workers' readiness to /readyz (1 once every data listener is up). Any thread. */
void gw_admin_set_ready(struct gw_admin *a, int ready);
/* Stops the thread and frees; requests still waiting are answered 503 first. Takes NULL. Call
 * from the thread that called gw_admin_start(). */
void gw_admin_stop(struct gw_admin *a);

#endif
