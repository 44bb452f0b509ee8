/* The control API's /v1 handlers on the admin loop: sessions (create, get, update, delete,
 * list) and pools, each an asynchronous exchange with Redis (and the claimer for creation),
 * plus the JSON reply helpers the whole admin listener uses. Every function here runs on the
 * admin loop only. */
#ifndef GW_API_H
#define GW_API_H

#include <stddef.h>

#include "gateway/errors.h"

struct event_base;
struct cm_httpd_req;
struct cm_redis;
struct gw_admin_limits;
struct gw_claimer;
struct gw_config;
struct gw_api;
struct gw_metrics;

/* Returns a new handler set, or NULL when out of memory. Borrows every argument until
 * gw_api_destroy(). */
struct gw_api *gw_api_create(struct event_base *base, struct cm_redis *redis,
                             struct gw_claimer *claimer, const struct gw_config *gc,
                             const struct gw_admin_limits *lim, struct gw_metrics *m);
/* Answers 503 to every request still waiting (on a claim: the claimer must have been
 * destroyed first, so that no claim callback can run later), then frees. Requests waiting on
 * Redis are answered by their reply callbacks, which cm_redis_destroy() runs: destroy the
 * Redis client before this. Takes NULL. */
void gw_api_destroy(struct gw_api *api);

/* Serves <req>, whose raw (not yet percent-decoded) path <path> starts with "/v1". Checks the
 * bearer API key first (401 unauthorized), then routes (404 not_found, 405 with Allow). Every
 * request is answered exactly once, now or from a later callback. */
void gw_api_handle(struct gw_api *api, struct cm_httpd_req *req, const char *path);

/* Sends <len> bytes of <body> with status <status> and content type <ctype> (NULL: JSON). */
void gw_api_reply(struct cm_httpd_req *req, int status, const char *ctype, const char *body,
                  size_t len);
/* Sends {"error":{"code","message"}} with the code's status; <message> NULL: the default.
 * no_capacity carries Retry-After (<retry_after> seconds), unauthorized WWW-Authenticate. */
void gw_api_reply_error(struct cm_httpd_req *req, enum gw_err e, const char *message,
                        unsigned retry_after);
/* 405 method_not_allowed with "Allow: <allow>". */
void gw_api_reply_405(struct cm_httpd_req *req, const char *allow);
/* The admin listener's head callback (common/httpd.h): a file upload (PUT
 * /v1/sessions/{id}/files/...) takes its body as a stream. */
int gw_api_upload_head(struct cm_httpd_req *req, void *arg);

#endif
