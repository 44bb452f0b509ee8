/* HTTP/2 on the client side: see h2.h, and gateway/README.md "HTTP/2" for the decisions. */
#include "gateway/h2.h"

#include <ctype.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <inttypes.h>
#include <nghttp2/nghttp2.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/httpd.h"
#include "common/log.h"
#include "gateway/conn_int.h"
#include "gateway/errors.h"
#include "gateway/worker.h"

/* Ended streams a connection keeps for its next ones (none under AddressSanitizer, as
 * gw_vconn_spare_max()). */
static inline uint32_t h2s_spare_max(const struct gw_h2 *h2);

/* The longest answer head read back: the exchange takes an instance's response head of up to
 * 4 x limits.max_header_bytes (up_h1.c) and adds its own fields (cookies, CORS, x-berth-*). */
#define H2_HEAD_MAX(w) (4 * (size_t)(w)->gc->limits.max_header_bytes + 16384)
/* Interim (1xx) heads an answer may have, and bytes of its trailers: more cuts the stream
 * (a hostile instance must not queue HEADERS frames or trailer bytes without end). */
#define H2_MAX_INTERIM 16

static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
#define PREFACE_LEN (sizeof(preface) - 1)

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
    size_t owed; /* request DATA bytes given to the exchange and not yet consumed */
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
    unsigned in_trailer : 1;
    unsigned bad : 1;
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
    nghttp2_nv *nv;
    size_t nv_cap;
    cm_usec_t idle_since;
    unsigned send_queued : 1;
    unsigned calm : 1;   /* the client went over a flood limit: GOAWAY ENHANCE_YOUR_CALM */
    uint32_t rst_tokens; /* RST_STREAMs the client may still send now (reset_burst, refilled
                            at reset_rate a second) */
    cm_usec_t rst_at;    /* when rst_tokens was last refilled; 0: never */
    unsigned final : 1;
    unsigned full : 1;
        /* a frame waited: the output was at buffer_high */ /* the last frames (GOAWAY): queued
                                                               whatever the output holds */
    unsigned draining : 1;
    unsigned dead : 1;
};

static void h2_send(struct gw_h2 *h2);
static void h2s_maybe_free(struct gw_h2s *st);
static int reset_limited(struct gw_h2 *h2);

/* An RST_STREAM of ours (not counted as the client's: see on_frame_send()). */
static void st_reset(struct gw_h2s *st, uint32_t code)
{
    st->we_reset = 1;
    nghttp2_submit_rst_stream(st->h2->s, NGHTTP2_FLAG_NONE, st->id, code);
}

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

static void h2_schedule(struct gw_h2 *h2)
{
    if (!h2->send_queued && !h2->dead) {
        h2->send_queued = 1;
        event_active(&h2->send_ev, EV_TIMEOUT, 0);
    }
}

/* ------------------------------------------------------------------ the answer, read back */

static int on_resp_body(llhttp_t *p, const char *at, size_t len)
{
    struct gw_h2s *st = p->data;
    if (evbuffer_add(st->data, at, len) < 0)
        return -1;
    return 0;
}

static int on_resp_complete(llhttp_t *p)
{
    struct gw_h2s *st = p->data;
    st->msg_done = 1;
    return HPE_PAUSED;
}

/* Trailers (after the head: fields after the last chunk): "name\0value\0" into st->hdr. */
/* Trailer bytes kept: up to limits.max_header_bytes, then the answer is cut (-1). */
static int trl_add(struct gw_h2s *st, const char *at, size_t len)
{
    if (evbuffer_get_length(st->hdr) + len > st->h2->c->w->gc->limits.max_header_bytes)
        return -1;
    return evbuffer_add(st->hdr, at, len) < 0 ? -1 : 0;
}

static int on_trl_field(llhttp_t *p, const char *at, size_t len)
{
    struct gw_h2s *st = p->data;
    if (!st->head_sent)
        return 0;
    st->in_trailer = 1;
    return trl_add(st, at, len);
}

static int on_trl_value(llhttp_t *p, const char *at, size_t len)
{
    struct gw_h2s *st = p->data;
    if (!st->head_sent)
        return 0;
    return trl_add(st, at, len);
}

static int on_trl_end(llhttp_t *p)
{
    struct gw_h2s *st = p->data;
    if (!st->head_sent)
        return 0;
    return evbuffer_add(st->hdr, "", 1) < 0 ? -1 : 0;
}

static llhttp_settings_t resp_settings;
static llhttp_settings_t head_settings;

/* Head callbacks: the whole head is parsed in one call, so each field and value comes whole. */
struct head_ctx {
    struct gw_h2 *h2;
    size_t n;
    const char *name;
    size_t name_len;
    int skip_value;
    int over;
};

static int on_head_field(llhttp_t *p, const char *at, size_t len)
{
    struct head_ctx *hc = p->data;
    hc->name = at;
    hc->name_len = len;
    return 0;
}

/* Not sent over HTTP/2 (RFC 9113 8.2.2), or only the HTTP/1 side's business. */
static int conn_specific(const char *n, size_t l)
{
    switch (l) {
    case 2:
        return !strncasecmp(n, "te", 2);
    case 7:
        return !strncasecmp(n, "upgrade", 7);
    case 10:
        return !strncasecmp(n, "connection", 10) || !strncasecmp(n, "keep-alive", 10);
    case 16:
        return !strncasecmp(n, "proxy-connection", 16);
    case 17:
        return !strncasecmp(n, "transfer-encoding", 17);
    case 20:
        return !strncasecmp(n, "sec-websocket-accept", 20);
    default:
        return 0;
    }
}

static int on_head_value(llhttp_t *p, const char *at, size_t len)
{
    struct head_ctx *hc = p->data;
    if (conn_specific(hc->name, hc->name_len))
        return 0;
    if (hc->n >= hc->h2->nv_cap) {
        hc->over = 1;
        return 0;
    }
    char *name = (char *)hc->name; /* our copy of the head, drained after */
    for (size_t i = 0; i < hc->name_len; i++)
        name[i] = (char)tolower((unsigned char)name[i]);
    nghttp2_nv *nv = &hc->h2->nv[hc->n++];
    nv->name = (uint8_t *)name;
    nv->namelen = hc->name_len;
    nv->value = (uint8_t *)at;
    nv->valuelen = len;
    nv->flags = NGHTTP2_NV_FLAG_NONE;
    return 0;
}

static int on_head_done(llhttp_t *p)
{
    (void)p;
    return HPE_PAUSED;
}

/* :status of <code> (100-999). */
static void status_digits(char out[4], unsigned code)
{
    out[0] = (char)('0' + code / 100 % 10);
    out[1] = (char)('0' + code / 10 % 10);
    out[2] = (char)('0' + code % 10);
    out[3] = '\0';
}

static struct evbuffer *st_src(struct gw_h2s *st)
{
    return st->vc ? st->vc->cs.out : st->src;
}

static void st_taken(struct gw_h2s *st)
{
    if (st->vc)
        gw_stream_v_taken(&st->vc->cs);
}

static ssize_t data_read_cb(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length,
                            uint32_t *flags, nghttp2_data_source *source, void *arg);

/* Submits the answer's heads found at the start of its bytes (1xx, then the final one). */
static void pump_head(struct gw_h2s *st)
{
    struct gw_h2 *h2 = st->h2;
    while (!st->head_sent && !st->sclosed) {
        struct evbuffer *src = st_src(st);
        size_t len = src ? evbuffer_get_length(src) : 0;
        ev_ssize_t end = len ? gw_h1_head_end(src, len, 0, H2_HEAD_MAX(h2->c->w)) : -1;
        if (end < 0)
            return;
        size_t hlen = (size_t)end + 4;
        char *head = (char *)evbuffer_pullup(src, (ev_ssize_t)hlen);
        struct head_ctx hc = {.h2 = h2, .n = 1};
        llhttp_t p;
        llhttp_init(&p, HTTP_RESPONSE, &head_settings);
        p.data = &hc;
        llhttp_errno_t e = head ? llhttp_execute(&p, head, hlen) : HPE_INTERNAL;
        if ((e != HPE_PAUSED && e != HPE_OK) || hc.over || p.status_code < 100 ||
            p.status_code > 999) {
            st->bad = st->cut = 1;
            st_reset(st, NGHTTP2_INTERNAL_ERROR);
            return;
        }
        char status[4];
        status_digits(status, p.status_code);
        h2->nv[0] =
            (nghttp2_nv){(uint8_t *)":status", (uint8_t *)status, 7, 3, NGHTTP2_NV_FLAG_NONE};
        int code = p.status_code;
        if (code >= 100 && code < 200 && code != 101) {
            if (++st->n_interim > H2_MAX_INTERIM) {
                st->bad = st->cut = 1;
                st_reset(st, NGHTTP2_INTERNAL_ERROR);
                return;
            }
            nghttp2_submit_headers(h2->s, NGHTTP2_FLAG_NONE, st->id, NULL, h2->nv, hc.n, NULL);
            evbuffer_drain(src, hlen);
            st_taken(st);
            continue;
        }
        if (code == 101) {
            if (!st->ws) {
                st->bad = st->cut = 1;
                st_reset(st, NGHTTP2_INTERNAL_ERROR);
                return;
            }
            memcpy(status, "200", 4); /* RFC 8441: the CONNECT's success */
            st->tunnel = 1;
            if (st->req_end && st->vc) /* the client ended its side before the 101 */
                gw_stream_v_fail(&st->vc->cs, GW_STREAM_EOF);
        }
        /* the answer's framing, as an HTTP/1 client reads it, from here on */
        llhttp_init(&st->resp, HTTP_RESPONSE, &resp_settings);
        st->resp.data = st;
        size_t skip = 0;
        if (!st->tunnel && !st->head_req) {
            /* the body's framing parser reads the head too (msg_done: it has no body) */
            llhttp_errno_t e2 = llhttp_execute(&st->resp, head, hlen);
            if (e2 != HPE_OK && e2 != HPE_PAUSED) {
                st->bad = st->cut = 1;
                st_reset(st, NGHTTP2_INTERNAL_ERROR);
                return;
            }
        }
        skip = hlen;
        st->head_sent = 1;
        int nobody = !st->tunnel && (st->head_req || st->msg_done || code == 204 || code == 304);
        if (nobody)
            st->resp_end = 1;
        nghttp2_data_provider prd = {.source = {.ptr = st}, .read_callback = data_read_cb};
        int rv = nghttp2_submit_response(h2->s, st->id, h2->nv, hc.n, nobody ? NULL : &prd);
        evbuffer_drain(src, skip);
        st_taken(st);
        if (rv < 0) {
            st->cut = 1;
            st_reset(st, NGHTTP2_INTERNAL_ERROR);
        }
        return;
    }
}

/* Frames up to <want> more payload bytes into st->data from the answer's bytes; decides the
 * end (resp_end) or a cut. */
static void fill(struct gw_h2s *st, size_t want)
{
    while (!st->resp_end && !st->cut && evbuffer_get_length(st->data) < want) {
        struct evbuffer *src = st_src(st);
        size_t len = src ? evbuffer_get_length(src) : 0;
        if (len == 0) {
            if (st->vc && !st->shut)
                return; /* more to come */
            /* the exchange ended and left nothing more */
            if (st->tunnel) {
                st->resp_end = 1;
            } else {
                if (!st->msg_done)
                    llhttp_finish(&st->resp); /* a body that ends with the close */
                if (st->msg_done)
                    st->resp_end = 1;
                else
                    st->cut = 1;
            }
            return;
        }
        size_t room = want - evbuffer_get_length(st->data);
        if (st->tunnel) {
            size_t n = len < room ? len : room;
            evbuffer_remove_buffer(src, st->data, n);
            st_taken(st);
            continue;
        }
        struct evbuffer_iovec v;
        if (evbuffer_peek(src, -1, NULL, &v, 1) < 1)
            return;
        size_t n = v.iov_len < room + 64 ? v.iov_len : room + 64;
        llhttp_errno_t e = llhttp_execute(&st->resp, v.iov_base, n);
        size_t used = n;
        if (e == HPE_PAUSED) {
            used = (size_t)(llhttp_get_error_pos(&st->resp) - (const char *)v.iov_base);
        } else if (e != HPE_OK) {
            st->cut = st->bad = 1;
            return;
        }
        evbuffer_drain(src, used);
        st_taken(st);
        if (st->msg_done) {
            st->resp_end = 1;
            if (st->vc) /* what follows the answer is not the client's */
                evbuffer_drain(src, evbuffer_get_length(src));
        }
    }
}

/* The answer's trailers (st->hdr, "name\0value\0"...) as a HEADERS frame ending the stream. */
static int submit_trailers(struct gw_h2s *st)
{
    struct gw_h2 *h2 = st->h2;
    size_t len = evbuffer_get_length(st->hdr);
    char *p = (char *)evbuffer_pullup(st->hdr, (ev_ssize_t)len);
    size_t n = 0;
    for (char *q = p, *end = p + len; q && q < end && n < h2->nv_cap;) {
        char *name = q, *z = memchr(q, 0, (size_t)(end - q));
        if (!z)
            break;
        char *value = z + 1, *z2 = value < end ? memchr(value, 0, (size_t)(end - value)) : NULL;
        if (!z2)
            break;
        size_t nl = (size_t)(z - name);
        for (size_t i = 0; i < nl; i++)
            name[i] = (char)tolower((unsigned char)name[i]);
        if (!conn_specific(name, nl))
            h2->nv[n++] = (nghttp2_nv){(uint8_t *)name, (uint8_t *)value, nl, (size_t)(z2 - value),
                                       NGHTTP2_NV_FLAG_NONE};
        q = z2 + 1;
    }
    return n ? nghttp2_submit_trailer(h2->s, st->id, h2->nv, n) : -1;
}

static ssize_t data_read_cb(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length,
                            uint32_t *flags, nghttp2_data_source *source, void *arg)
{
    struct gw_h2s *st = source->ptr;
    (void)s, (void)id, (void)buf, (void)arg;
    fill(st, length);
    size_t have = evbuffer_get_length(st->data);
    if (st->cut && have == 0) {
        st->we_reset = 1; /* nghttp2 sends it, for the instance's short answer */
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* RST_STREAM: the answer is short */
    }
    if (have == 0 && !st->resp_end) {
        st->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    size_t n = have < length ? have : length;
    *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (st->resp_end && n == have) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (evbuffer_get_length(st->hdr) && submit_trailers(st) == 0)
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
    }
    return (ssize_t)n;
}

static int send_data_cb(nghttp2_session *s, nghttp2_frame *frame, const uint8_t *framehd,
                        size_t length, nghttp2_data_source *source, void *arg)
{
    struct gw_h2 *h2 = arg;
    struct gw_h2s *st = source->ptr;
    struct gw_conn *c = h2->c;
    (void)s;
    if (!h2->final && evbuffer_get_length(c->cs.out) >= c->w->gc->limits.buffer_high) {
        h2->full = 1;
        return NGHTTP2_ERR_WOULDBLOCK;
    }
    if (!st->vc && !st->sclosed) /* progress: an answer left behind has send_timeout again */
        evtimer_add(&st->stall, h2->c->w->to_h2_send);
    if (evbuffer_add(c->cs.out, framehd, 9) < 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    if (frame->data.padlen > 0) {
        uint8_t pad = (uint8_t)(frame->data.padlen - 1);
        evbuffer_add(c->cs.out, &pad, 1);
    }
    evbuffer_remove_buffer(st->data, c->cs.out, length);
    if (frame->data.padlen > 1) {
        static const uint8_t zero[256];
        evbuffer_add(c->cs.out, zero, frame->data.padlen - 1);
    }
    return 0;
}

/* ------------------------------------------------------------------ the exchange's stream */

static void vs_output(void *ctx)
{
    struct gw_h2s *st = ctx;
    st->ready = 1;
    h2_schedule(st->h2);
}

static void vs_shutdown(void *ctx)
{
    struct gw_h2s *st = ctx;
    st->shut = 1;
    st->ready = 1;
    h2_schedule(st->h2);
}

static void consume(struct gw_h2s *st, size_t n)
{
    if (n > st->owed)
        n = st->owed;
    if (!n)
        return;
    st->owed -= n;
    if (!st->sclosed)
        nghttp2_session_consume(st->h2->s, st->id, n);
    else
        nghttp2_session_consume_connection(st->h2->s, n);
    h2_schedule(st->h2);
}

static void on_vin_drained(struct evbuffer *buf, const struct evbuffer_cb_info *info,
                           void *arg);

static void vs_closed(void *ctx, struct evbuffer *out)
{
    struct gw_h2s *st = ctx;
    st->vc = NULL;
    if (st->vin) { /* the exchange's input may serve another stream next */
        evbuffer_remove_cb(st->vin, on_vin_drained, st);
        st->vin = NULL;
    }
    consume(st, st->owed); /* request bytes the exchange will not read */
    if (st->sclosed) {
        h2s_maybe_free(st);
        return;
    }
    if (!st->shut && !st->resp_end && !st->cut) {
        /* freed without ending its answer: cut (a timeout, an error, the window held shut) */
        st->cut = 1;
        GW_METRIC_INC(&st->h2->c->w->metrics, h2_resets);
        st_reset(st, NGHTTP2_INTERNAL_ERROR);
        h2_schedule(st->h2);
        return;
    }
    if (evbuffer_get_length(out) && (st->src || (st->src = evbuffer_new())))
        evbuffer_add_buffer(st->src, out);
    /* the exchange's send timeout ends with it: what it left has its own */
    if (!st->h2->dead)
        evtimer_add(&st->stall, st->h2->c->w->to_h2_send);
    st->ready = 1;
    h2_schedule(st->h2);
}

static const struct gw_stream_vops vs_ops = {vs_output, vs_shutdown, vs_closed};

/* An answer its exchange left behind waited send_timeout on the client's window: reset. */
static void on_stall(evutil_socket_t fd, short what, void *arg)
{
    struct gw_h2s *st = arg;
    (void)fd, (void)what;
    if (st->sclosed)
        return;
    st->cut = 1;
    GW_METRIC_INC(&st->h2->c->w->metrics, h2_resets);
    st_reset(st, NGHTTP2_CANCEL);
    h2_schedule(st->h2);
}

static void on_vin_drained(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct gw_h2s *st = arg;
    if (info->n_deleted == 0)
        return;
    consume(st, evbuffer_get_length(buf) == 0 ? st->owed : info->n_deleted);
}

/* ------------------------------------------------------------------ streams */

static struct gw_h2s *h2s_new(struct gw_h2 *h2, int32_t id)
{
    struct gw_h2s *st = h2->spare;
    if (st) { /* a stream of this connection that ended: its buffers and timer kept */
        h2->spare = st->next;
        h2->n_spare--;
        struct evbuffer *data = st->data, *hdr = st->hdr, *extra = st->extra, *src = st->src;
        memset(st, 0, offsetof(struct gw_h2s, stall));
        memset(&st->method, 0, sizeof(*st) - offsetof(struct gw_h2s, method));
        st->data = data, st->hdr = hdr, st->extra = extra, st->src = src;
        st->h2 = h2;
        st->id = id;
        goto linked;
    }
    st = calloc(1, sizeof(*st));
    if (!st)
        return NULL;
    st->h2 = h2;
    st->id = id;
    evtimer_assign(&st->stall, h2->c->w->base, on_stall, st);
    st->data = evbuffer_new();
    st->hdr = evbuffer_new();
    st->extra = evbuffer_new();
    if (!st->data || !st->hdr || !st->extra) {
        if (st->data)
            evbuffer_free(st->data);
        if (st->hdr)
            evbuffer_free(st->hdr);
        if (st->extra)
            evbuffer_free(st->extra);
        free(st);
        return NULL;
    }
linked:
    st->next = h2->streams;
    if (h2->streams)
        h2->streams->prev = st;
    h2->streams = st;
    h2->n_streams++;
    return st;
}

static void h2s_destroy(struct gw_h2s *st)
{
    if (st->src)
        evbuffer_free(st->src);
    evbuffer_free(st->data);
    evbuffer_free(st->hdr);
    evbuffer_free(st->extra);
    free(st);
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
    st->path = st->authority = NULL;
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
static void h2s_maybe_free(struct gw_h2s *st)
{
    if (st->sclosed && !st->vc)
        h2s_free(st);
}

/* An answer of the gateway's own (an error, JSON) to a stream that gets no exchange. */
static void answer_error(struct gw_h2s *st, enum gw_err e)
{
    struct gw_h2 *h2 = st->h2;
    const struct gw_err_info *info = gw_err_info(e);
    GW_METRIC_INC(&h2->c->w->metrics, errors[e]);
    char body[256], status[4], clen[16];
    int blen = snprintf(body, sizeof(body), "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}\n",
                        info->code, info->message);
    status_digits(status, (unsigned)info->status);
    snprintf(clen, sizeof(clen), "%d", blen);
#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE}
    nghttp2_nv nv[] = {NV(":status", status), NV("content-type", "application/json"),
                       NV("content-length", clen), NV("cache-control", "no-store")};
#undef NV
    st->head_sent = st->resp_end = 1;
    int head = st->head_req;
    if (!head)
        evbuffer_add(st->data, body, (size_t)blen);
    nghttp2_data_provider prd = {.source = {.ptr = st}, .read_callback = data_read_cb};
    nghttp2_submit_response(h2->s, st->id, nv, 4, head ? NULL : &prd);
}

static void add_line(struct evbuffer *b, const char *name, size_t nl, const char *value, size_t vl)
{
    evbuffer_add(b, name, nl);
    evbuffer_add(b, ": ", 2);
    evbuffer_add(b, value, vl);
    evbuffer_add(b, "\r\n", 2);
}

/* The request's head is whole: it goes to a new exchange as an HTTP/1.1 request. */
static void begin_exchange(struct gw_h2s *st, int end_stream)
{
    struct gw_h2 *h2 = st->h2;
    struct gw_conn *c = h2->c;
    st->hdr_done = 1;
    if (st->too_big) {
        answer_error(st, GW_ERR_HEADERS_TOO_LARGE);
        return;
    }
    if (st->connect && !st->ws) {
        answer_error(st, st->protocol ? GW_ERR_NOT_IMPLEMENTED : GW_ERR_METHOD_NOT_ALLOWED);
        return;
    }
    if (!st->path || !st->method[0]) {
        answer_error(st, GW_ERR_BAD_REQUEST);
        return;
    }
    st->req_end = (unsigned)end_stream;
    struct evbuffer *head = h2->head;
    const char *m = st->ws ? "GET" : st->method;
    evbuffer_add(head, m, strlen(m));
    evbuffer_add(head, " ", 1);
    evbuffer_add(head, st->path, strlen(st->path));
    evbuffer_add(head, " HTTP/1.1\r\n", 11);
    if (st->authority)
        add_line(head, "host", 4, st->authority, strlen(st->authority));
    evbuffer_add_buffer(head, st->hdr);
    if (evbuffer_get_length(st->extra)) {
        evbuffer_add(head, "cookie: ", 8);
        evbuffer_add_buffer(head, st->extra);
        evbuffer_add(head, "\r\n", 2);
    }
    if (st->ws) {
        unsigned char nonce[16], key[32];
        RAND_bytes(nonce, sizeof(nonce));
        int kl = EVP_EncodeBlock(key, nonce, sizeof(nonce));
        evbuffer_add_printf(head,
                            "upgrade: websocket\r\nconnection: upgrade\r\n"
                            "sec-websocket-key: %.*s\r\n",
                            kl, key);
    } else if (!end_stream && !st->has_cl) {
        st->chunked = 1;
        evbuffer_add(head, "transfer-encoding: chunked\r\n", 28);
    }
    evbuffer_add(head, "\r\n", 2);
    struct gw_conn *vc = gw_conn_new_virtual(c, &vs_ops, st);
    if (!vc) {
        evbuffer_drain(head, evbuffer_get_length(head));
        answer_error(st, GW_ERR_OVERLOADED);
        return;
    }
    st->vc = vc;
    st->vin = vc->cs.in;
    evbuffer_add_cb(st->vin, on_vin_drained, st);
    gw_stream_v_input_buffer(&vc->cs, head); /* moves it: head is empty again */
    if (end_stream && st->chunked)
        gw_stream_v_input(&vc->cs, "0\r\n\r\n", 5);
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
            add_line(st->extra, n, nl, v, vl);
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
    add_line(st->hdr, n, nl, v, vl);
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

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *frame, void *arg)
{
    struct gw_h2 *h2 = arg;
    int end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (frame->hd.type == NGHTTP2_RST_STREAM && !h2->calm && reset_limited(h2)) {
        h2->calm = 1;
        nghttp2_session_terminate_session(s, NGHTTP2_ENHANCE_YOUR_CALM);
        return 0;
    }
    struct gw_h2s *st = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);
    if (!st)
        return 0;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
            begin_exchange(st, end);
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
        /* before the instance's 101: passed on when the tunnel starts (pump_head()) */
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
        if ((!st || !st->we_reset) && frame->rst_stream.error_code != NGHTTP2_NO_ERROR &&
            !h2->calm && reset_limited(h2)) {
            h2->calm = 1;
            nghttp2_session_terminate_session(s, NGHTTP2_ENHANCE_YOUR_CALM);
        }
        return 0;
    }
    if ((frame->hd.type != NGHTTP2_DATA && frame->hd.type != NGHTTP2_HEADERS) ||
        !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    if (st && !st->sclosed && !nghttp2_session_get_stream_remote_close(s, st->id)) {
        st_reset(st, NGHTTP2_NO_ERROR);
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
            pump_head(st);
            if (!st->head_sent && !st->cut && (!st->vc || st->shut)) {
                /* the exchange ended without an answer */
                st->cut = 1;
                st_reset(st, NGHTTP2_INTERNAL_ERROR);
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
            h2_schedule(h2); /* the loop's other connections first */
            break;
        }
    }
    /* Reading goes on while the output waits: what a client that does not read makes us
     * queue is bounded by nghttp2 (acks: max_outbound_ack, then GOAWAY; answers: streams and
     * windows), and the socket's output by buffer_high (send_cb). */
    if (!nghttp2_session_want_read(h2->s) && !nghttp2_session_want_write(h2->s))
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
        h2->final = 1;
        nghttp2_session_send(h2->s);
        h2_close(h2);
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
        nghttp2_session_terminate_session(h2->s, code);
        h2->final = 1; /* bounded: nghttp2 stopped queueing at its limits */
        nghttp2_session_send(h2->s);
        h2_close(h2);
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
    h2_schedule(h2);
}

static size_t on_h2_peek(struct gw_stream *cs, const char *data, size_t len, void *arg)
{
    struct gw_h2 *h2 = arg;
    (void)cs;
    h2_recv(h2, data, len);
    if (!h2->dead)
        h2_schedule(h2);
    return len;
}

static void on_h2_write(struct gw_stream *cs, void *arg)
{
    (void)cs;
    h2_schedule(arg);
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
                nghttp2_session_terminate_session(h2->s, NGHTTP2_NO_ERROR);
                h2->final = 1;
                nghttp2_session_send(h2->s);
                h2_close(h2);
                return;
            }
        }
        evtimer_add(&c->timer, c->w->to_header);
        return;
    }
    cm_usec_t idle = now - h2->idle_since;
    cm_usec_t limit = lim->keepalive_timeout;
    if (idle >= limit || h2->draining) {
        nghttp2_session_terminate_session(h2->s, NGHTTP2_NO_ERROR);
        h2->final = 1;
        nghttp2_session_send(h2->s);
        h2_close(h2);
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
    h2_schedule(h2);
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

static void settings_init(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    llhttp_settings_init(&resp_settings);
    resp_settings.on_body = on_resp_body;
    resp_settings.on_message_complete = on_resp_complete;
    resp_settings.on_header_field = on_trl_field;
    resp_settings.on_header_value = on_trl_value;
    resp_settings.on_header_field_complete = on_trl_end;
    resp_settings.on_header_value_complete = on_trl_end;
    llhttp_settings_init(&head_settings);
    head_settings.on_header_field = on_head_field;
    head_settings.on_header_value = on_head_value;
    head_settings.on_headers_complete = on_head_done;
}

void gw_h2_start(struct gw_conn *c, const char *data, size_t len)
{
    struct gw_worker *w = c->w;
    const struct gw_h2_config *hc = &w->gc->h2;
    settings_init();
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
    nghttp2_session_callbacks_set_send_data_callback(cb, send_data_cb);
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
