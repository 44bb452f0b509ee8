/* The audit trail as an API (issue 17): GET /v1/events reads the caller's tenant's stream
 * P events:{tenant} (common/store.h: every script's event of a session of that tenant goes
 * there too), paged by stream id; with follow=1 it stays open as SSE and sends new events as
 * they come (the stream is polled every gateway.admin.events_poll: no connection of Redis is
 * blocked per follower). The module also trims the streams by age and length
 * (events_max_age, events_max_len) once a minute. On the admin loop.
 *
 *   GET /v1/events?session=<id>&type=<t>[,<t>...]&since=<stream id>&limit=<n>&follow=1
 *
 * Answer: {"events":[{"id","type","ts",<the event's fields>}...],"next_since","more"}; a page
 * is read from at most <limit> entries of the stream, so with a filter it may hold fewer
 * events than that while "more" says there are further entries: go on from "next_since".
 * follow=1: "text/event-stream", each event as "id: <id>", "event: <type>",
 * "data: <the object>"; from <since> (or Last-Event-ID), else from now on; a comment line
 * every 15 s keeps idle connections open. */
#ifndef GW_API_EVENTS_H
#define GW_API_EVENTS_H

struct cm_httpd_req;
struct cm_redis;
struct cm_tenant;
struct event_base;
struct gw_admin_limits;
struct gw_config;
struct gw_events;

struct gw_events *gw_events_create(struct event_base *base, struct cm_redis *redis,
                                   const struct gw_config *gc, const struct gw_admin_limits *lim);
/* Ends every follower's stream. Takes NULL. */
void gw_events_destroy(struct gw_events *ev);
void gw_events_handle(struct gw_events *ev, struct cm_httpd_req *req, const struct cm_tenant *t);

#endif
