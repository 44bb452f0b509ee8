/* The control API's calls to a session's scheduler (pause, resume): one POST to its API
 * ("host:port" from P host:{host} api) with "Authorization: Bearer <scheduler.api_secret>",
 * bounded by a timeout. On the admin loop. */
#ifndef GW_API_SCHED_H
#define GW_API_SCHED_H

#include <stddef.h>

#include "common/time.h"

struct event_base;
struct gw_config;
struct gw_sched_call;

/* The answer: the scheduler's <status> and body (borrowed for the call), or status 0 when
 * none came in time (connect failed, timeout, a bad address). Runs once, never inside
 * gw_sched_post(), unless the call is cancelled first. */
typedef void (*gw_sched_cb)(int status, const char *body, size_t len, void *arg);

/* POSTs an empty body to <path> on <api>. Returns the call, or NULL (nothing will run). */
struct gw_sched_call *gw_sched_post(struct event_base *base, const struct gw_config *gc,
                                    const char *api, const char *path, cm_usec_t timeout,
                                    gw_sched_cb cb, void *arg);
/* Drops the call: its callback will not run. */
void gw_sched_cancel(struct gw_sched_call *call);

#endif
