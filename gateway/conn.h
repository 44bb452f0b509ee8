/* A client connection speaking HTTP/1.1: reads request heads, finds the session's instance,
 * relays the request and the response both ways as bytes arrive (bounded by the high/low
 * watermarks), keeps connections alive, answers bad input with JSON errors. */
#ifndef GW_CONN_H
#define GW_CONN_H

#include <sys/socket.h>

struct gw_worker;
struct gw_conn;

/* Takes ownership of <fd> (also on failure: it is closed). <sa> is the peer address; <tls>:
 * it came to the TLS listener (the handshake is bounded by header_timeout). */
void gw_conn_accept(struct gw_worker *w, int fd, const struct sockaddr *sa, socklen_t salen,
                    int tls);
/* Closes idle connections now and the others once their exchange ends (shutdown). */
void gw_conn_drain_all(struct gw_worker *w);
/* Closes every connection at once. */
void gw_conn_close_all(struct gw_worker *w);
/* Queues activity of the sessions whose streams are open (called every activity_flush). */
void gw_conn_touch_streams(struct gw_worker *w);

/* Frees the bookkeeping of background binding checks still pending (after the claimer is
 * destroyed, which cancels their callbacks). In binding.c. */
void gw_binding_refreshes_free(struct gw_worker *w);

/* The worker's parser settings (body callbacks need the connection). */
void gw_conn_settings_init(struct gw_worker *w);

#endif
