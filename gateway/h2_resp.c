/* HTTP/2: the codec's answers to a stream's exchange (gw_h2_down): its heads as HEADERS
 * straight from the instance's parsed head, its body as DATA and trailers, de-framed from
 * the instance's HTTP/1.1 framing (gateway/README.md "HTTP/2"). */
#include "gateway/h2_int.h"

#include <ctype.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/uio.h>

#include "gateway/conn_int.h"
#include "gateway/h1.h"
#include "gateway/metrics.h"
#include "gateway/worker.h"

/* ------------------------------------------------------------------ the answer's body */

/* One llhttp parser per answer (st->resp) frames its body as the instance framed it: the head
 * went out as HEADERS straight from the instance's parsed head (h2_head()), and the parser is
 * set to that head's framing by a head of our own that says only that (frame_as()). Fields
 * it reports after that are trailers. */

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

/* Fields: the framing head's are not looked at; after it, trailers. */
static int on_field(llhttp_t *p, const char *at, size_t len)
{
    struct gw_h2s *st = p->data;
    return st->head_sent ? trl_add(st, at, len) : 0;
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
    .on_header_value = on_field,
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
    gw_h2_schedule(st->h2);
}

/* Sets the answer's parser to frame a body as <h> says (or as a rewritten body of
 * <reframe_len> bytes when <rewrite>). 1 when no body follows after all. */
static int frame_as(struct gw_h2s *st, const struct gw_h1_head *h, int rewrite, size_t reframe_len)
{
    char head[96];
    int n;
    if (rewrite)
        n = snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\ncontent-length: %zu\r\n\r\n",
                     reframe_len);
    else if (h->chunked)
        n = snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
    else if (h->has_cl)
        n = snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\ncontent-length: %" PRIu64 "\r\n\r\n",
                     h->content_length);
    else /* up to the instance's close */
        n = snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\n\r\n");
    llhttp_init(&st->resp, HTTP_RESPONSE, &resp_settings);
    st->resp.data = st;
    st->msg_done = 0;
    llhttp_errno_t e = llhttp_execute(&st->resp, head, (size_t)n);
    return st->msg_done || (e != HPE_OK && e != HPE_PAUSED);
}

/* One more field of an answer's head into the connection's nv array; -1 when it is full. */
static int add_nv(struct gw_h2 *h2, const char *name, size_t nl, const char *value, size_t vl)
{
    if (h2->nv_n >= h2->nv_cap)
        return -1;
    h2->nv[h2->nv_n++] =
        (nghttp2_nv){(uint8_t *)name, (uint8_t *)value, nl, vl, NGHTTP2_NV_FLAG_NONE};
    return 0;
}

/* The gateway's own header lines ("name: value\r\n", lower-case names) into the nv array;
 * -1 when it is full. The lines stay where they are until the head is submitted. */
static int lines_nv(struct gw_h2 *h2, const char *p, size_t len)
{
    const char *end = p + len;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *colon = memchr(p, ':', (size_t)(end - p));
        if (!eol || !colon || colon > eol || eol == p || eol[-1] != '\r')
            return -1;
        const char *v = colon + 1;
        while (v < eol && *v == ' ')
            v++;
        if (!conn_specific(p, (size_t)(colon - p)) &&
            add_nv(h2, p, (size_t)(colon - p), v, (size_t)(eol - 1 - v)) < 0)
            return -1;
        p = eol + 1;
    }
    return 0;
}

/* Submits the final head in the nv array (and a body's data source unless <nobody>). */
static void submit_final(struct gw_h2s *st, int nobody)
{
    struct gw_h2 *h2 = st->h2;
    nghttp2_data_provider prd = {.source = {.ptr = st}, .read_callback = gw_h2_data_read_cb};
    if (nghttp2_submit_response(h2->s, st->id, h2->nv, h2->nv_n, nobody ? NULL : &prd) < 0)
        cut(st);
    gw_h2_schedule(h2);
}

/* ------------------------------------------------------------------ the codec's answers */

/* The instance's head <h>, rewritten as for any client (gw_h1_resp_drop(),
 * gw_h1_resp_fields()), as HEADERS: interim ones as they come, at most H2_MAX_INTERIM; a 101
 * only for an extended CONNECT, as its 200, after which the stream's DATA are a tunnel. */
static void h2_head(struct gw_conn *c, const struct gw_h1_head *h, const char *head,
                    size_t head_len)
{
    struct gw_h2s *st = c->cs.vctx;
    struct gw_h2 *h2 = st->h2;
    (void)head, (void)head_len;
    if (st->head_sent || st->sclosed || st->cut)
        return;
    unsigned code = (unsigned)h->status;
    int interim = code >= 100 && code < 200 && code != 101;
    if (code < 100 || code > 999 || (code == 101 && !st->ws) ||
        (interim && ++st->n_interim > H2_MAX_INTERIM)) {
        cut(st);
        return;
    }
    char status[4];
    status_digits(status, code == 101 ? 200 : code); /* RFC 8441: the CONNECT's success */
    h2->nv_n = 0;
    add_nv(h2, ":status", 7, status, 3);
    for (uint32_t i = 0; i < h->n_headers; i++) {
        const struct gw_h1_header *x = &h->headers[i];
        if (gw_h1_resp_drop(c, h, i) || conn_specific(x->name, x->name_len))
            continue;
        /* HTTP/2 names are lower case: the head's bytes are the instance's, read into our
         * buffers, and not used again once it is submitted */
        char *name = (char *)x->name;
        for (uint32_t k = 0; k < x->name_len; k++)
            name[k] = (char)tolower((unsigned char)name[k]);
        if (add_nv(h2, name, x->name_len, x->value, x->value_len) < 0) {
            cut(st);
            return;
        }
    }
    char fields[4096]; /* as HTTP/1 has them: CORS on every head, the rest on the final */
    size_t fl = gw_h1_resp_fields(c, h, fields, sizeof(fields));
    if (fl == (size_t)-1 || lines_nv(h2, fields, fl) < 0) {
        cut(st);
        return;
    }
    if (interim) {
        if (nghttp2_submit_headers(h2->s, NGHTTP2_FLAG_NONE, st->id, NULL, h2->nv, h2->nv_n, NULL) <
            0)
            cut(st);
        gw_h2_schedule(h2);
        return;
    }
    int nobody = 0;
    if (code == 101) {
        st->tunnel = 1;
        if (st->req_end) /* the client ended its side before the 101 */
            gw_stream_v_fail(&c->cs, GW_STREAM_EOF);
    } else {
        nobody = st->head_req || h->body_done || code == 204 || code == 304 ||
                 frame_as(st, h, c->rewrite, c->reframe_len);
    }
    st->head_sent = 1;
    if (nobody)
        st->resp_end = 1;
    submit_final(st, nobody);
}

static void h2_whole(struct gw_conn *c, const struct gw_h1_head *h, const char *data,
                     size_t head_len, size_t body_len)
{
    h2_head(c, h, data, head_len);
    if (body_len) {
        struct iovec iov = {(void *)(data + head_len), body_len};
        gw_stream_write(&c->cs, &iov, 1);
    }
    GW_XFER_OUT(c, body_len);
}

/* An answer of the gateway's own to <st>, whole (its body into the DATA queue at once). */
static void answer(struct gw_h2s *st, int status, const char *fields, size_t flen, const char *body,
                   size_t blen)
{
    struct gw_h2 *h2 = st->h2;
    if (st->head_sent || st->sclosed || st->cut)
        return;
    char digits[4];
    status_digits(digits, (unsigned)status);
    h2->nv_n = 0;
    add_nv(h2, ":status", 7, digits, 3);
    if (lines_nv(h2, fields, flen) < 0) {
        cut(st);
        return;
    }
    st->head_sent = st->resp_end = 1;
    int nobody = st->head_req || blen == 0;
    if (!nobody && evbuffer_add(st->data, body, blen) < 0) {
        cut(st);
        return;
    }
    submit_final(st, nobody);
}

static void h2_answer(struct gw_conn *c, int status, const char *fields, size_t flen,
                      const char *body, size_t blen, int close)
{
    (void)close; /* the stream ends with it; the connection goes on */
    answer(c->cs.vctx, status, fields, flen, body, blen);
}

const struct gw_down_ops gw_h2_down = {h2_head, h2_whole, h2_answer};

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
    struct gw_worker *w = st->h2->c->w;
    GW_METRIC_INC(&w->metrics, errors[e]);
    char body[256], fields[256];
    size_t blen = gw_err_body(e, body, sizeof(body));
    size_t fl = gw_err_fields(e, blen, w->gc->retry_after, fields, sizeof(fields));
    answer(st, gw_err_info(e)->status, fields, fl, body, blen);
}
