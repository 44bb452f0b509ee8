/* HTTP/2: the exchanges' answers (HTTP/1.1, as the exchange wrote them) read back into
 * HEADERS, DATA and trailers (gateway/README.md "HTTP/2"). */
#include "gateway/h2_int.h"

#include <ctype.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "gateway/conn_int.h"
#include "gateway/h1.h"
#include "gateway/metrics.h"
#include "gateway/worker.h"

/* ------------------------------------------------------------------ the answer, read back */

/* One llhttp parser per answer (st->resp) reads its head and frames its body. While the head
 * is read (whole, in one llhttp_execute() over contiguous bytes, so each field and value comes
 * in one callback) its fields go to the connection's nv array; after it, fields are trailers. */

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

/* Trailer bytes ("name\0value\0"... in st->hdr) kept up to limits.max_header_bytes; past it
 * the answer is cut (-1). */
static int trl_add(struct gw_h2s *st, const char *at, size_t len)
{
    if (evbuffer_get_length(st->hdr) + len > st->h2->c->w->gc->limits.max_header_bytes)
        return -1;
    return evbuffer_add(st->hdr, at, len) < 0 ? -1 : 0;
}

static int on_field(llhttp_t *p, const char *at, size_t len)
{
    struct gw_h2s *st = p->data;
    if (st->head_sent)
        return trl_add(st, at, len);
    st->h2->nv_name = at;
    st->h2->nv_name_len = len;
    return 0;
}

static int on_value(llhttp_t *p, const char *at, size_t len)
{
    struct gw_h2s *st = p->data;
    struct gw_h2 *h2 = st->h2;
    if (st->head_sent)
        return trl_add(st, at, len);
    if (conn_specific(h2->nv_name, h2->nv_name_len))
        return 0;
    if (h2->nv_n >= h2->nv_cap)
        return -1; /* more fields than the connection's array: the answer is cut */
    char *name = (char *)h2->nv_name; /* the head pulled up in its buffer, drained after */
    for (size_t i = 0; i < h2->nv_name_len; i++)
        name[i] = (char)tolower((unsigned char)name[i]);
    h2->nv[h2->nv_n++] =
        (nghttp2_nv){(uint8_t *)name, (uint8_t *)at, h2->nv_name_len, len, NGHTTP2_NV_FLAG_NONE};
    return 0;
}

static int on_field_end(llhttp_t *p)
{
    struct gw_h2s *st = p->data;
    return st->head_sent ? trl_add(st, "", 1) : 0;
}

static int on_resp_body(llhttp_t *p, const char *at, size_t len)
{
    struct gw_h2s *st = p->data;
    return evbuffer_add(st->data, at, len) < 0 ? -1 : 0;
}

static int on_resp_complete(llhttp_t *p)
{
    struct gw_h2s *st = p->data;
    st->msg_done = 1;
    return HPE_PAUSED;
}

static const llhttp_settings_t resp_settings = {
    .on_header_field = on_field,
    .on_header_value = on_value,
    .on_header_field_complete = on_field_end,
    .on_header_value_complete = on_field_end,
    .on_body = on_resp_body,
    .on_message_complete = on_resp_complete,
};

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

/* The answer cannot go on (a bad head, too many interim heads, a 101 nobody asked for). */
static void cut(struct gw_h2s *st)
{
    st->cut = 1;
    gw_h2_st_reset(st, NGHTTP2_INTERNAL_ERROR);
}

void gw_h2_pump_head(struct gw_h2s *st)
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
        llhttp_init(&st->resp, HTTP_RESPONSE, &resp_settings);
        st->resp.data = st;
        st->msg_done = 0;
        h2->nv_n = 1; /* [0]: :status */
        llhttp_errno_t e = head ? llhttp_execute(&st->resp, head, hlen) : HPE_INTERNAL;
        unsigned code = st->resp.status_code;
        if ((e != HPE_OK && e != HPE_PAUSED && e != HPE_PAUSED_UPGRADE) || code < 100 ||
            code > 999) {
            cut(st);
            return;
        }
        char status[4];
        status_digits(status, code);
        h2->nv[0] =
            (nghttp2_nv){(uint8_t *)":status", (uint8_t *)status, 7, 3, NGHTTP2_NV_FLAG_NONE};
        if (code >= 100 && code < 200 && code != 101) {
            if (++st->n_interim > H2_MAX_INTERIM) {
                cut(st);
                return;
            }
            nghttp2_submit_headers(h2->s, NGHTTP2_FLAG_NONE, st->id, NULL, h2->nv, h2->nv_n, NULL);
            evbuffer_drain(src, hlen);
            st_taken(st);
            continue;
        }
        if (code == 101) {
            if (!st->ws) {
                cut(st);
                return;
            }
            memcpy(status, "200", 4); /* RFC 8441: the CONNECT's success */
            st->tunnel = 1;
            if (st->req_end && st->vc) /* the client ended its side before the 101 */
                gw_stream_v_fail(&st->vc->cs, GW_STREAM_EOF);
        }
        /* from here on the parser frames the body (msg_done: the head said it has none) */
        st->head_sent = 1;
        int nobody = !st->tunnel && (st->head_req || st->msg_done || code == 204 || code == 304);
        if (nobody)
            st->resp_end = 1;
        nghttp2_data_provider prd = {.source = {.ptr = st}, .read_callback = gw_h2_data_read_cb};
        int rv = nghttp2_submit_response(h2->s, st->id, h2->nv, h2->nv_n, nobody ? NULL : &prd);
        evbuffer_drain(src, hlen);
        st_taken(st);
        if (rv < 0)
            cut(st);
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
            st->cut = 1;
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

ssize_t gw_h2_data_read_cb(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length,
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

int gw_h2_send_data_cb(nghttp2_session *s, nghttp2_frame *frame, const uint8_t *framehd,
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
    (void)frame; /* never padded: no select_padding callback */
    if (evbuffer_add(c->cs.out, framehd, 9) < 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    evbuffer_remove_buffer(st->data, c->cs.out, length);
    return 0;
}

/* An answer of the gateway's own (an error, JSON) to a stream that gets no exchange. */
void gw_h2_answer_error(struct gw_h2s *st, enum gw_err e)
{
    struct gw_h2 *h2 = st->h2;
    const struct gw_err_info *info = gw_err_info(e);
    GW_METRIC_INC(&h2->c->w->metrics, errors[e]);
    char body[256], status[4], clen[24], retry[24];
    size_t blen = gw_err_body(e, body, sizeof(body));
    status_digits(status, (unsigned)info->status);
    snprintf(clen, sizeof(clen), "%zu", blen);
    snprintf(retry, sizeof(retry), "%u", h2->c->w->gc->retry_after);
#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE}
    nghttp2_nv nv[] = {NV(":status", status), NV("content-type", "application/json"),
                       NV("content-length", clen), NV("cache-control", "no-store"),
                       NV("retry-after", retry)};
#undef NV
    st->head_sent = st->resp_end = 1;
    int head = st->head_req;
    if (!head)
        evbuffer_add(st->data, body, blen);
    nghttp2_data_provider prd = {.source = {.ptr = st}, .read_callback = gw_h2_data_read_cb};
    nghttp2_submit_response(h2->s, st->id, nv, info->retry ? 5 : 4, head ? NULL : &prd);
}
