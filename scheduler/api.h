/* The scheduler's HTTP API (common/httpd.c, JSON in and out, on scheduler.api_listen):
 *   POST /v1/start  start an instance of a template for a session, wait until it is ready
 *                   (bounded by the template's ready_timeout), bind it with the bind script;
 *                   200 {"status":"new"|"bound","instance","addr","gen"}
 *   GET /v1/status  host, driver (incl. cgroup controllers in use), capacity, instances, pools
 *   GET /metrics    Prometheus text: capacity, instances by state, Redis up, and the usage
 *                   counters by tenant and template (scheduler/usage.h); with the secret only
 *   GET /healthz
 * Errors are {"error":{"code","message"}}: 400 bad_request, 404 unknown_template|not_found,
 * 405 method_not_allowed, 409 session_conflict, 413 body_too_large, 502 start_failed,
 * 503 no_capacity|store_unavailable|shutting_down, 504 start_timeout; from the HTTP layer
 * itself (then the connection closes) 400 bad_request, 408 request_timeout (a head not
 * complete within api_header_timeout, a request within api_timeout), 413 body_too_large (over
 * api_max_body), 431 headers_too_large (over api_max_header_bytes), 503 overloaded (over
 * api_max_connections).
 * With scheduler.health_listen set, a second listener on the same loop serves GET /healthz
 * alone, on connections of its own (health_max_connections): for probes. */
#ifndef SCH_API_H
#define SCH_API_H

#include <stddef.h>

struct sch_ctx;
struct sch_api;

/* Binds ctx->sc->api_host:api_port (and health_host:health_port when set) and writes the bound
 * API "host:port" into ctx->api_addr.
 * Returns NULL with a message in <err>. */
struct sch_api *sch_api_create(struct sch_ctx *ctx, char *err, size_t errlen);
/* Answers pending starts with 503 shutting_down and frees. Takes NULL. */
void sch_api_destroy(struct sch_api *api);

#endif
