#include "gateway/conn.h"
#include "gateway/conn_int.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common/httpd.h"
#include "common/log.h"
#include "gateway/activity.h"
#include "gateway/claim.h"
#include "gateway/config.h"
#include "gateway/errors.h"
#include "gateway/h1.h"
#include "gateway/h2.h"
#include "gateway/stream.h"
#include "gateway/tls.h"
#include "gateway/upstream.h"
#include "gateway/worker.h"

/* The pending request head: c->head_len bytes, in the loop's slot or at the start of the
 * input. */
const char *gw_conn_head_data(struct gw_conn *c)
{
    return c->head_slot ? c->head_slot
                        : (const char *)evbuffer_pullup(c->cs.in, (ev_ssize_t)c->head_len);
}

void gw_conn_drop_pending_head(struct gw_conn *c)
{
    if (!c->head_pending)
        return;
    c->head_pending = 0;
    if (c->head_slot) {
        gw_worker_slot_put(c->w, c->head_slot);
        c->head_slot = NULL;
    } else {
        evbuffer_drain(c->cs.in, c->head_len);
    }
}

static void process_head(struct gw_conn *c);

/* ------------------------------------------------------------------ timers and closing */

/* <tv>: one of the worker's common timeouts */
static void arm_timer(struct gw_conn *c, const struct timeval *tv)
{
    evtimer_add(&c->timer, tv);
}

/* The connection's timer is lazy: a keep-alive connection does not re-arm it for every
 * exchange (three event_add/event_del a request were 8 % of the gateway's instructions). It
 * runs keepalive_timeout from whenever it was armed; when it fires, the state says what it
 * means: an idle connection checks how long it has really been idle and re-arms for the rest,
 * an exchange in progress ignores it (the upstream side has its own timeouts). Only a head
 * that does not arrive in one read arms header_timeout, and lingering arms its own. */
static void enter_idle(struct gw_conn *c)
{
    c->state = CS_IDLE;
    c->idle_since = cm_now_mono_coarse();
    if (!evtimer_pending(&c->timer, NULL))
        arm_timer(c, c->w->to_keepalive);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct gw_conn *c = arg;
    struct gw_worker *w = c->w;
    (void)fd, (void)what;
    switch (c->state) {
    case CS_HEAD:
        if (c->secure && !gw_stream_tls_ready(&c->cs)) {
            gw_conn_free(c); /* no handshake in time: nothing to answer over */
        } else if (c->secure && c->head_timer && !c->scan && !c->head_slot &&
                   evbuffer_get_length(c->cs.in) == 0) {
            /* a finished handshake and no byte of a request yet (a browser's preconnect):
             * idle, as a cleartext connection is from its accept */
            c->head_timer = 0;
            enter_idle(c);
        } else if (c->head_timer) {
            gw_conn_send_error(c, GW_ERR_REQUEST_TIMEOUT, 1);
        } else { /* the head's first bytes came as a keep-alive timer ran out */
            c->head_timer = 1;
            arm_timer(c, w->to_header);
        }
        break;
    case CS_IDLE: {
        cm_usec_t idle = cm_now_mono_coarse() - c->idle_since;
        if (idle >= w->gc->limits.keepalive_timeout) {
            gw_conn_free(c);
        } else {
            struct timeval tv;
            cm_usec_to_tv(w->gc->limits.keepalive_timeout - idle, &tv);
            evtimer_add(&c->timer, &tv);
        }
        break;
    }
    case CS_CLOSING:
        gw_conn_free(c);
        break;
    case CS_H2:
        gw_h2_timer(c);
        break;
    case CS_ROUTING:
    case CS_PROXY:
    case CS_TUNNEL:
        break; /* a lazy keep-alive or header timer: enter_idle() arms it again */
    }
}

void gw_conn_begin_close(struct gw_conn *c)
{
    /* Flush what is queued, then half-close and linger reading so the client gets it. */
    c->state = CS_CLOSING;
    if (c->up) {
        gw_upconn_release(c->up, 0);
        c->up = NULL;
    }
    if (c->claim) {
        gw_claim_cancel(c->claim);
        c->claim = NULL;
    }
    gw_stream_set_timeouts(&c->cs, NULL, NULL);
    gw_stream_set_watermarks(&c->cs, 0, 0);
    gw_stream_read_enable(&c->cs);
    gw_conn_drop_pending_head(c);
    evbuffer_drain(c->cs.in, evbuffer_get_length(c->cs.in));
    if (c->virt) {
        /* an HTTP/2 stream's exchange: the codec takes what the output holds when it is
         * freed, on the next turn of the loop */
        static const struct timeval now = {0, 0};
        gw_stream_flush(&c->cs);
        c->shut = 1;
        gw_stream_shutdown_write(&c->cs);
        evtimer_add(&c->timer, &now);
        return;
    }
    arm_timer(c, c->w->to_linger);
    gw_stream_flush(&c->cs); /* the write callback half-closes once the output is out */
    if (evbuffer_get_length(c->cs.out) == 0 && !c->shut) {
        c->shut = 1;
        gw_stream_shutdown_write(&c->cs);
    }
}

void gw_conn_free(struct gw_conn *c)
{
    struct gw_worker *w = c->w;
    if (c->unproven) /* the client left before an answer that starts its session */
        gw_mcp_release_unused(c, "client gone");
    gw_exchange_end(c, 1); /* still in progress: cut */
    if (c->claim)
        gw_claim_cancel(c->claim);
    if (c->up)
        gw_upconn_release(c->up, 0);
    if (c->op)
        c->op->c = NULL; /* its reply frees it */
    gw_exchange_reset_aux(c);
    if (c->head_slot)
        gw_worker_slot_put(w, c->head_slot);
    evtimer_del(&c->timer);
    if (c->h2)
        gw_h2_free(c->h2); /* every stream's exchange first */
    if (c->virt) { /* not one of the worker's connections */
        if (w->n_vconn_spare < gw_vconn_spare_max()) { /* kept for the next stream's exchange */
            gw_stream_fini_keep(&c->cs);
            c->next = w->vconn_spare;
            w->vconn_spare = c;
            w->n_vconn_spare++;
            return;
        }
        gw_stream_fini(&c->cs);
        free(c);
        return;
    }
    gw_stream_fini(&c->cs);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    w->n_conns--;
    GW_METRIC_ADD(&w->metrics, conns_active, -1);
    if (!w->accepting && !w->stopping && w->n_conns < w->gc->limits.max_connections) {
        gw_worker_accepting(w, 1);
    }
    free(c);
}

/* ------------------------------------------------------------------ responses we write */

void gw_conn_send_error(struct gw_conn *c, enum gw_err e, int close)
{
    struct gw_worker *w = c->w;
    const struct gw_err_info *info = gw_err_info(e);
    GW_METRIC_INC(&w->metrics, errors[e]);
    if (c->unproven)
        gw_mcp_release_unused(c, info->code);
    if (c->resp_head_done) {
        /* The response already started: all we can do is cut it. */
        gw_conn_free(c);
        return;
    }
    if (c->up) {
        gw_upconn_release(c->up, 0);
        c->up = NULL;
    }
    gw_conn_drop_pending_head(c);
    if (!c->req_done)
        close = 1;
    if (!c->req_keepalive)
        close = 1;
    char body[256], fields[GW_FIELDS_MAX];
    size_t blen = gw_err_body(e, body, sizeof(body));
    size_t fl = gw_err_fields(e, blen, w->gc->retry_after, fields, sizeof(fields));
    /* fits: 256 for gw_err_fields(), a key of at most 128 bytes, CORS lines under 512 */
    if (w->gc->expose_headers && c->key_len && c->kind == KEY_SID)
        fl += (size_t)snprintf(fields + fl, sizeof(fields) - fl, "x-berth-session: %.*s\r\n",
                               (int)c->key_len, c->key);
    if (c->cors && fl < sizeof(fields)) {
        fl += gw_cors_headers(c, fields + fl, sizeof(fields) - fl);
        fl += (size_t)snprintf(fields + fl, sizeof(fields) - fl, "vary: origin\r\n");
    }
    if (fl >= sizeof(fields)) /* cannot happen; never past the buffer */
        fl = sizeof(fields) - 1;
    c->down->answer(c, info->status, fields, fl, body, blen, close);
    gw_conn_answered(c, info->status, close);
}

/* Ends an exchange the gateway answered itself: the connection closes, or waits for (or
 * goes on with) the next request. */
void gw_conn_answered(struct gw_conn *c, int status, int close)
{
    struct gw_worker *w = c->w;
    c->status = status;
    if (c->t_start) {
        c->t_head = cm_now_mono();
        gw_metrics_response(&w->metrics, status, c->t_head - c->t_start);
    }
    gw_exchange_end(c, 0);
    gw_conn_next(c, close);
}

void gw_conn_next(struct gw_conn *c, int close)
{
    if (close || c->virt) { /* an HTTP/2 stream is one exchange long */
        gw_conn_begin_close(c);
        return;
    }
    gw_stream_flush(&c->cs);
    enter_idle(c);
    c->t_start = 0;
    c->paused_client = c->paused_up = 0;
    gw_stream_read_enable(&c->cs);
    if (evbuffer_get_length(c->cs.in)) {
        c->state = CS_HEAD;
        process_head(c);
    }
}

/* ------------------------------------------------------------------ activity */

static void touch_one(struct gw_conn *c, void *arg)
{
    if ((c->state == CS_PROXY || c->state == CS_TUNNEL) && c->instance[0])
        gw_activity_touch(arg, c->hash);
}

void gw_conn_touch_streams(struct gw_worker *w)
{
    for (struct gw_conn *c = w->conns; c; c = c->next) {
        if (c->state == CS_H2)
            gw_h2_foreach(c->h2, touch_one, w); /* each stream's exchange */
        else
            touch_one(c, w);
    }
}

/* ------------------------------------------------------------------ request head */

/* Parses the head of c->head_len bytes at the start of the input: with gw_h1_scan() when it
 * has the common shape (no body) and <try_scan> (0: the caller's scan of these bytes already
 * deferred), else with llhttp, which then frames the body in c->req. */
int gw_conn_parse_head(struct gw_conn *c, struct gw_h1_head *h, int try_scan)
{
    struct gw_worker *w = c->w;
    const char *data = gw_conn_head_data(c);
    if (!data)
        return GW_H1_BAD;
    h->headers = w->headers;
    h->max_headers = (uint32_t)w->gc->limits.max_headers;
    size_t n;
    if (try_scan && gw_h1_scan(h, data, c->head_len, 0, 0, &n) == GW_H1_OK && n == c->head_len)
        return GW_H1_OK;
    llhttp_init(&c->req, HTTP_REQUEST, &w->req_head_settings);
    return gw_h1_parse_head(&c->req, &w->req_head_settings, h, data, c->head_len, 0);
}

/* The connection's first bytes (<len> at <data>): 1 when it speaks HTTP/2 (ALPN h2 on TLS,
 * the preface on cleartext with gateway.h2c), 0 when it speaks HTTP/1, -1 while too few came
 * to say. */
static int speaks_h2(struct gw_conn *c, const char *data, size_t len)
{
    if (c->secure)
        return gw_tls_alpn_h2(c->cs.ssl);
    return c->w->gc->h2c ? gw_h2_preface(data, len) : 0;
}

static void process_head(struct gw_conn *c)
{
    struct gw_worker *w = c->w;
    const struct gw_limits *lim = &w->gc->limits;
    struct evbuffer *in = c->cs.in;
    size_t len = evbuffer_get_length(in);
    if (len == 0)
        return;
    if (!c->h1_seen) {
        size_t n = len < 24 ? len : 24;
        const char *first = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
        int h2 = first ? speaks_h2(c, first, n) : 0;
        if (h2 > 0) {
            gw_h2_start(c, NULL, 0);
            return;
        }
        if (h2 < 0) { /* part of the preface: the rest within header_timeout */
            if (!c->head_timer) {
                c->head_timer = 1;
                arm_timer(c, w->to_header);
            }
            return;
        }
        c->h1_seen = 1;
    }
    /* The common head, whole in the first read, is found and parsed in one pass. A head that
     * came in pieces is not scanned again with every piece (c->scan: searched before). */
    struct gw_h1_head h;
    h.headers = w->headers;
    h.max_headers = (uint32_t)lim->max_headers;
    size_t first = evbuffer_get_contiguous_space(in), scanned_len;
    const char *first_data = c->scan ? NULL : (const char *)evbuffer_pullup(in, (ev_ssize_t)first);
    int scanned = first_data && gw_h1_scan(&h, first_data, CM_MIN(first, lim->max_header_bytes),
                                           0, 0, &scanned_len) == GW_H1_OK;
    ev_ssize_t end = scanned ? (ev_ssize_t)scanned_len - 4
                             : gw_h1_head_end(in, len, c->scan, lim->max_header_bytes);
    if (end < 0) {
        if (len > lim->max_header_bytes) {
            gw_conn_send_error(c, GW_ERR_HEADERS_TOO_LARGE, 1);
            return;
        }
        c->scan = len;
        if (!c->head_timer) {
            c->head_timer = 1;
            arm_timer(c, w->to_header);
        }
        /* Garbage gets its 400 now, not after the timeout. */
        const char *data = (const char *)evbuffer_pullup(in, -1);
        int rc = data ? gw_h1_precheck(data, len, 0) : GW_H1_BAD;
        if (rc != GW_H1_INCOMPLETE) {
            c->req_keepalive = 0;
            gw_conn_send_error(c, GW_ERR_BAD_REQUEST, 1);
        }
        return;
    }
    c->head_len = (size_t)end + 4;
    c->scan = 0;
    if (c->head_len > lim->max_header_bytes) {
        gw_conn_send_error(c, GW_ERR_HEADERS_TOO_LARGE, 1);
        return;
    }
    /* scanned: done; scanned the whole head and deferred: llhttp only */
    int rc = scanned ? GW_H1_OK : gw_conn_parse_head(c, &h, !first_data || c->head_len > first);
    gw_exchange_begin(c, &h, rc);
}

/* A client read that found the input empty, offered before it is appended there: one whole
 * request head of the common shape without a body, exactly what was read, is copied to one
 * of the loop's head slots and handled from there (its exchange never touches the input
 * buffer). Anything else (a partial head, a body, pipelined requests, a long head) is left to
 * process_head() (0). */
static size_t pass_req_body(struct gw_conn *c, const char *data, size_t len);

static size_t on_client_peek(struct gw_stream *cs, const char *data, size_t len, void *arg)
{
    struct gw_conn *c = arg;
    struct gw_worker *w = c->w;
    (void)cs;
    if (c->state == CS_PROXY && !c->req_done && c->up)
        return pass_req_body(c, data, len);
    if (c->state == CS_TUNNEL && c->up)
        return gw_tunnel_pass(c, gw_upconn_stream(c->up), data, len);
    if (!c->h1_seen && (c->state == CS_IDLE || c->state == CS_HEAD)) {
        int h2 = speaks_h2(c, data, len);
        if (h2 > 0) {
            gw_h2_start(c, data, len);
            return len;
        }
        if (h2 < 0)
            return 0; /* to the input: process_head() waits for the rest */
        c->h1_seen = 1;
    }
    if ((c->state != CS_IDLE && c->state != CS_HEAD) || len > GW_HEAD_SLOT ||
        len > w->gc->limits.max_header_bytes || len < 4 || memcmp(data + len - 4, "\r\n\r\n", 4))
        return 0;
    char *slot = gw_worker_slot_get(w);
    if (!slot)
        return 0;
    memcpy(slot, data, len);
    struct gw_h1_head h;
    h.headers = w->headers;
    h.max_headers = (uint32_t)w->gc->limits.max_headers;
    size_t n;
    if (gw_h1_scan(&h, slot, len, 0, 0, &n) != GW_H1_OK || n != len || !h.body_done) {
        gw_worker_slot_put(w, slot);
        return 0;
    }
    c->state = CS_HEAD;
    c->head_slot = slot;
    c->head_len = len;
    c->scan = 0;
    gw_exchange_begin(c, &h, GW_H1_OK);
    return len;
}

/* ------------------------------------------------------------------ forwarding */

/* llhttp body callbacks (parser->data is the conn) */
static int on_req_body(llhttp_t *p, const char *at, size_t len)
{
    struct gw_conn *c = p->data;
    (void)at;
    c->body_bytes += len;
    if (c->body_bytes > c->route->max_body) {
        c->body_too_large = 1;
        return -1;
    }
    return 0;
}

static int on_msg_complete(llhttp_t *p)
{
    (void)p;
    return HPE_PAUSED;
}

/* The request's last body byte was read (and goes out with what is queued): the instance's
 * answer is now due within response_timeout. */
static void request_sent(struct gw_conn *c)
{
    struct gw_worker *w = c->w;
    c->req_done = 1;
    gw_stream_set_timeouts(&c->cs, NULL, NULL);
    if (c->up && c->up_connected && !c->resp_head_done)
        gw_stream_set_timeouts(gw_upconn_stream(c->up), w->to_response, NULL);
}

/* The request body's next <len> bytes: how many belong to it (c->req_done once it ended), or
 * -1 after answering a bad body (<c> may be gone). */
static ssize_t req_body_step(struct gw_conn *c, const char *data, size_t len)
{
    int ended;
    llhttp_errno_t e;
    size_t body = len;
    if (c->req_chunked) {
        /* Our framing check first, over the whole read: llhttp 8 takes shapes another parser
         * reads as a second request (h1.h, struct gw_h1_chunked), and no byte of a read it
         * refuses is forwarded. llhttp then sees only the body's bytes. */
        ssize_t k = gw_h1_chunked_step(&c->chunk, data, len);
        if (k < 0) {
            GW_XLOG(info, c, "bad chunked request body session=%s", gw_conn_hash_hex(c));
            gw_conn_send_error(c, GW_ERR_BAD_REQUEST, 1);
            return -1;
        }
        body = (size_t)k;
    }
    ssize_t used = gw_h1_body_step(&c->req, data, body, &ended, &e);
    if (used < 0) {
        GW_XLOG(info, c, "bad request body session=%s err=%s", gw_conn_hash_hex(c),
                llhttp_errno_name(e));
        gw_conn_send_error(c, c->body_too_large ? GW_ERR_BODY_TOO_LARGE : GW_ERR_BAD_REQUEST, 1);
        return -1;
    }
    if (c->req_chunked && (ended != gw_h1_chunked_done(&c->chunk) || (size_t)used != body)) {
        /* the two disagree on where the body ends: neither reading is forwarded */
        GW_XLOG(warn, c, "chunked body framed differently by llhttp session=%s",
                gw_conn_hash_hex(c));
        gw_conn_send_error(c, GW_ERR_BAD_REQUEST, 1);
        return -1;
    }
    if (ended)
        request_sent(c);
    return used;
}

int gw_conn_backpressure(struct gw_conn *c, struct gw_stream *to, int flush)
{
    size_t high = c->w->gc->limits.buffer_high;
    if (evbuffer_get_length(to->out) < high)
        return 0;
    if (flush) { /* waits by itself while connecting */
        gw_stream_flush(to);
        if (evbuffer_get_length(to->out) < high)
            return 0;
    }
    /* Above the mark after a write attempt: EV_WRITE is armed (or the connect pending), and
     * the write callback resumes (on_client_write, on_up_write). */
    if (to == &c->cs) {
        c->paused_up = 1;
        gw_stream_read_disable(gw_upconn_stream(c->up));
    } else {
        c->paused_client = 1;
        gw_stream_read_disable(&c->cs);
    }
    return 1;
}

void gw_conn_relay_req_body(struct gw_conn *c)
{
    struct gw_stream *us = gw_upconn_stream(c->up);
    struct evbuffer *in = c->cs.in;
    struct evbuffer *out = us->out;
    while (!c->req_done && evbuffer_get_length(in) > 0) {
        if (gw_conn_backpressure(c, us, 1))
            return;
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        ssize_t used = req_body_step(c, v.iov_base, v.iov_len);
        if (used < 0)
            return;
        evbuffer_remove_buffer(in, out, (size_t)used);
        GW_XFER_IN(c, used);
    }
    gw_stream_flush(us);
}

/* Request body bytes read into the client's empty input (on_client_peek): framed by llhttp
 * where they were read and sent to the instance from there, so the body is never copied into
 * the input buffer (only what the instance's socket refuses is copied, to its output). Takes
 * the body's bytes; what follows the body (a pipelined request) is left to the input. */
static size_t pass_req_body(struct gw_conn *c, const char *data, size_t len)
{
    struct gw_stream *us = gw_upconn_stream(c->up);
    ssize_t used = req_body_step(c, data, len);
    if (used < 0)
        return len; /* answered; <c> may be gone */
    if (used) {
        struct iovec iov = {(void *)data, (size_t)used};
        gw_stream_write(us, &iov, 1);
        GW_XFER_IN(c, (size_t)used);
    }
    if (!c->req_done)
        gw_conn_backpressure(c, us, 0);
    return (size_t)used;
}

/* ------------------------------------------------------------------ responses */

/* ------------------------------------------------------------------ upstream callbacks */

/* ------------------------------------------------------------------ client callbacks */

static void on_client_read(struct gw_stream *cs, void *arg)
{
    struct gw_conn *c = arg;
    (void)cs;
    switch (c->state) {
    case CS_IDLE:
        c->state = CS_HEAD;
        /* fall through */
    case CS_HEAD:
        process_head(c);
        break;
    case CS_PROXY:
        if (!c->req_done && c->up)
            gw_conn_relay_req_body(c);
        break;
    case CS_TUNNEL:
        gw_tunnel_pump(c);
        break;
    case CS_CLOSING: {
        struct evbuffer *in = c->cs.in;
        evbuffer_drain(in, evbuffer_get_length(in));
        break;
    }
    case CS_ROUTING:
    case CS_H2: /* the codec's callbacks, not these */
        break;
    }
}

static void on_client_write(struct gw_stream *cs, void *arg)
{
    struct gw_conn *c = arg;
    if (c->state == CS_CLOSING) {
        if (evbuffer_get_length(cs->out) == 0 && !c->shut) {
            c->shut = 1;
            gw_stream_shutdown_write(cs);
        }
        return;
    }
    if (c->paused_up && c->up) {
        c->paused_up = 0;
        gw_stream_read_enable(gw_upconn_stream(c->up));
        if (c->state == CS_TUNNEL)
            gw_tunnel_pump(c);
        else
            gw_up_relay(c);
    }
}

static void on_client_event(struct gw_stream *cs, short what, void *arg)
{
    struct gw_conn *c = arg;
    (void)cs;
    if (c->state == CS_TUNNEL && (what & GW_STREAM_EOF) && c->up) {
        /* Client closed its side: pass on what it sent, then close both. */
        gw_tunnel_pump(c);
        if (c->virt) {
            /* HTTP/2 END_STREAM is a half-close (RFC 8441): the instance gets its end once
             * what it is owed is out (gw_tunnel_shut_up()), and its side goes on until it
             * closes, or its stream_idle_timeout */
            c->up_wshut = 1;
            gw_tunnel_shut_up(c);
            return;
        }
        struct gw_stream *us = gw_upconn_stream(c->up);
        if (evbuffer_get_length(us->out) == 0)
            shutdown(us->fd, SHUT_WR);
    }
    if ((what & GW_STREAM_TIMEOUT) && c->state == CS_PROXY && !c->req_done &&
        !c->resp_head_done) {
        /* the request body stalled past stream_idle_timeout */
        GW_XLOG(info, c, "request body stalled session=%s", gw_conn_hash_hex(c));
        gw_conn_send_error(c, GW_ERR_REQUEST_TIMEOUT, 1);
        return;
    }
    /* EOF, error or stream idle timeout: the client is gone; cancel the upstream request. */
    gw_conn_free(c);
}

/* ------------------------------------------------------------------ accept */

void gw_conn_accept(struct gw_worker *w, int fd, const struct sockaddr *sa, socklen_t salen,
                    int tls)
{
    (void)salen;
    struct gw_conn *c = calloc(1, sizeof(*c));
    if (!c) {
        close(fd);
        return;
    }
    c->w = w;
    c->down = &gw_h1_down;
    c->autok = &c->own_auto;
    if (gw_stream_init(&c->cs, w->base, fd, &w->scratch) < 0) { /* closes fd */
        free(c);
        return;
    }
    if (tls) {
        if (gw_stream_set_ssl(&c->cs, gw_tls_ssl_new()) < 0) {
            gw_stream_fini(&c->cs);
            free(c);
            return;
        }
        c->secure = 1;
    }
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, c->peer, sizeof(c->peer));
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, c->peer,
                  sizeof(c->peer));
    else
        snprintf(c->peer, sizeof(c->peer), "unix");
    int one = 1;
    if (sa->sa_family != AF_UNIX)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    evtimer_assign(&c->timer, w->base, on_timer, c);
    gw_stream_setcb(&c->cs, on_client_read, on_client_write, on_client_event, c);
    gw_stream_set_peek(&c->cs, on_client_peek);
    gw_stream_set_watermarks(&c->cs, w->gc->limits.buffer_high, w->gc->limits.buffer_low);
    gw_stream_read_enable(&c->cs);
    if (tls) {
        /* The handshake and the first head have header_timeout together: a client that
         * opens connections and never finishes a handshake holds nothing for long. */
        c->state = CS_HEAD;
        c->head_timer = 1;
        arm_timer(c, w->to_header);
    } else {
        enter_idle(c);
    }
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    w->n_conns++;
    GW_METRIC_INC(&w->metrics, conns_accepted);
    GW_METRIC_INC(&w->metrics, conns_active);
    if (w->n_conns >= w->gc->limits.max_connections && w->accepting)
        gw_worker_accepting(w, 0);
}

struct gw_conn *gw_conn_new_virtual(struct gw_conn *parent, const struct gw_stream_vops *ops,
                                    void *ctx)
{
    struct gw_worker *w = parent->w;
    struct gw_conn *c = w->vconn_spare;
    if (c) { /* an ended stream's exchange: its stream's buffers reused */
        w->vconn_spare = c->next;
        w->n_vconn_spare--;
        struct evbuffer *in = c->cs.in, *out = c->cs.out;
        memset(c, 0, sizeof(*c));
        c->cs.in = in;
        c->cs.out = out;
    } else if (!(c = calloc(1, sizeof(*c)))) {
        return NULL;
    }
    if (gw_stream_init_virtual(&c->cs, w->base, ops, ctx) < 0) {
        free(c);
        return NULL;
    }
    c->w = w;
    c->down = &gw_h2_down;
    c->virt = 1;
    c->h1_seen = 1;
    c->secure = parent->secure;
    c->autok = parent->autok;
    memcpy(c->peer, parent->peer, sizeof(c->peer));
    evtimer_assign(&c->timer, w->base, on_timer, c);
    gw_stream_setcb(&c->cs, on_client_read, on_client_write, on_client_event, c);
    gw_stream_set_watermarks(&c->cs, 0, w->gc->limits.buffer_low);
    c->cs.v_wtimeout = w->to_h2_send; /* a client that keeps its window shut: RST_STREAM */
    c->state = CS_HEAD;               /* the head is on its way (the codec gives it whole) */
    gw_stream_read_enable(&c->cs);
    return c;
}

void gw_conn_h2_close(struct gw_conn *c)
{
    gw_stream_setcb(&c->cs, on_client_read, on_client_write, on_client_event, c);
    gw_conn_begin_close(c);
}

void gw_conn_drain_all(struct gw_worker *w)
{
    struct gw_conn *c = w->conns;
    while (c) {
        struct gw_conn *next = c->next;
        if (c->state == CS_H2)
            gw_h2_drain(c->h2);
        else if (c->state == CS_IDLE)
            gw_conn_free(c);
        else
            c->close_after = 1;
        c = next;
    }
}

void gw_conn_close_all(struct gw_worker *w)
{
    while (w->conns)
        gw_conn_free(w->conns);
    while (w->vconn_spare) {
        struct gw_conn *c = w->vconn_spare;
        w->vconn_spare = c->next;
        w->n_vconn_spare--;
        gw_stream_fini(&c->cs); /* kept by gw_stream_fini_keep(): its buffers */
        free(c);
    }
}

/* Settings for the worker's parsers (body callbacks need the conn). */
void gw_conn_settings_init(struct gw_worker *w)
{
    gw_h1_settings_init(&w->req_head_settings, NULL, NULL);
    gw_h1_settings_init(&w->resp_head_settings, NULL, NULL);
    llhttp_settings_init(&w->req_body_settings);
    w->req_body_settings.on_body = on_req_body;
    w->req_body_settings.on_message_complete = on_msg_complete;
    llhttp_settings_init(&w->resp_body_settings);
    w->resp_body_settings.on_body = gw_up_on_body;
    w->resp_body_settings.on_message_complete = on_msg_complete;
}
