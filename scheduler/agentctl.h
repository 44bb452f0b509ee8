/* Asynchronous client for berth-agent's control socket (scheduler/agent/proto.h): connect to a
 * unix socket, send one command line, read one reply line, with a deadline. Runs on the
 * scheduler's libevent loop. */
#ifndef SCH_AGENTCTL_H
#define SCH_AGENTCTL_H

#include "common/time.h"

struct event_base;
struct sch_agentctl;

/* Called exactly once, never from inside sch_agentctl_request(): <reply> (the line without
 * "\n", borrowed for the call) with <err> 0, or <reply> NULL and <err> a negative errno
 * (-ETIMEDOUT, -ECONNREFUSED, -ENOENT, -EPIPE ...). */
typedef void (*sch_agentctl_cb)(const char *reply, int err, void *data);

/* The requests in flight on one loop. Borrows <base>. NULL on allocation failure. */
struct sch_agentctl *sch_agentctl_create(struct event_base *base);
/* Fails every request still in flight with -ECANCELED (their callbacks run now), then frees.
 * Takes NULL. */
void sch_agentctl_destroy(struct sch_agentctl *ac);

/* Sends <line> (without "\n") to the agent listening on unix socket <path>. Returns 0 (the
 * callback will run) or -ENOMEM (it will not). */
int sch_agentctl_request(struct sch_agentctl *ac, const char *path, const char *line,
                         cm_usec_t timeout, sch_agentctl_cb cb, void *data);

#endif
