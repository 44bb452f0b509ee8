/* GET /v1/usage (issue 17): the caller's tenant's metered usage (api_usage.c says what it
 * answers; common/store.h, USAGE, how it is recorded; gateway/usage.h and scheduler/usage.h
 * who counts what). */
#ifndef GW_API_USAGE_H
#define GW_API_USAGE_H

struct cm_httpd_req;
struct cm_redis;
struct cm_tenant;
struct event_base;
struct gw_config;

void gw_api_usage(struct event_base *base, struct cm_redis *redis, const struct gw_config *gc,
                  struct cm_httpd_req *req, const struct cm_tenant *t);

#endif
