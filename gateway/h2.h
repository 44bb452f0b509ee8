/* HTTP/2 on the client side (nghttp2, server): h2 by ALPN on the TLS listener and h2c with
 * prior knowledge on the cleartext one. The connection (a gw_conn in CS_H2) carries the
 * frames; each stream is one exchange, run by a gw_conn of its own over a virtual stream
 * (stream.h): the stream's request is given to it as an HTTP/1.1 message and its answer is
 * read back into HEADERS, DATA and trailers. See gateway/README.md, "HTTP/2". */
#ifndef GW_H2_H
#define GW_H2_H

#include <stddef.h>

struct gw_conn;
struct gw_h2;

/* The first bytes of a connection (<len> of them): 1 when they are HTTP/2's connection
 * preface, 0 when they cannot be, -1 while too few came to say. */
int gw_h2_preface(const char *data, size_t len);
/* Makes <c> an HTTP/2 connection: its stream's callbacks become the codec's, and what its
 * input holds plus <data> (<len> bytes just read, or NULL) is the first of the frames. <c> may
 * be gone after it. */
void gw_h2_start(struct gw_conn *c, const char *data, size_t len);
/* Frees the codec of <c> (c->h2) and every stream's exchange (from gw_conn_free()). */
void gw_h2_free(struct gw_h2 *h2);
/* The connection's timer ran out (CS_H2): closes it when it has been idle for the
 * keep-alive timeout. <c> may be gone after it. */
void gw_h2_timer(struct gw_conn *c);
/* Graceful stop: GOAWAY, and the connection closes when its streams are done. */
void gw_h2_drain(struct gw_h2 *h2);
/* Calls <fn> with each stream's exchange (gw_conn_touch_streams()). */
void gw_h2_foreach(struct gw_h2 *h2, void (*fn)(struct gw_conn *vc, void *arg), void *arg);

#endif
