/* HTTP/2 on the client side: see h2.h, and gateway/README.md "HTTP/2" for the decisions. */
#include "gateway/h2.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <inttypes.h>
#include <nghttp2/nghttp2.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/httpd.h"
#include "common/log.h"
#include "gateway/conn_int.h"
#include "gateway/errors.h"
#include "gateway/h2_int.h"
#include "gateway/worker.h"

static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
#define PREFACE_LEN (sizeof(preface) - 1)

static void h2_send(struct gw_h2 *h2);
static int reset_limited(struct gw_h2 *h2);

void gw_h2_st_reset(struct gw_h2s *st, uint32_t code)
{
    st->we_reset = 1;
    nghttp2_submit_rst_stream(st->h2->s, NGHTTP2_FLAG_NONE, st->id, code);
}

/* Ended streams a connection keeps for its next ones (none under AddressSanitizer, as
 * gw_vconn_spare_max()). */
static inline uint32_t h2s_spare_max(const struct gw_h2 *h2)
{
#if defined(__SANITIZE_ADDRESS__)
    (void)h2;
    return 0;
#else
    return h2->c->w->gc->h2.max_streams;
#endif
}

int gw_h2_preface(const char *data, size_t len)
{
    size_t n = len < PREFACE_LEN ? len : PREFACE_LEN;
    if (memcmp(data, preface, n))
        return 0;
    return n == PREFACE_LEN ? 1 : -1;
}

void gw_h2_schedule(struct gw_h2 *h2)
{
    if (!h2->send_queued && !h2->dead) {
        h2->send_queued = 1;
        event_active(&h2->send_ev, EV_TIMEOUT, 0);
    }
}

/* ------------------------------------------------------------------ streams */

static void h2s_destroy(struct gw_h2s *st)
{
    struct evbuffer *bufs[] = {st->src, st->data, st->hdr, st->extra};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
        if (bufs[i])
            evbuffer_free(bufs[i]);
    free(st);
}

static struct gw_h2s *h2s_new(struct gw_h2 *h2, int32_t id)
{
    struct gw_h2s *st = h2->spare;
    if (st) { /* a stream of this connection that ended: its (emptied) buffers kept */
        h2->spare = st->next;
        h2->n_spare--;
        struct evbuffer *data = st->data, *hdr = st->hdr, *extra = st->extra, *src = st->src;
        memset(st, 0, sizeof(*st));
        st->data = data, st->hdr = hdr, st->extra = extra, st->src = src;
    } else {
        st = calloc(1, sizeof(*st));
        if (!st)
            return NULL;
        st->data = evbuffer_new();
        st->hdr = evbuffer_new();
        st->extra = evbuffer_new();
        if (!st->data || !st->hdr || !st->extra) {
            h2s_destroy(st);
            return NULL;
        }
    }
    st->h2 = h2;
    st->id = id;
    evtimer_assign(&st->stall, h2->c->w->base, gw_h2_on_stall, st);
    st->next = h2->streams;
    if (h2->streams)
        h2->streams->prev = st;
    h2->streams = st;
    h2->n_streams++;
    return st;
}

static void h2s_free(struct gw_h2s *st)
{
    struct gw_h2 *h2 = st->h2;
    if (st->prev)
        st->prev->next = st->next;
    else
        h2->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    h2->n_streams--;
    if (h2->n_streams == 0) {
        h2->idle_since = cm_now_mono_coarse();
        if (!h2->dead)
            evtimer_add(&h2->c->timer, h2->c->w->to_keepalive);
    }
    evtimer_del(&st->stall);
    free(st->path);
    free(st->authority);
    if (!h2->dead && h2->n_spare < h2s_spare_max(h2)) {
        /* kept for the connection's next stream (no allocation per stream once warm) */
        evbuffer_drain(st->data, evbuffer_get_length(st->data));
        evbuffer_drain(st->hdr, evbuffer_get_length(st->hdr));
        evbuffer_drain(st->extra, evbuffer_get_length(st->extra));
        if (st->src)
            evbuffer_drain(st->src, evbuffer_get_length(st->src));
        st->next = h2->spare;
        h2->spare = st;
        h2->n_spare++;
        return;
    }
    h2s_destroy(st);
}

/* Freed once both nghttp2 and the exchange let go of it. */
void gw_h2s_maybe_free(struct gw_h2s *st)
{
    if (st->sclosed && !st->vc)
        h2s_free(st);
}

/* ------------------------------------------------------------------ nghttp2 callbacks */

static ssize_t send_cb(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *arg)
{
    struct gw_h2 *h2 = arg;
    struct gw_conn *c = h2->c;
    (void)s, (void)flags;
    if (!h2->final && evbuffer_get_length(c->cs.out) >= c->w->gc->limits.buffer_high) {
        h2->full = 1;
        return NGHTTP2_ERR_WOULDBLOCK;
    }
    if (evbuffer_add(c->cs.out, data, len) < 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    return (ssize_t)len;
}

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *frame, void *arg)
{
    struct gw_h2 *h2 = arg;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct gw_h2s *st = h2s_new(h2, frame->hd.stream_id);
    if (!st)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    st->t_begin = cm_now_mono_coarse();
    /* busy: the timer now checks that header blocks end within header_timeout */
    if (h2->n_streams == 1)
        evtimer_add(&h2->c->timer, h2->c->w->to_header);
    nghttp2_session_set_stream_user_data(s, frame->hd.stream_id, st);
    GW_METRIC_INC(&h2->c->w->metrics, h2_streams);
    return 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name, size_t nl,
                     const uint8_t *value, size_t vl, uint8_t flags, void *arg)
{
    struct gw_h2 *h2 = arg;
    (void)flags;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    struct gw_h2s *st = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);
    if (!st)
        return 0;
    st->hdr_bytes += nl + vl + 32;
    if (st->hdr_bytes > h2->c->w->gc->h2.max_header_list)
        st->too_big = 1;
    if (st->too_big)
        return 0;
    const char *n = (const char *)name, *v = (const char *)value;
    if (frame->headers.cat != NGHTTP2_HCAT_REQUEST) { /* the request's trailers */
        if (st->chunked)
            gw_h2_add_line(st->extra, n, nl, v, vl);
        return 0;
    }
    if (nl && n[0] == ':') {
        if (nl == 7 && !memcmp(n, ":method", 7)) {
            if (vl >= sizeof(st->method))
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
            memcpy(st->method, v, vl);
            st->method[vl] = '\0';
            st->head_req = vl == 4 && !memcmp(v, "HEAD", 4);
            st->connect = vl == 7 && !memcmp(v, "CONNECT", 7);
        } else if (nl == 5 && !memcmp(n, ":path", 5)) {
            free(st->path);
            st->path = strndup(v, vl);
        } else if (nl == 10 && !memcmp(n, ":authority", 10)) {
            free(st->authority);
            st->authority = strndup(v, vl);
        } else if (nl == 9 && !memcmp(n, ":protocol", 9)) {
            st->protocol = 1;
            st->ws = vl == 9 && !strncasecmp(v, "websocket", 9);
        }
        return 0;
    }
    if (nl == 6 && !memcmp(n, "cookie", 6)) { /* crumbs joined again (RFC 9113 8.2.3) */
        if (evbuffer_get_length(st->extra))
            evbuffer_add(st->extra, "; ", 2);
        evbuffer_add(st->extra, v, vl);
        return 0;
    }
    if (nl == 4 && !memcmp(n, "host", 4)) {
        if (!st->authority)
            st->authority = strndup(v, vl);
        return 0;
    }
    if (nl == 2 && !memcmp(n, "te", 2))
        return 0;
    if (nl == 14 && !memcmp(n, "content-length", 14))
        st->has_cl = 1;
    gw_h2_add_line(st->hdr, n, nl, v, vl);
    return 0;
}

/* Rapid reset (CVE-2023-44487): the client's RST_STREAMs drain a bucket of reset_burst refilled
 * at reset_rate a second; an empty one ends the connection with ENHANCE_YOUR_CALM. 0: go on. */
static int reset_limited(struct gw_h2 *h2)
{
    const struct gw_h2_config *hc = &h2->c->w->gc->h2;
    cm_usec_t now = cm_now_mono_coarse();
    if (!h2->rst_at) {
        h2->rst_tokens = hc->reset_burst;
        h2->rst_at = now;
    } else {
        uint64_t add = (uint64_t)(now - h2->rst_at) * hc->reset_rate / CM_USEC_PER_SEC;
        if (add) {
            uint64_t t = h2->rst_tokens + add;
            h2->rst_tokens = t > hc->reset_burst ? hc->reset_burst : (uint32_t)t;
            h2->rst_at = now;
        }
    }
    if (h2->rst_tokens == 0)
        return 1;
    h2->rst_tokens--;
    return 0;
}

/* A reset the client made (its RST_STREAM, or ours for its protocol error): counted, and
 * past the limit the connection ends with ENHANCE_YOUR_CALM (h2_recv() closes it). */
static void client_reset(struct gw_h2 *h2)
{
    if (!h2->calm && reset_limited(h2)) {
        h2->calm = 1;
        nghttp2_session_terminate_session(h2->s, NGHTTP2_ENHANCE_YOUR_CALM);
    }
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *frame, void *arg)
{
    struct gw_h2 *h2 = arg;
    int end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (frame->hd.type == NGHTTP2_RST_STREAM) {
        client_reset(h2);
        return 0;
    }
    struct gw_h2s *st = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);
    if (!st)
        return 0;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
            gw_h2_begin_exchange(st, end);
            return 0;
        }
        break;
    case NGHTTP2_DATA:
        break;
    default:
        return 0;
    }
    if (!end || st->req_end)
        return 0;
    st->req_end = 1;
    if (!st->vc)
        return 0;
    if (st->tunnel) {
        gw_stream_v_fail(&st->vc->cs, GW_STREAM_EOF); /* a half-close (RFC 8441) */
    } else if (st->ws) {
        /* before the instance's 101: passed on when the tunnel starts (h2_resp.c) */
    } else if (st->chunked) {
        gw_stream_v_input(&st->vc->cs, "0\r\n", 3);
        if (evbuffer_get_length(st->extra))
            gw_stream_v_input_buffer(&st->vc->cs, st->extra);
        gw_stream_v_input(&st->vc->cs, "\r\n", 2);
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *arg)
{
    (void)arg, (void)flags;
    struct gw_h2s *st = nghttp2_session_get_stream_user_data(s, id);
    if (!st || !st->vc || st->req_end) {
        nghttp2_session_consume(s, id, len); /* nobody reads it */
        return 0;
    }
    struct gw_stream *vs = &st->vc->cs;
    st->owed += len;
    if (st->chunked) {
        char line[24];
        int n = snprintf(line, sizeof(line), "%zx\r\n", len);
        gw_stream_v_input(vs, line, (size_t)n);
        gw_stream_v_input(vs, data, len);
        gw_stream_v_input(vs, "\r\n", 2);
    } else {
        gw_stream_v_input(vs, data, len);
    }
    return 0;
}

/* The answer is whole and the request is not: the client may stop sending it (RFC 9113 8.1),
 * and the stream does not stay open on the client's word. */
static int on_frame_send(nghttp2_session *s, const nghttp2_frame *frame, void *arg)
{
    struct gw_h2 *h2 = arg;
    struct gw_h2s *st = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);
    if (frame->hd.type == NGHTTP2_RST_STREAM) {
        /* A reset nghttp2 sent for the client's protocol error counts as the client's own
         * (MadeYouReset, CVE-2025-8671): a stream it made the gateway start and end. */
        if ((!st || !st->we_reset) && frame->rst_stream.error_code != NGHTTP2_NO_ERROR)
            client_reset(h2);
        return 0;
    }
    if ((frame->hd.type != NGHTTP2_DATA && frame->hd.type != NGHTTP2_HEADERS) ||
        !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    if (st && !st->sclosed && !nghttp2_session_get_stream_remote_close(s, st->id)) {
        gw_h2_st_reset(st, NGHTTP2_NO_ERROR);
    }
    return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t code, void *arg)
{
    (void)arg;
    struct gw_h2s *st = nghttp2_session_get_stream_user_data(s, id);
    if (!st)
        return 0;
    st->sclosed = 1;
    if (st->vc) {
        if (code != NGHTTP2_NO_ERROR || !st->resp_end)
            GW_METRIC_INC(&st->h2->c->w->metrics, h2_resets);
        /* the client reset it, or it ended: the exchange, if still there, is over */
        gw_stream_v_fail(&st->vc->cs, GW_STREAM_ERROR);
        return 0;
    }
    h2s_free(st);
    return 0;
}

/* ------------------------------------------------------------------ the connection */

/* The codec is done: every stream's exchange is cut and every stream freed. */
static void cut_all(struct gw_h2 *h2)
{
    h2->dead = 1;
    for (struct gw_h2s *st = h2->streams, *next; st; st = next) {
        next = st->next;
        st->sclosed = 1;
        if (st->vc)
            gw_conn_free(st->vc); /* vs_closed() frees st */
        else
            h2s_free(st);
    }
}

/* Ends the connection: every stream's exchange is cut, the frames queued go out, then the
 * socket closes (the codec itself is freed with the connection). */
static void h2_close(struct gw_h2 *h2)
{
    if (h2->dead)
        return;
    cut_all(h2);
    gw_conn_h2_close(h2->c);
}

static void h2_send(struct gw_h2 *h2)
{
    struct gw_conn *c = h2->c;
    h2->send_queued = 0;
    if (h2->dead)
        return;
    for (struct gw_h2s *st = h2->streams; st; st = st->next) {
        if (!st->ready)
            continue;
        st->ready = 0;
        if (st->sclosed)
            continue;
        if (!st->head_sent) {
            if (!st->cut && (!st->vc || st->shut)) {
                /* the exchange ended without an answer */
                st->cut = 1;
                gw_h2_st_reset(st, NGHTTP2_INTERNAL_ERROR);
            }
        }
        if (st->deferred && st->head_sent) {
            st->deferred = 0;
            nghttp2_session_resume_data(h2->s, st->id);
        }
    }
    /* Frames into the output up to buffer_high, then to the socket; again while the socket
     * took it all (no write callback would come), a bounded number of times per turn. */
    for (int turn = 0;; turn++) {
        h2->full = 0;
        int rv = nghttp2_session_send(h2->s);
        if (rv < 0) {
            cm_log_info("h2", "send failed peer=%s: %s", c->peer, nghttp2_strerror(rv));
            h2_close(h2);
            return;
        }
        gw_stream_flush(&c->cs);
        if (!h2->full || gw_stream_writing(&c->cs))
            break; /* all sent, or the write callback goes on */
        if (turn == 16) {
            gw_h2_schedule(h2); /* the loop's other connections first */
            break;
        }
    }
    /* Reading goes on while the output waits: what a client that does not read makes us
     * queue is bounded by nghttp2 (acks: max_outbound_ack, then GOAWAY; answers: streams and
     * windows), and the socket's output by buffer_high (send_cb). */
    if (!nghttp2_session_want_read(h2->s) && !nghttp2_session_want_write(h2->s))
        h2_close(h2);
}

/* Ends the connection with GOAWAY <code>: the frames already queued and the GOAWAY go out
 * whatever the output holds (bounded: nghttp2 queues no more), then the socket closes. */
static void h2_goaway(struct gw_h2 *h2, uint32_t code)
{
    nghttp2_session_terminate_session(h2->s, code); /* kept code if one is queued already */
    h2->final = 1;
    nghttp2_session_send(h2->s);
    h2_close(h2);
}

static void on_send_ev(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    h2_send(arg);
}

static void h2_recv(struct gw_h2 *h2, const char *data, size_t len)
{
    ssize_t rv = nghttp2_session_mem_recv(h2->s, (const uint8_t *)data, len);
    if (rv >= 0 && h2->calm) {
        cm_log_info("h2",
                    "connection ended peer=%s: streams reset faster than "
                    "gateway.h2.reset_burst/reset_rate",
                    h2->c->peer);
        GW_METRIC_INC(&h2->c->w->metrics, h2_goaways);
        h2_goaway(h2, NGHTTP2_ENHANCE_YOUR_CALM);
        return;
    }
    if (rv < 0) {
        /* floods get ENHANCE_YOUR_CALM; anything else broke the protocol */
        uint32_t code = rv == NGHTTP2_ERR_FLOODED || rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS ||
                                rv == NGHTTP2_ERR_TOO_MANY_SETTINGS
                            ? NGHTTP2_ENHANCE_YOUR_CALM
                            : NGHTTP2_PROTOCOL_ERROR;
        cm_log_info("h2", "connection error peer=%s: %s", h2->c->peer, nghttp2_strerror((int)rv));
        GW_METRIC_INC(&h2->c->w->metrics, h2_goaways);
        h2_goaway(h2, code);
    }
}

static void on_h2_read(struct gw_stream *cs, void *arg)
{
    struct gw_h2 *h2 = arg;
    while (!h2->dead && evbuffer_get_length(cs->in)) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(cs->in, -1, NULL, &v, 1) < 1)
            break;
        h2_recv(h2, v.iov_base, v.iov_len);
        if (h2->dead)
            return;
        evbuffer_drain(cs->in, v.iov_len);
    }
    gw_h2_schedule(h2);
}

static size_t on_h2_peek(struct gw_stream *cs, const char *data, size_t len, void *arg)
{
    struct gw_h2 *h2 = arg;
    (void)cs;
    h2_recv(h2, data, len);
    if (!h2->dead)
        gw_h2_schedule(h2);
    return len;
}

static void on_h2_write(struct gw_stream *cs, void *arg)
{
    (void)cs;
    gw_h2_schedule(arg);
}

static void on_h2_event(struct gw_stream *cs, short what, void *arg)
{
    struct gw_h2 *h2 = arg;
    (void)cs, (void)what;
    gw_conn_free(h2->c); /* the client is gone: every stream's exchange with it */
}

void gw_h2_timer(struct gw_conn *c)
{
    struct gw_h2 *h2 = c->h2;
    const struct gw_limits *lim = &c->w->gc->limits;
    cm_usec_t now = cm_now_mono_coarse();
    if (h2->n_streams) {
        /* A header block begun and not ended within header_timeout (a HEADERS frame's first
         * bytes, or a CONTINUATION that never comes) holds no exchange and no timer of its
         * own: the connection ends. */
        for (struct gw_h2s *st = h2->streams; st; st = st->next) {
            if (!st->hdr_done && !st->sclosed && now - st->t_begin >= lim->header_timeout) {
                cm_log_info("h2",
                            "connection ended peer=%s: a header block took longer than "
                            "header_timeout",
                            c->peer);
                GW_METRIC_INC(&c->w->metrics, h2_goaways);
                h2_goaway(h2, NGHTTP2_NO_ERROR);
                return;
            }
        }
        evtimer_add(&c->timer, c->w->to_header);
        return;
    }
    cm_usec_t idle = now - h2->idle_since;
    cm_usec_t limit = lim->keepalive_timeout;
    if (idle >= limit || h2->draining) {
        h2_goaway(h2, NGHTTP2_NO_ERROR);
        return;
    }
    struct timeval tv;
    cm_usec_to_tv(limit - idle, &tv);
    evtimer_add(&c->timer, &tv);
}

void gw_h2_drain(struct gw_h2 *h2)
{
    if (h2->draining || h2->dead)
        return;
    h2->draining = 1;
    nghttp2_submit_goaway(h2->s, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(h2->s),
                          NGHTTP2_NO_ERROR, NULL, 0);
    gw_h2_schedule(h2);
}

void gw_h2_foreach(struct gw_h2 *h2, void (*fn)(struct gw_conn *vc, void *arg), void *arg)
{
    for (struct gw_h2s *st = h2->streams; st; st = st->next)
        if (st->vc)
            fn(st->vc, arg);
}

void gw_h2_free(struct gw_h2 *h2)
{
    /* the exchanges go first: each one's end frees its stream when nghttp2 let go too */
    cut_all(h2);
    while (h2->spare) {
        struct gw_h2s *st = h2->spare;
        h2->spare = st->next;
        h2s_destroy(st);
    }
    if (h2->head)
        evbuffer_free(h2->head);
    event_del(&h2->send_ev);
    nghttp2_session_del(h2->s);
    free(h2->nv);
    h2->c->h2 = NULL;
    free(h2);
}

void gw_h2_start(struct gw_conn *c, const char *data, size_t len)
{
    struct gw_worker *w = c->w;
    const struct gw_h2_config *hc = &w->gc->h2;
    struct gw_h2 *h2 = calloc(1, sizeof(*h2));
    nghttp2_session_callbacks *cb = NULL;
    nghttp2_option *opt = NULL;
    if (!h2 || nghttp2_session_callbacks_new(&cb) || nghttp2_option_new(&opt))
        goto fail;
    h2->c = c;
    h2->nv_cap = w->gc->limits.max_headers + 32; /* + :status and the gateway's own fields */
    h2->nv = calloc(h2->nv_cap, sizeof(*h2->nv));
    h2->head = evbuffer_new();
    if (!h2->nv || !h2->head)
        goto fail;
    nghttp2_session_callbacks_set_send_callback(cb, send_cb);
    nghttp2_session_callbacks_set_send_data_callback(cb, gw_h2_send_data_cb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_continuations(opt, hc->max_continuations);
    /* ours (reset_limited()) answers ENHANCE_YOUR_CALM first; nghttp2's is the backstop */
    nghttp2_option_set_stream_reset_rate_limit(opt, 2 * (uint64_t)hc->reset_burst,
                                               2 * hc->reset_rate);
    nghttp2_option_set_max_settings(opt, hc->max_settings);
    nghttp2_option_set_max_outbound_ack(opt, hc->max_outbound_ack);
    if (nghttp2_session_server_new2(&h2->s, cb, h2, opt))
        goto fail;
    nghttp2_session_callbacks_del(cb);
    nghttp2_option_del(opt);
    cb = NULL;
    opt = NULL;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, hc->max_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, hc->stream_window},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, hc->max_header_list},
        {NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1},
    };
    /* The connection's window holds every stream's: a stalled stream never stalls the rest. */
    uint64_t cw = (uint64_t)hc->max_streams * hc->stream_window;
    if (cw > NGHTTP2_MAX_WINDOW_SIZE)
        cw = NGHTTP2_MAX_WINDOW_SIZE;
    if (nghttp2_submit_settings(h2->s, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0])) ||
        nghttp2_session_set_local_window_size(h2->s, NGHTTP2_FLAG_NONE, 0, (int32_t)cw))
        goto fail;
    event_assign(&h2->send_ev, w->base, -1, 0, on_send_ev, h2);
    c->h2 = h2;
    c->state = CS_H2;
    c->head_timer = 0;
    h2->idle_since = cm_now_mono_coarse();
    evtimer_del(&c->timer);
    evtimer_add(&c->timer, w->to_keepalive);
    /* a client that takes none of its output for send_timeout is gone (its streams' resets
     * could not reach it either) */
    gw_stream_set_timeouts(&c->cs, NULL, w->to_h2_send);
    gw_stream_setcb(&c->cs, on_h2_read, on_h2_write, on_h2_event, h2);
    gw_stream_set_peek(&c->cs, on_h2_peek);
    gw_stream_read_enable(&c->cs);
    GW_METRIC_INC(&w->metrics, h2_conns);
    /* what came before the switch */
    if (evbuffer_get_length(c->cs.in)) {
        on_h2_read(&c->cs, h2);
        if (h2->dead)
            return;
    }
    if (len) {
        h2_recv(h2, data, len);
        if (h2->dead)
            return;
    }
    h2_send(h2);
    return;
fail:
    if (cb)
        nghttp2_session_callbacks_del(cb);
    if (opt)
        nghttp2_option_del(opt);
    if (h2) {
        if (h2->s)
            nghttp2_session_del(h2->s);
        if (h2->head)
            evbuffer_free(h2->head);
        free(h2->nv);
        free(h2);
    }
    gw_conn_free(c);
}
