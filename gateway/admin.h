/* The admin listener: the control API (/v1/sessions...), /healthz, /readyz and /metrics. It runs
 * on its own thread with its own event loop and Redis client, so that nothing it does can stall
 * a data-plane loop. The health listener (gateway.health_listen, optional) serves /healthz and
 * /readyz alone on the same loop, with connections of its own: for probes, which then answer
 * whatever the admin listener's clients do with its connections. */
#ifndef GW_ADMIN_H
#define GW_ADMIN_H

#include <stddef.h>
#include <stdint.h>

#include "common/time.h"
#include "gateway/api_json.h"

struct cm_config;
struct gw_config;
struct gw_metrics;
struct cm_usagetab;
struct gw_admin;

/* The admin listener's limits: the optional "gateway.admin" mapping of the config. Its HTTP is
 * common/httpd.c: a request over a limit, unparsable or too slow gets a JSON error with a
 * stable code (413 body_too_large, 431 headers_too_large, 400 bad_request, 408
 * request_timeout, 429 too_many_connections, 503 overloaded) and the connection closes.
 *   max_body          request body (size), 1KiB..64MiB, default 1MiB
 *   max_header_bytes  request line + headers (size), 1KiB..1MiB, default 16KiB
 *   timeout           per connection: keep-alive idleness of a tenant's connection, reading one
 *                     request (from its first byte) and writing an answer, 1s..1h, default 60s.
 *                     A request being handled is not bound by it: a create waits at most
 *                     gateway.limits.start_timeout for an on-demand start
 *   header_timeout    a request head, from its first byte; also the wait for the first byte of
 *                     a new connection's request, and of the next one on a connection no tenant
 *                     holds (no request with an API key yet): 100ms..timeout, default 5s
 *   max_connections   admin connections open at once, 1..100000, default 256; more are
 *                     answered 503 overloaded and closed
 *   max_connections_per_tenant  connections one tenant holds (from its first request with its
 *                     API key until they close), 1..100000, default 64; a request that would
 *                     make one more is answered 429 too_many_connections and its connection
 *                     closes
 *   max_connections_per_address  connections from one client address (IPv6: one /64) that no
 *                     tenant holds yet, 1..100000, default 32; more are answered 429
 *                     too_many_connections at accept and closed
 *   health_max_connections  connections of the health listener, 1..10000, default 16
 *   scrape_timeout    Redis reads made by one /metrics scrape, 10ms..10s, default 250ms
 *   max_hosts         hosts listed by GET /v1/pools, 1..100000, default 1000
 *   max_metadata      a session's metadata as stored (size), 0..1MiB, default 16KiB
 *   list_default      sessions per page of GET /v1/sessions, 1..list_max, default 100
 *   list_max          largest ?limit accepted, 1..10000, default 1000 */
struct gw_admin_limits {
    uint64_t max_body;
    uint64_t max_header_bytes;
    cm_usec_t timeout;
    cm_usec_t header_timeout;
    cm_usec_t scrape_timeout;
    uint32_t max_hosts;
    uint32_t max_connections;
    uint32_t max_per_tenant;
    uint32_t max_per_address;
    uint32_t health_max_connections;
    cm_usec_t events_poll;    /* GET /v1/events?follow=1: how often a follower reads */
    cm_usec_t events_max_age; /* P events:{tenant} and P events keep this long... */
    uint64_t events_max_len;  /* ...and at most this many entries */
    uint32_t events_page_max; /* largest ?limit of GET /v1/events */
    uint64_t max_upload;      /* a file PUT to a sandbox (streamed: not admin.max_body) */
    struct gw_api_limits api;
};

/* Reads gateway.admin from <cfg> into <ret> (defaults for missing keys). Returns 0, or -EINVAL
 * with "file:line:col: gateway.admin.key: message" in <err>. */
int gw_admin_limits_load(const struct cm_config *cfg, struct gw_admin_limits *ret, char *err,
                         size_t errlen);

/* Reads gateway.admin, binds gc->admin_listen (and gc->health_listen unless empty) and starts
 * the admin thread. Borrows <gc>, the <n_shards> metric shards and as many usage tables by
 * tenant and template <usage> (one of each per worker) until gw_admin_stop(); the pointer
 * arrays themselves are copied. Returns a new admin or NULL with a message in <err>. */
struct gw_admin *gw_admin_start(const struct gw_config *gc, struct gw_metrics *const *shards,
                                struct cm_usagetab *const *usage, int n_shards, char *err,
                                size_t errlen);
/* Tells the workers' readiness to /readyz (1 once every data listener is up). Any thread. */
void gw_admin_set_ready(struct gw_admin *a, int ready);
/* Stops the thread and frees; requests still waiting are answered 503 first. Takes NULL. Call
 * from the thread that called gw_admin_start(). */
void gw_admin_stop(struct gw_admin *a);

#endif
