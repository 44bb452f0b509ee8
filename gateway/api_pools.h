/* GET /v1/pools of the control API: the live scheduler hosts (heartbeat age, free, capacity,
 * driver) and the warm pool length of every configured template on each, read from Redis with
 * one pipelined batch. Admin loop only. */
#ifndef GW_API_POOLS_H
#define GW_API_POOLS_H

#include <stdint.h>

struct cm_httpd_req;
struct cm_redis;
struct gw_config;

/* Answers <req> exactly once, now or from a Redis callback: 200 with
 *   {"hosts":[{"id","alive","heartbeat_ms","heartbeat_age_ms","driver","free","capacity",
 *              "pools":{"<template>":n}}],
 *    "templates":{"<template>":{"warm":n (on live hosts),"pool_min","pool_max"}}}
 * listing at most <max_hosts> hosts, or 503 store_unavailable. Borrows <redis> and <gc> until
 * then; cm_redis_destroy() completes a pending answer. Hosts' API addresses are not shown. */
void gw_api_pools(struct cm_redis *redis, const struct gw_config *gc, uint32_t max_hosts,
                  struct cm_httpd_req *req);

#endif
