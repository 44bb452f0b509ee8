/* The HTTP/1 heads the gateway writes for a proxied exchange: the request head to the
 * instance and the response head to the client, rewritten from theirs (unchanged header lines
 * copied in runs, hop-by-hop and our own dropped, X-Forwarded-*, x-berth-*, cookie and CORS
 * added), assembled on the stack; and the HTTP/1 codec's answers to the exchange
 * (gw_h1_down: a head, a whole response, an answer of the gateway's own). */
#include "gateway/conn_int.h"

#include <event2/buffer.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>

#include "common/httpd.h"
#include "gateway/metrics.h"
#include "gateway/worker.h"

/* A head is assembled in a stack buffer, then written from it (gw_stream_write) or added to
 * the output in one piece: it is a dozen pieces, and an evbuffer_add() each costs more than
 * copying them here. A head larger than the buffer spills to the output in order. */
struct hb {
    struct evbuffer *out;
    size_t n;
    int lost; /* no output, and a piece did not fit the buffer (gw_h1_resp_fields) */
    char buf[4096];
};

/* Not the buffer: a head is written over it from the start. */
static inline void hb_init(struct hb *b, struct evbuffer *out)
{
    b->out = out;
    b->n = 0;
    b->lost = 0;
}

static void hb_spill(struct hb *b)
{
    if (b->n && b->out) { /* no output: lines that fit the buffer only (gw_h1_resp_fields) */
        evbuffer_add(b->out, b->buf, b->n);
        b->n = 0;
    }
}

static void hb_add_slow(struct hb *b, const void *p, size_t len)
{
    hb_spill(b);
    if (!b->out && b->n + len > sizeof(b->buf)) {
        b->lost = 1;
        return;
    }
    if (len > sizeof(b->buf)) {
        evbuffer_add(b->out, p, len);
        return;
    }
    memcpy(b->buf + b->n, p, len);
    b->n += len;
}

/* Inline: a head is a dozen pieces, most of them literals the compiler copies in place. */
static inline void hb_add(struct hb *b, const void *p, size_t len)
{
    if (__builtin_expect(b->n + len > sizeof(b->buf), 0)) {
        hb_add_slow(b, p, len);
        return;
    }
    memcpy(b->buf + b->n, p, len);
    b->n += len;
}

#define HB_LIT(b, lit) hb_add((b), (lit), sizeof(lit) - 1)

static void hb_printf(struct hb *b, const char *fmt, ...)
{
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof(tmp)) {
        hb_add(b, tmp, (size_t)n);
        return;
    }
    hb_spill(b);
    if (!b->out) {
        b->lost = 1;
        return;
    }
    va_start(ap, fmt);
    evbuffer_add_vprintf(b->out, fmt, ap);
    va_end(ap);
}

static void add_run(struct hb *b, const char *from, const char *to)
{
    if (to > from)
        hb_add(b, from, (size_t)(to - from));
}

typedef int (*header_drop_cb)(const struct gw_conn *c, const struct gw_h1_head *h, uint32_t i);

/* Copies the header lines of <h> that <drop> keeps, as runs of consecutive lines (one add per
 * run, not per header). <head_end> is the end of the head (after its blank line). */
static void copy_headers(struct hb *out, const struct gw_conn *c, const struct gw_h1_head *h,
                         const char *head_end, header_drop_cb drop)
{
    const char *run = NULL;
    for (uint32_t i = 0; i < h->n_headers; i++) {
        const char *name = h->headers[i].name;
        if (drop(c, h, i)) {
            if (run)
                add_run(out, run, name);
            run = NULL;
        } else if (!run) {
            run = name;
        }
    }
    if (run)
        add_run(out, run, head_end - 2);
}

/* The Host an instance gets with upstream_host: instance: the address it listens on as it
 * sees it, "127.0.0.1:<app port>" for a sandbox (reached through its socket, a VM's
 * forward, or its host's instance relay) or a preview port, the upstream's "host:port" for a static one. Returns its length (< cap). */
static size_t upstream_authority(const struct gw_conn *c, char *buf, size_t cap)
{
    const char *a = c->addr;
    unsigned port = c->preview_port ? c->preview_port : c->route->tpl->app_port;
    /* memcmp of a constant length is inlined; strncmp is a call (callgrind: ~50 a request) */
    if (!c->preview_port && memcmp(a, "unix:", 5) != 0 && memcmp(a, "vm:", 3) != 0 &&
        memcmp(a, "relay:", 6) != 0) {
        if (memcmp(a, "tcp:", 4) == 0)
            a += 4;
        size_t n = strnlen(a, cap - 1);
        memcpy(buf, a, n);
        return n;
    }
    if (port == 0) {
        memcpy(buf, "localhost", 9);
        return 9;
    }
    memcpy(buf, "127.0.0.1:", 10);
    char d[5];
    int k = 0;
    do
        d[k++] = (char)('0' + port % 10);
    while ((port /= 10) && k < 5);
    for (int i = 0; i < k; i++)
        buf[10 + i] = d[k - 1 - i];
    return 10 + (size_t)k;
}

static int drop_request_header(const struct gw_conn *c, const struct gw_h1_head *h, uint32_t i)
{
    const struct gw_h1_header *x = &h->headers[i];
    return (x->cls & (GW_H1_C_HOP | GW_H1_C_XFP | GW_H1_C_XFH)) || (int)i == h->xff ||
           ((int)i == h->request_id && (x->value_len == 0 || x->value_len > 128)) ||
           ((int)i == h->host && !c->route->upstream_host_client);
}

static int drop_response_header(const struct gw_conn *c, const struct gw_h1_head *h, uint32_t i)
{
    const struct gw_h1_header *x = &h->headers[i];
    if (!x->cls)
        return 0;
    int switching = h->status == 101;
    return ((x->cls & GW_H1_C_HOP) && !(switching && (x->cls & GW_H1_C_UPGRADE))) ||
           (x->cls & GW_H1_C_BERTH) || ((c->dechunk || c->rewrite) && (x->cls & GW_H1_C_TE)) ||
           (c->rewrite && (x->cls & GW_H1_C_CL)) ||
           (c->route->n_cors_origins && (x->cls & GW_H1_C_CORS));
}

/* Exported for the HTTP/2 codec; the HTTP/1 head calls the static one (-fPIC: an exported
 * function is not inlined into copy_headers()). */
int gw_h1_resp_drop(const struct gw_conn *c, const struct gw_h1_head *h, uint32_t i)
{
    return drop_response_header(c, h, i);
}

/* Sends the rewritten request head to <us>: straight from the stack when nothing is queued
 * (no copy into the output buffer), else after what is. */
void gw_h1_write_request(struct gw_conn *c, const struct gw_h1_head *h, const char *head,
                         struct gw_stream *us)
{
    struct hb hb, *out = &hb;
    hb_init(&hb, us->out);
    const char *head_end = head + c->head_len;
    const char *first = h->n_headers ? h->headers[0].name : head_end - 2;
    const char *url = h->url;
    size_t url_len = h->url_len;
    int instance_host = !c->route->upstream_host_client;
    if (instance_host && url_len > 7 && gw_h1_ieq(url, "http://", 7)) {
        /* absolute-form names the client's host: the instance gets origin-form */
        const char *slash = memchr(url + 7, '/', url_len - 7);
        url_len = slash ? url_len - (size_t)(slash - url) : 1;
        url = slash ? slash : "/";
    }
    if (!c->http10 && url == h->url) {
        add_run(out, head, first); /* the request line as the client sent it */
    } else {
        hb_add(out, h->method, h->method_len);
        HB_LIT(out, " ");
        hb_add(out, url, url_len);
        HB_LIT(out, " HTTP/1.1\r\n");
    }
    copy_headers(out, c, h, head_end, drop_request_header);
    if (h->host >= 0) {
        HB_LIT(out, "x-forwarded-host: ");
        hb_add(out, h->headers[h->host].value, h->headers[h->host].value_len);
        HB_LIT(out, "\r\n");
    }
    if (instance_host) {
        char auth[GW_ADDR_MAX + 16];
        HB_LIT(out, "host: ");
        hb_add(out, auth, upstream_authority(c, auth, sizeof(auth)));
        HB_LIT(out, "\r\n");
    }
    HB_LIT(out, "x-forwarded-for: ");
    if (h->xff >= 0 && h->headers[h->xff].value_len) {
        hb_add(out, h->headers[h->xff].value, h->headers[h->xff].value_len);
        HB_LIT(out, ", ");
    }
    hb_add(out, c->peer, strlen(c->peer));
    if (c->secure)
        HB_LIT(out, "\r\nx-forwarded-proto: https\r\n");
    else
        HB_LIT(out, "\r\nx-forwarded-proto: http\r\n");
    if (!c->req_id_client) { /* the client's, usable, went with its header lines */
        HB_LIT(out, "x-request-id: ");
        hb_add(out, c->req_id, 16);
        HB_LIT(out, "\r\n");
    }
    if (c->http10 && h->host < 0 && !instance_host)
        HB_LIT(out, "host: berth\r\n");
    if (c->upgrade_req) {
        for (uint32_t i = 0; i < h->n_headers; i++)
            if (h->headers[i].cls & GW_H1_C_UPGRADE) {
                HB_LIT(out, "upgrade: ");
                hb_add(out, h->headers[i].value, h->headers[i].value_len);
                HB_LIT(out, "\r\n");
                break;
            }
        HB_LIT(out, "connection: upgrade\r\n");
    }
    HB_LIT(out, "\r\n");
    struct iovec iov = {hb.buf, hb.n};
    gw_stream_write(us, &iov, 1);
}

static inline void add_fields(struct gw_conn *c, const struct gw_h1_head *h, struct hb *out);

/* Builds the client's response head in <out> (spilling to its output only if it overflows). */
static void build_response_head(struct gw_conn *c, const struct gw_h1_head *h, const char *head,
                                size_t head_len, struct hb *out)
{
    const char *head_end = head + head_len;
    const char *first = h->n_headers ? h->headers[0].name : head_end - 2;
    if (h->http_major == 1 && h->http_minor == 1) {
        add_run(out, head, first);
    } else {
        hb_printf(out, "HTTP/1.1 %d ", h->status);
        hb_add(out, h->reason, h->reason_len);
        HB_LIT(out, "\r\n");
    }
    int switching = h->status == 101;
    copy_headers(out, c, h, head_end, drop_response_header);
    add_fields(c, h, out);
    if (switching)
        HB_LIT(out, "connection: upgrade\r\n");
    else if (h->status >= 200 && (c->close_after || !c->req_keepalive))
        HB_LIT(out, "connection: close\r\n");
    else if (h->status >= 200 && c->http10)
        HB_LIT(out, "connection: keep-alive\r\n");
    HB_LIT(out, "\r\n");
}

/* The lines the gateway adds to a response head <h> (any protocol): the length of a rewritten
 * body, x-berth-*, the cookie it issues, CORS. */
static inline void add_fields(struct gw_conn *c, const struct gw_h1_head *h, struct hb *out)
{
    struct gw_worker *w = c->w;
    int switching = h->status == 101;
    if (c->rewrite)
        hb_printf(out, "content-length: %zu\r\n", c->reframe_len);
    /* 101 too: a WebSocket opened with no_key: issue must learn its cookie (browsers store
     * cookies of the handshake answer), or every connection makes a session nobody can
     * reach again. */
    if (w->gc->expose_headers && (h->status >= 200 || switching)) {
        HB_LIT(out, "x-berth-instance: ");
        hb_add(out, c->instance, strlen(c->instance));
        HB_LIT(out, "\r\n");
        if (c->kind == KEY_SID) {
            HB_LIT(out, "x-berth-session: ");
            hb_add(out, c->key, c->key_len);
            HB_LIT(out, "\r\n");
        }
    }
    if (c->issue_cookie && (h->status >= 200 || switching))
        hb_printf(out, "set-cookie: %s=%s; Path=/; HttpOnly; SameSite=Lax%s\r\n", c->route->cookie,
                  c->key, c->secure ? "; Secure" : "");
    if (c->cors) {
        char buf[512];
        hb_add(out, buf, gw_cors_headers(c, buf, sizeof(buf)));
        HB_LIT(out, "vary: origin\r\n");
    }
}

size_t gw_h1_resp_fields(struct gw_conn *c, const struct gw_h1_head *h, char *buf, size_t cap)
{
    struct hb hb;
    hb_init(&hb, NULL); /* ~1 KB at most: instance id, session key, cookie, CORS (< 512) */
    add_fields(c, h, &hb);
    if (hb.lost || hb.n > cap)
        return (size_t)-1;
    memcpy(buf, hb.buf, hb.n);
    return hb.n;
}

/* ------------------------------------------------------------------ the HTTP/1 codec's answers */

static void h1_head(struct gw_conn *c, const struct gw_h1_head *h, const char *head,
                    size_t head_len)
{
    struct hb hb;
    hb_init(&hb, c->cs.out);
    build_response_head(c, h, head, head_len, &hb);
    hb_spill(&hb);
}

/* A whole response (the head at <data>, then <body_len> bytes of body) goes to the client in
 * one writev: the head rewritten on the stack, the body straight from where it was read. A
 * Content-Length body has no framing to check: it is counted, not run through llhttp. */
static void h1_whole(struct gw_conn *c, const struct gw_h1_head *h, const char *data,
                     size_t head_len, size_t body_len)
{
    struct hb hb;
    hb_init(&hb, c->cs.out);
    build_response_head(c, h, data, head_len, &hb);
    struct iovec iov[2] = {{hb.buf, hb.n}, {(void *)(data + head_len), body_len}};
    gw_stream_write(&c->cs, iov, body_len ? 2 : 1);
    GW_XFER_OUT(c, body_len);
}

static void h1_answer(struct gw_conn *c, int status, const char *fields, size_t flen,
                      const char *body, size_t blen, int close)
{
    struct hb hb;
    hb_init(&hb, c->cs.out);
    hb_printf(&hb, "HTTP/1.1 %d %s\r\n", status, cm_http_reason(status));
    hb_add(&hb, fields, flen);
    if (close)
        HB_LIT(&hb, "connection: close\r\n");
    HB_LIT(&hb, "\r\n");
    if (blen && !c->head_method)
        hb_add(&hb, body, blen);
    hb_spill(&hb);
}

const struct gw_down_ops gw_h1_down = {h1_head, h1_whole, h1_answer};
