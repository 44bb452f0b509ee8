/* Connections to instances: a keep-alive pool per instance address ("unix:/path",
 * "tcp:host:port", "vm:host:port", a microVM's forward, or "relay:host:port/<kind>/<id>", an
 * instance behind its host's instance relay, see scheduler/relay.h), per loop. "<addr>@<n>" is the
 * agent's ports socket or forward, asked for port <n> inside the sandbox ("BERTH-PORT <n>"
 * first); "vm:...@<n>#<instance>" adds that instance's key to the line (common/secret.h). An
 * idle pooled connection that the instance closes, or that stays idle past
 * limits.upstream_idle_timeout, is dropped. One per loop; not thread-safe. */
#ifndef GW_UPSTREAM_H
#define GW_UPSTREAM_H

#include <stddef.h>

#include "gateway/claim.h"

/* The longest pool address: an instance's, "@65535", "#" and an instance id. */
#define GW_UPOOL_ADDR_MAX (GW_ADDR_MAX + 8 + GW_INSTANCE_ID_MAX)

#include <sys/socket.h>

struct event_base;
struct gw_stream;
struct gw_stream_scratch;
struct gw_config;
struct gw_metrics;
struct gw_upstreams;
struct gw_upconn;

/* An instance relay's address "relay:<host:port>/<kind>/<id>", <kind> proc | vm | tcp. */
struct gw_relay_addr {
    struct sockaddr_storage sa; /* the relay */
    socklen_t salen;
    char id[GW_INSTANCE_ID_MAX]; /* the instance */
    int vm;                      /* its agent wants the instance's key (a VM's) */
    int has_ports;               /* it has the agent's ports socket (not a "tcp" instance) */
};
/* Parses <addr> (NUL-terminated, without "@port"). Returns 0 with <ret> filled, or -EINVAL
 * (not such an address). */
int gw_relay_addr_parse(const char *addr, struct gw_relay_addr *ret);
/* The relay's first line for a new connection to <ra> (<channel> "app" or "ports"), into <out>
 * (CM_RELAY_HELLO_MAX bytes). Returns its length or a negative errno. */
int gw_relay_hello(const char *secret, const struct gw_relay_addr *ra, const char *channel,
                   char *out);

/* Returns a new pool set, or NULL. Borrows its arguments for its life (<scratch>: the loop's
 * read buffer, see gateway/stream.h). */
struct gw_upstreams *gw_upstreams_create(struct event_base *base, const struct gw_config *gc,
                                         struct gw_metrics *m, struct gw_stream_scratch *scratch);
/* Closes every idle connection and frees; connections still in use must have been released
 * first. Takes NULL. */
void gw_upstreams_destroy(struct gw_upstreams *u);

/* A connection to <addr>: a pooled idle one (*ret_reused = 1), or a new one whose connect has
 * started (*ret_reused = 0; completion arrives as GW_STREAM_CONNECTED on the caller's event
 * callback). Returns NULL with *ret_err = -EINVAL (bad address), -ENOMEM, or the connect
 * errno. The caller sets its own callbacks, timeouts and watermarks on gw_upconn_stream()
 * (reading starts enabled) and gives the connection back with gw_upconn_release(). */
struct gw_upconn *gw_upstream_get(struct gw_upstreams *u, const char *addr, int *ret_reused,
                                  int *ret_err);
struct gw_stream *gw_upconn_stream(struct gw_upconn *uc);
/* Gives <uc> back: into its pool if <reusable> (the last exchange completed cleanly and its
 * input is empty) and the pool has room, else closes it. Takes NULL. */
void gw_upconn_release(struct gw_upconn *uc, int reusable);
/* Number of idle pooled connections (for tests and metrics). */
size_t gw_upstreams_idle(const struct gw_upstreams *u);

#endif
