/* The HTTP/2 codec's insides, shared by h2.c (the connection, its frames and streams),
 * h2_req.c (the requests given to their exchanges) and h2_resp.c (the codec's answers to
 * them: HEADERS, DATA and trailers). Not an interface for anything else: h2.h is. */
#ifndef GW_H2_INT_H
#define GW_H2_INT_H

#include <event2/event_struct.h>
#include <llhttp.h>
#include <nghttp2/nghttp2.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/time.h"
#include "gateway/errors.h"

struct gw_conn;
struct evbuffer;

/* Interim (1xx) heads an answer may have, and bytes of its trailers: more cuts the stream
 * (a hostile instance must not queue HEADERS frames or trailer bytes without end). */
#define H2_MAX_INTERIM 16

/* One stream: its request as it is collected, its exchange, and its answer as it is framed. */
struct gw_h2s {
    struct gw_h2s *next, *prev;
    struct gw_h2 *h2;
    int32_t id;
    struct gw_conn *vc;     /* the exchange; NULL once it ended */
    struct evbuffer *vin;   /* its input (watched for the window's consumption) */
    struct evbuffer *src;   /* answer bytes the ended exchange left, not framed yet */
    struct evbuffer *data;  /* DATA payload ready to go */
    struct evbuffer *hdr;   /* request: the header lines; answer: its trailers */
    struct evbuffer *extra; /* request: cookie crumbs, then trailers */
    llhttp_t resp;
    struct event stall; /* send_timeout for an answer left by its ended exchange */
    char method[16];
    char *path, *authority;
    size_t hdr_bytes;
    size_t owed;           /* request DATA bytes given to the exchange and not yet consumed */
    cm_usec_t t_begin;     /* when its header block began (coarse clock) */
    uint8_t n_interim;     /* 1xx heads passed on */
    unsigned hdr_done : 1; /* its header block was whole (an exchange or our answer) */
    unsigned has_cl : 1;
    unsigned chunked : 1; /* the request body goes to the exchange chunked */
    unsigned req_end : 1;
    unsigned head_req : 1;
    unsigned ws : 1;        /* extended CONNECT (RFC 8441) for a WebSocket */
    unsigned connect : 1;   /* CONNECT */
    unsigned protocol : 1;  /* :protocol came (and was not websocket, unless ws) */
    unsigned too_big : 1;   /* the header list went over max_header_list */
    unsigned head_sent : 1; /* the final response head was submitted */
    unsigned msg_done : 1;  /* llhttp saw the answer's end */
    unsigned resp_end : 1;  /* every byte of the answer is in data (or was sent) */
    unsigned cut : 1;       /* the answer ended short: RST_STREAM */
    unsigned tunnel : 1;    /* after the instance's 101: bytes both ways */
    unsigned shut : 1;      /* the exchange said it writes no more */
    unsigned ready : 1;     /* the exchange wrote: look at it on the next send */
    unsigned deferred : 1;  /* the data source waits (NGHTTP2_ERR_DEFERRED) */
    unsigned sclosed : 1;   /* nghttp2 closed the stream */
    unsigned we_reset : 1; /* an RST_STREAM of ours (not one nghttp2 sent for the client) */
};

struct gw_h2 {
    struct gw_conn *c;
    nghttp2_session *s;
    struct gw_h2s *streams;
    uint32_t n_streams;
    struct gw_h2s *spare; /* ended streams kept for reuse (at most max_concurrent_streams) */
    uint32_t n_spare;
    struct evbuffer *head; /* a request head being written (empty between) */
    struct event send_ev;
    nghttp2_nv *nv; /* an answer head's fields while it is built (h2_resp.c) */
    size_t nv_cap, nv_n;
    cm_usec_t idle_since;
    unsigned send_queued : 1;
    unsigned calm : 1;   /* the client went over a flood limit: GOAWAY ENHANCE_YOUR_CALM */
    uint32_t rst_tokens; /* RST_STREAMs the client may still send now (reset_burst, refilled
                            at reset_rate a second) */
    cm_usec_t rst_at;    /* when rst_tokens was last refilled; 0: never */
    unsigned final : 1;  /* the last frames (GOAWAY): queued whatever the output holds */
    unsigned full : 1;   /* a frame waited: the output was at buffer_high */
    unsigned draining : 1;
    unsigned dead : 1;
};

/* ---- h2.c */

/* Frames go out on the next turn of the loop (once per turn, however many streams wrote). */
void gw_h2_schedule(struct gw_h2 *h2);
/* An RST_STREAM of ours (not counted as the client's: see on_frame_send()). */
void gw_h2_st_reset(struct gw_h2s *st, uint32_t code);

/* Freed once both nghttp2 and the exchange let go of it. */
void gw_h2s_maybe_free(struct gw_h2s *st);

/* ---- h2_req.c */

/* "name: value\r\n" into <b>. */
void gw_h2_add_line(struct evbuffer *b, const char *name, size_t nl, const char *value, size_t vl);
/* The request's head is whole: it goes to a new exchange as an HTTP/1.1 request (or the
 * gateway answers it: a header list over the limit, a CONNECT it does not open). */
void gw_h2_begin_exchange(struct gw_h2s *st, int end_stream);
/* An answer its exchange left behind waited send_timeout on the client's window: reset. */
void gw_h2_on_stall(evutil_socket_t fd, short what, void *arg);

/* ---- h2_resp.c */

/* nghttp2's data source and send-data callbacks for an answer's body (NO_COPY). */
ssize_t gw_h2_data_read_cb(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length,
                           uint32_t *flags, nghttp2_data_source *source, void *arg);
int gw_h2_send_data_cb(nghttp2_session *s, nghttp2_frame *frame, const uint8_t *framehd,
                       size_t length, nghttp2_data_source *source, void *arg);
/* An answer of the gateway's own (an error, JSON) to a stream that gets no exchange. */
void gw_h2_answer_error(struct gw_h2s *st, enum gw_err e);

#endif
