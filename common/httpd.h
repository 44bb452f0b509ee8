/* A small HTTP/1.1 server for Berth's control planes: the gateway's admin listener and the
 * scheduler's API. Not for the data path (gateway/conn.c is that).
 *
 * Why our own and not libevent's evhttp: evhttp (2.1) answers every request it cannot parse,
 * every oversize head or body and every timeout with its own HTML page, and has no hook to
 * change that; our rule is that bad input gets a JSON error with a stable code. Here every
 * error the server itself gives is
 *     {"error":{"code":"<code>","message":"<text>"}}
 * with the codes both daemons already use for the same cases:
 *     400 bad_request        malformed request line, header, chunk or target; not HTTP/1.x
 *     408 request_timeout    a request begun and not complete within the timeout
 *     413 body_too_large     a body over max_body (refused at its Content-Length when known)
 *     431 headers_too_large  a head over max_header_bytes
 *     429 too_many_connections  a connection over max_per_address (sent, then closed)
 *     503 overloaded         a connection over max_connections (sent, then closed)
 * Each is followed by closing the connection (the rest of the stream cannot be trusted).
 *
 * One request per connection at a time: after a request is complete the handler runs and
 * the connection reads no further request until cm_httpd_reply() (pipelined bytes wait).
 * The handler answers every request exactly once, at once or later (after Redis answers). If
 * the client goes away first, that answer is dropped and only frees the request; a handler
 * that waits long can set a close callback to learn of it at once (the request is then gone
 * and must not be answered). A client that shuts down its sending side while its request is
 * being handled counts as gone (as nginx takes it: a half-close cannot be told from a close
 * until we write); one that does so after its answer was queued still gets it.
 * Keep-alive per RFC 9112 (HTTP/1.1 unless "Connection: close", HTTP/1.0 only with
 * "Connection: keep-alive"); "Expect: 100-continue" gets its interim answer when the body is
 * within the limit. Upgrade and CONNECT requests reach the handler like any other and the
 * connection closes after the answer.
 *
 * One timer per connection: a request's head must be complete within <header_timeout> of
 * its first byte, the whole request within <timeout>; a begun request that misses either
 * gets the 408 and the connection closes. A new connection must begin its first request
 * within <header_timeout>, and so must every later one unless an owner holds the connection
 * (cm_httpd_hold()): only held connections idle for up to <timeout> between requests. So a
 * connection nobody has vouched for costs a slot for <header_timeout> at most per request.
 * Writing an answer is bounded by <timeout>. The wait for the handler is not timed here: the
 * handler bounds its own waits.
 *
 * Owners (e.g. a tenant, once its request carried its API key) and client addresses: a
 * connection counts against its client address (max_per_address) until its handler gives it
 * to an owner with cm_httpd_hold(), then against that owner (max_per_owner) until it closes.
 * This lets one client hold at most that many connections, so that it cannot take every
 * connection (max_connections) from the others.
 *
 * Single-threaded: everything runs on the event base given to cm_httpd_create(). common/ does
 * not log: what goes wrong on a connection is answered to its client. */
#ifndef CM_HTTPD_H
#define CM_HTTPD_H

#include <stddef.h>
#include <stdint.h>

#include "time.h"

struct event_base;
struct cm_httpd;
struct cm_httpd_req;

struct cm_httpd_limits {
    size_t max_header_bytes;  /* request line and headers, bytes (>= 256) */
    size_t max_body;          /* request body, bytes */
    cm_usec_t timeout;        /* idle (a held connection), reading a request, writing */
    cm_usec_t header_timeout; /* a request head, from its first byte; the first byte of a new
                               * connection's or an unheld connection's next request
                               * (0 or over timeout: timeout) */
    uint32_t max_connections; /* open at once; more are answered 503 and closed */
    uint32_t max_per_owner;   /* connections one owner may hold (cm_httpd_hold); 0: any */
    uint32_t max_per_address; /* connections no owner holds, per client address (IPv6: per
                               * /64); more are answered 429 at accept and closed; 0: any */
};

enum cm_http_method {
    CM_HTTP_OTHER = 0, /* any other method llhttp knows (CONNECT, TRACE, PROPFIND, ...) */
    CM_HTTP_GET,
    CM_HTTP_HEAD,
    CM_HTTP_POST,
    CM_HTTP_PUT,
    CM_HTTP_DELETE,
    CM_HTTP_PATCH,
    CM_HTTP_OPTIONS,
};

/* A complete request arrived. <req> is valid until answered (or its close callback ran). */
typedef void (*cm_httpd_request_cb)(struct cm_httpd_req *req, void *arg);
/* The client of an unanswered request went away: the request is gone (do not answer it). */
typedef void (*cm_httpd_close_cb)(void *arg);

/* Returns a new server on <base> (free with cm_httpd_destroy()), NULL on allocation failure.
 * <lim> is copied. <cb> runs for each complete request. */
struct cm_httpd *cm_httpd_create(struct event_base *base, const struct cm_httpd_limits *lim,
                                 cm_httpd_request_cb cb, void *arg);
/* Listens on <host> (a name or an IPv4/IPv6 address, no brackets) and <port> (0: any free
 * port). May be called more than once. Returns 0 with *ret_port (may be NULL) set to the
 * bound port, or a negative errno (-EADDRNOTAVAIL when <host> does not resolve). */
int cm_httpd_listen(struct cm_httpd *h, const char *host, uint16_t port, uint16_t *ret_port);
/* Serves the connected socket <fd> as if it had been accepted. Takes ownership of <fd> (also
 * on failure). Returns 0 or a negative errno. (Tests and the fuzz target use this.) */
int cm_httpd_adopt(struct cm_httpd *h, int fd);
/* Open connections (for tests). */
size_t cm_httpd_connections(const struct cm_httpd *h);
/* Closes the listeners and every connection: answers already queued are written as far as
 * each socket takes them at once (no waiting); unanswered requests go as when their client
 * goes away (close callbacks run; requests without one wait for their answer, which frees
 * them). Takes NULL. */
void cm_httpd_destroy(struct cm_httpd *h);

/* --- a request: until it is answered (or its close callback ran) --- */
enum cm_http_method cm_httpd_method(const struct cm_httpd_req *req);
/* The method as the client sent it, e.g. "GET" (for logs). */
const char *cm_httpd_method_name(const struct cm_httpd_req *req);
/* The request target as sent (NUL-terminated; for logs). */
const char *cm_httpd_target(const struct cm_httpd_req *req);
/* The path of the target, not percent-decoded, without the query ("*" for OPTIONS *; the
 * path part of an absolute-form target). Never NULL, never empty. */
const char *cm_httpd_path(const struct cm_httpd_req *req);
/* The query (after '?', without the fragment), or NULL when the target has none. */
const char *cm_httpd_query(const struct cm_httpd_req *req);
/* The first header named <name> (ASCII case-insensitive), its value without surrounding
 * white space, or NULL. */
const char *cm_httpd_header(const struct cm_httpd_req *req, const char *name);
/* The body (complete, de-chunked; NUL-terminated for convenience) and its length. */
const char *cm_httpd_body(const struct cm_httpd_req *req, size_t *ret_len);
/* Gives the connection of <req> to the owner named by the <len> bytes of <owner> (1..255;
 * e.g. a tenant's name) for the rest of its life, counted against max_per_owner and no longer
 * against its client address; it may then idle up to <timeout> between requests. Holding it
 * again for the same owner changes nothing; for another one moves it. Returns 0, -EBUSY when
 * the owner holds max_per_owner connections already (nothing changes, and the answer to
 * <req> will close the connection: answer it 429), -EINVAL (a bad <len>) or -ENOMEM. */
int cm_httpd_hold(struct cm_httpd_req *req, const char *owner, size_t len);
/* Sets or clears (<cb> NULL) what runs if the client goes away before the answer. */
void cm_httpd_set_close_cb(struct cm_httpd_req *req, cm_httpd_close_cb cb, void *arg);

/* Adds a header to the answer. Content-Length and Connection are the server's; Content-Type
 * goes through cm_httpd_reply(). Returns 0, -EINVAL (a name that is no token, a value with a
 * control character) or -ENOMEM. */
int cm_httpd_add_header(struct cm_httpd_req *req, const char *name, const char *value);
/* Answers <req> with <status> (200-599), <content_type> (NULL: none) and <len> bytes of
 * <body> (no body for HEAD, 204 and 304; Content-Length as for GET). <req> is gone after
 * this. If the answer cannot be queued the connection is closed; if the client went away,
 * this only frees <req>. */
void cm_httpd_reply(struct cm_httpd_req *req, int status, const char *content_type,
                    const char *body, size_t len);
/* Answers <req> with the error JSON above: {"error":{"code":<code>,"message":<message>}}
 * (both JSON-escaped here). */
void cm_httpd_reply_error(struct cm_httpd_req *req, int status, const char *code,
                          const char *message);

/* --- a streamed answer (issue 17: exec output, event streams) ---
 * cm_httpd_stream_begin() queues the head (HTTP/1.1: "Transfer-Encoding: chunked"; HTTP/1.0:
 * the body ends with the connection, which then closes); each cm_httpd_stream_write() queues
 * one chunk; cm_httpd_stream_end() the last, and <req> is gone after it. Until then the
 * request's close callback (set it first) says the client went away: <req> is gone then, and
 * must not be used again. The connection's timer bounds only waits for the client to take
 * what is queued (<timeout>); a handler that has nothing to send may take as long as it
 * needs (send something now and then if the client may be behind a proxy with an idle
 * timeout). The client's next pipelined request waits for the end. */
typedef void (*cm_httpd_drain_cb)(void *arg);
/* Returns 0, -EINVAL (a status with no body, or out of range), -EPIPE (answered already, or
 * the client is gone) or -ENOMEM (the connection is closed: the close callback ran). */
int cm_httpd_stream_begin(struct cm_httpd_req *req, int status, const char *content_type);
/* Queues <len> bytes (0: nothing). Returns how many bytes are queued for the client in all
 * (stop producing above a bound of yours and wait for the drain callback), or -EPIPE / -ENOMEM
 * (then end the stream). A HEAD request queues nothing. */
long cm_httpd_stream_write(struct cm_httpd_req *req, const void *data, size_t len);
/* Runs <cb> once, the next time what is queued falls to 16 KiB or below (NULL: none). */
void cm_httpd_stream_on_drain(struct cm_httpd_req *req, cm_httpd_drain_cb cb, void *arg);
void cm_httpd_stream_end(struct cm_httpd_req *req);
/* Closes the connection without ending the answer (no last chunk), so the client sees it cut
 * (a download whose source failed); <req> is gone after this. */
void cm_httpd_stream_abort(struct cm_httpd_req *req);

/* --- a streamed request body (issue 17: file uploads) ---
 * A head callback (set on the server) runs once a request's head is complete; returning 1
 * takes that request's body as a stream: the request callback gets the request at once, its
 * body not read yet, and max_body does not apply (the handler bounds it). In the request
 * callback (synchronously: bytes arriving before are dropped) the handler installs a body
 * callback, which gets the body's bytes as they are read (after de-chunking) and returns 0 for
 * more or 1 to pause reading until cm_httpd_body_resume(); at the end it gets <len> 0 once. The
 * answer to such a request closes the connection; an answer before the body's end leaves the
 * rest unread. A client that sends nothing for <timeout> while the body is being read, or
 * goes away, runs the close callback. */
typedef int (*cm_httpd_head_cb)(struct cm_httpd_req *req, void *arg);
typedef int (*cm_httpd_body_cb)(void *arg, const char *data, size_t len);
void cm_httpd_set_head_cb(struct cm_httpd *h, cm_httpd_head_cb cb);
void cm_httpd_body_stream(struct cm_httpd_req *req, cm_httpd_body_cb cb, void *arg);
void cm_httpd_body_resume(struct cm_httpd_req *req);

/* The reason phrase of <status> ("Unknown" for codes we do not send). */
const char *cm_http_reason(int status);

#endif
