#include "gateway/conn.h"
#include "gateway/conn_int.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/listener.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common/config.h"
#include "common/httpd.h"
#include "common/key.h"
#include "common/log.h"
#include "common/redis.h"
#include "common/store.h"
#include "gateway/activity.h"
#include "gateway/cache.h"
#include "gateway/claim.h"
#include "gateway/config.h"
#include "gateway/errors.h"
#include "gateway/h1.h"
#include "gateway/rewrite.h"
#include "gateway/skey.h"
#include "gateway/stream.h"
#include "gateway/upstream.h"
#include "gateway/worker.h"

/* The longest Host taken (a DNS name's 253 bytes, a port, IPv6 brackets): it goes upstream in
 * X-Forwarded-Host (and, with upstream_host: client, as Host too), and the CDP rewrite puts it
 * in every URL it rewrites. */
#define GW_HOST_MAX 261


static void aux_reset(struct gw_conn *c)
{
    if (c->aux) {
        evbuffer_free(c->aux);
        c->aux = NULL;
    }
    if (c->aux_head) {
        evbuffer_free(c->aux_head);
        c->aux_head = NULL;
    }
    c->sniff = c->rewrite = c->rewrite_overflow = 0;
    if (c->host) {
        free(c->host);
        c->host = NULL;
    }
}

/* The pending request head: c->head_len bytes, in the loop's slot or at the start of the
 * input. */
static const char *head_data(struct gw_conn *c)
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
static void begin_exchange(struct gw_conn *c, struct gw_h1_head *h, int rc);

static void relay_req_body(struct gw_conn *c);

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
        if (c->head_timer) {
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
    arm_timer(c, c->w->to_linger);
    gw_stream_flush(&c->cs); /* the write callback half-closes once the output is out */
    if (evbuffer_get_length(c->cs.out) == 0 && !c->shut) {
        c->shut = 1;
        shutdown(c->cs.fd, SHUT_WR);
    }
}

static void end_stream(struct gw_conn *c)
{
    if (c->in_stream) {
        c->in_stream = 0;
        GW_METRIC_ADD(&c->w->metrics, streams_active, -1);
    }
}


void gw_conn_free(struct gw_conn *c)
{
    struct gw_worker *w = c->w;
    if (c->unproven) /* the client left before an answer that starts its session */
        gw_mcp_release_unused(c, "client gone");
    end_stream(c);
    if (c->claim)
        gw_claim_cancel(c->claim);
    if (c->up)
        gw_upconn_release(c->up, 0);
    if (c->op)
        c->op->c = NULL; /* its reply frees it */
    aux_reset(c);
    if (c->head_slot)
        gw_worker_slot_put(w, c->head_slot);
    evtimer_del(&c->timer);
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
        w->accepting = 1;
        evconnlistener_enable(w->listener);
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
    char body[256];
    int blen = snprintf(body, sizeof(body), "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}\n",
                        info->code, info->message);
    struct evbuffer *out = c->cs.out;
    evbuffer_add_printf(out,
                        "HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                        "content-length: %d\r\ncache-control: no-store\r\n",
                        info->status, cm_http_reason(info->status), blen);
    if (e == GW_ERR_NO_CAPACITY || e == GW_ERR_STORE_UNAVAILABLE || e == GW_ERR_OVERLOADED)
        evbuffer_add_printf(out, "retry-after: %u\r\n", w->gc->retry_after);
    if (w->gc->expose_headers && c->key_len && c->kind == KEY_SID) {
        evbuffer_add(out, "x-berth-session: ", 17);
        evbuffer_add(out, c->key, c->key_len);
        evbuffer_add(out, "\r\n", 2);
    }
    if (c->cors) {
        char cors[512];
        evbuffer_add(out, cors, gw_cors_headers(c, cors, sizeof(cors)));
        evbuffer_add(out, "vary: origin\r\n", 14);
    }
    if (close)
        evbuffer_add(out, "connection: close\r\n", 19);
    evbuffer_add(out, "\r\n", 2);
    if (!c->head_method)
        evbuffer_add(out, body, (size_t)blen);
    gw_conn_answered(c, info->status, close);
}

/* Ends an exchange the gateway answered itself: the connection closes, or waits for (or
 * goes on with) the next request. */
void gw_conn_answered(struct gw_conn *c, int status, int close)
{
    struct gw_worker *w = c->w;
    c->status = status;
    if (c->t_start)
        gw_metrics_response(&w->metrics, status, cm_now_mono() - c->t_start);
    end_stream(c);
    if (close) {
        gw_conn_begin_close(c);
        return;
    }
    gw_stream_flush(&c->cs);
    enter_idle(c);
    c->t_start = 0;
    gw_stream_read_enable(&c->cs);
    if (evbuffer_get_length(c->cs.in)) {
        c->state = CS_HEAD;
        process_head(c);
    }
}

/* ------------------------------------------------------------------ activity */

void gw_conn_touch_streams(struct gw_worker *w)
{
    for (struct gw_conn *c = w->conns; c; c = c->next)
        if ((c->state == CS_PROXY || c->state == CS_TUNNEL) && c->instance[0])
            gw_activity_touch(w, c->hash);
}

/* ------------------------------------------------------------------ request head */

/* Parses the head of c->head_len bytes at the start of the input: with gw_h1_scan() when it
 * has the common shape (no body) and <try_scan> (0: the caller's scan of these bytes already
 * deferred), else with llhttp, which then frames the body in c->req. */
static int parse_current_head(struct gw_conn *c, struct gw_h1_head *h, int try_scan)
{
    struct gw_worker *w = c->w;
    const char *data = head_data(c);
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

/* Offset of the "\r\n\r\n" ending the head at the start of <in> (<len> bytes), searching from
 * byte <scan> (what earlier calls searched, less 3) and no further than a head of <max> bytes
 * can reach; -1 if not there. The first bytes are made contiguous (nothing to do when the head
 * arrived in one read): evbuffer_search() costs several times more. */
static ev_ssize_t head_end(struct evbuffer *in, size_t len, size_t scan, size_t max)
{
    size_t n = len < max + 4 ? len : max + 4;
    size_t from = scan > 3 ? scan - 3 : 0;
    if (from >= n)
        return -1;
    const char *data = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
    if (!data)
        return -1;
    /* From one line end to the next with memchr: a head has a handful of lines, and glibc's
     * memmem (two-way) cost more than the whole llhttp parse of a small head. */
    const char *end = data + n;
    for (const char *p = data + from; p < end && (p = memchr(p, '\n', (size_t)(end - p))); p++)
        if (p - data >= 3 && p[-1] == '\r' && p[-2] == '\n' && p[-3] == '\r')
            return (ev_ssize_t)(p - 3 - data);
    return -1;
}

static int bearer_ok(const struct gw_conn *c, const struct gw_h1_head *h)
{
    if (h->authorization < 0)
        return 0;
    const struct gw_h1_header *a = &h->headers[h->authorization];
    const char *v = a->value;
    size_t n = a->value_len;
    gw_h1_trim(&v, &n);
    if (n < 8 || strncasecmp(v, "bearer ", 7) != 0)
        return 0;
    char key[256];
    v += 7, n -= 7;
    gw_h1_trim(&v, &n);
    if (n == 0 || n >= sizeof(key))
        return 0;
    memcpy(key, v, n);
    key[n] = '\0';
    const struct cm_tenant *t = cm_config_tenant_by_key(c->w->gc->common, key);
    return t && strcmp(t->name, c->route->tenant) == 0;
}

static void process_head(struct gw_conn *c)
{
    struct gw_worker *w = c->w;
    const struct gw_limits *lim = &w->gc->limits;
    struct evbuffer *in = c->cs.in;
    size_t len = evbuffer_get_length(in);
    if (len == 0)
        return;
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
                             : head_end(in, len, c->scan, lim->max_header_bytes);
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
    int rc = scanned ? GW_H1_OK : parse_current_head(c, &h, !first_data || c->head_len > first);
    begin_exchange(c, &h, rc);
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
    begin_exchange(c, &h, GW_H1_OK);
    return len;
}

/* The request head of c->head_len bytes was found (parsed into <h> if <rc> is GW_H1_OK):
 * routes the exchange. */
static void begin_exchange(struct gw_conn *c, struct gw_h1_head *h, int rc)
{
    struct gw_worker *w = c->w;
    c->head_timer = 0; /* the timer, if armed, is now a lazy keep-alive one (see on_timer) */
    c->t_start = cm_now_mono();
    c->req_done = c->resp_head_done = c->close_after = c->eof_body = 0;
    c->retried = c->reclaimed = 0;
    c->from_cache = c->issue_cookie = c->body_too_large = c->dechunk = 0;
    c->head_pending = 1; /* every error path from here on drains the head */
    c->kind = KEY_SID;
    c->had_mcp_id = c->is_delete = c->is_get = c->cdp_path = 0;
    c->alias_pending = c->alias_done = c->body_alias = 0;
    c->used_auto = c->released = 0;
    c->keyless_new = c->unproven = 0;
    c->cors = 0;
    c->held = 0;
    aux_reset(c);
    c->body_bytes = 0;
    c->key_len = 0;
    c->req_keepalive = 0;
    c->instance[0] = '\0';
    GW_METRIC_INC(&w->metrics, requests);
    c->in_stream = 1;
    GW_METRIC_INC(&w->metrics, streams_active);
    if (rc != GW_H1_OK) {
        gw_conn_send_error(c, rc == GW_H1_TOO_MANY  ? GW_ERR_HEADERS_TOO_LARGE
                      : rc == GW_H1_CONNECT ? GW_ERR_METHOD_NOT_ALLOWED
                                            : GW_ERR_BAD_REQUEST,
                   1);
        return;
    }
    c->req_keepalive = h->keep_alive;
    c->req_done = h->body_done;
    c->req_chunked = h->chunked && !h->body_done;
    if (c->req_chunked)
        gw_h1_chunked_init(&c->chunk, (uint32_t)w->gc->limits.max_chunk_ext_bytes,
                           (uint32_t)w->gc->limits.max_header_bytes);
    c->head_method = h->method_id == HTTP_HEAD;
    c->http10 = h->http_major == 1 && h->http_minor == 0;
    c->upgrade_req = h->upgrade;
    if (h->http_major != 1 || (h->host < 0 && !c->http10)) {
        gw_conn_send_error(c, GW_ERR_BAD_REQUEST, 1);
        return;
    }
    const char *host = h->host >= 0 ? h->headers[h->host].value : NULL;
    size_t host_len = h->host >= 0 ? h->headers[h->host].value_len : 0;
    const char *path = h->url;
    size_t path_len = h->url_len;
    /* absolute-form "http://host/path": route on its path */
    if (path_len > 7 && gw_h1_ieq(path, "http://", 7)) {
        const char *slash = memchr(path + 7, '/', path_len - 7);
        path_len = slash ? path_len - (size_t)(slash - path) : 1;
        path = slash ? slash : "/";
    }
    if (host_len > GW_HOST_MAX) {
        gw_conn_send_error(c, GW_ERR_BAD_REQUEST, 1);
        return;
    }
    c->route = gw_config_route(w->gc, host, host_len, path, path_len);
    if (!c->route) {
        gw_conn_send_error(c, GW_ERR_NOT_FOUND, 0);
        return;
    }
    if ((c->route->cors_preflight && h->method_id == HTTP_OPTIONS) || c->route->n_cors_origins) {
        if (gw_cors_request(c, h)) /* a preflight: answered here, no session touched */
            return;
    }
    if (h->has_cl && h->content_length > c->route->max_body) {
        gw_conn_send_error(c, GW_ERR_BODY_TOO_LARGE, 1);
        return;
    }
    if (c->route->auth && !bearer_ok(c, h)) {
        gw_conn_send_error(c, GW_ERR_UNAUTHORIZED, 0);
        return;
    }
    const char *key;
    size_t key_len;
    int from_cookie = 0;
    int kr;
    c->preview_port = 0;
    uint16_t pport;
    if (c->route->preview_domain &&
        gw_config_preview(c->route, host, host_len, &pport, &key, &key_len)) {
        /* <port>-<session>.<domain>: a person's browser opening an app in the sandbox */
        c->preview_port = pport;
        kr = cm_key_valid(key, key_len) ? GW_SKEY_FOUND : GW_SKEY_INVALID;
    } else {
        kr = gw_skey_find(c->route, h, &key, &key_len, &from_cookie);
    }
    if (kr == GW_SKEY_INVALID) {
        gw_conn_send_error(c, GW_ERR_INVALID_SESSION_KEY, 0);
        return;
    }
    c->is_delete = h->method_id == HTTP_DELETE;
    c->is_get = h->method_id == HTTP_GET;
    const char *mcp_id = NULL;
    size_t mcp_len = 0;
    if (c->route->mcp) {
        for (uint32_t i = 0; i < h->n_headers; i++) {
            if (!(h->headers[i].cls & GW_H1_C_MCP))
                continue;
            if (mcp_id) { /* two: the gateway and the server may each take another one */
                gw_conn_send_error(c, GW_ERR_INVALID_SESSION_KEY, 0);
                return;
            }
            mcp_id = h->headers[i].value;
            mcp_len = h->headers[i].value_len;
            gw_h1_trim(&mcp_id, &mcp_len);
        }
    }
    c->had_mcp_id = mcp_id != NULL;
    if (c->route->cdp_rewrite && (c->is_get || h->method_id == HTTP_PUT) && path_len >= 5 &&
        memcmp(path, "/json", 5) == 0 &&
        (path_len == 5 || path[5] == '/' || path[5] == '?') && host_len) {
        c->cdp_path = 1;
        c->host = strndup(host, host_len);
    }
    const char *qid = NULL;
    size_t qid_len = 0;
    if (kr == GW_SKEY_NONE && mcp_id) {
        /* MCP Streamable HTTP: the server's id names an alias of the session. */
        if (!cm_key_valid(mcp_id, mcp_len)) {
            gw_conn_send_error(c, GW_ERR_INVALID_SESSION_KEY, 0);
            return;
        }
        c->kind = KEY_MCP;
        key = mcp_id;
        key_len = mcp_len;
    } else if (kr == GW_SKEY_NONE && c->route->legacy_sse && memchr(h->url, '?', h->url_len) &&
               gw_skey_query((const char *)memchr(h->url, '?', h->url_len) + 1,
                             h->url_len - (size_t)((const char *)memchr(h->url, '?', h->url_len) -
                                                  h->url) - 1,
                             &qid, &qid_len)) {
        /* Legacy MCP HTTP+SSE: POST /messages?sessionId=... */
        if (!cm_key_valid(qid, qid_len)) {
            gw_conn_send_error(c, GW_ERR_INVALID_SESSION_KEY, 0);
            return;
        }
        c->kind = KEY_SSE;
        key = qid;
        key_len = qid_len;
    } else if (kr == GW_SKEY_NONE) {
        switch (c->route->no_key) {
        case GW_NO_KEY_REJECT:
            gw_conn_send_error(c, GW_ERR_SESSION_KEY_REQUIRED, 0);
            return;
        case GW_NO_KEY_ISSUE:
            if (cm_random_id(c->auto_key) < 0) {
                gw_conn_send_error(c, GW_ERR_INTERNAL, 1);
                return;
            }
            c->issue_cookie = c->route->cookie != NULL;
            c->keyless_new = 1;
            break;
        case GW_NO_KEY_NEW:
            /* Once the connection's session became an MCP session (its server minted an
             * Mcp-Session-Id), a keyless request is another client's initialize on a pooled
             * connection: it gets a session of its own, so that one session's DELETE cannot
             * end the other. */
            if (!c->auto_key[0] || c->auto_is_mcp) {
                if (cm_random_id(c->auto_key) < 0) {
                    gw_conn_send_error(c, GW_ERR_INTERNAL, 1);
                    return;
                }
                c->keyless_new = 1;
            }
            c->auto_is_mcp = 0;
            c->used_auto = 1;
            break;
        }
        key = c->auto_key;
        key_len = CM_HASH_HEX_LEN;
    }
    memcpy(c->key, key, key_len);
    c->key[key_len] = '\0';
    c->key_len = (unsigned)key_len;
    c->hash = cm_key_hash(c->route->tenant, gw_conn_key_source(c->kind), c->key, key_len);
    c->hash_hex[0] = '\0';
    c->session = c->hash;
    c->session_hex[0] = '\0';

    struct gw_cache_entry *e = gw_cache_get(w->cache, c->hash);
    /* A fresh entry is used as is. A stale one too: while Redis is away (DESIGN.md section 7:
     * bound sessions keep working without the store), and otherwise while a background check
     * with Redis confirms it, so the request never waits for that round trip (invalidations
     * are pushed anyway; cache_ttl only bounds how long a missed one can matter). */
    if (e && e->expires <= c->t_start && !e->refreshing &&
        cm_redis_state(w->redis) == CM_REDIS_CONNECTED &&
        /* another loop's touch confirmed it lately (within half a cache_ttl): no lookup */
        !gw_activity_confirmed_elsewhere(w, e, c->t_start, w->gc->cache_ttl / 2))
        gw_binding_refresh(c, e);
    if (e) {
        memcpy(c->instance, e->instance, sizeof(c->instance));
        memcpy(c->addr, e->addr, sizeof(c->addr));
        c->session = e->session;
        c->session_hex[0] = '\0';
        c->from_cache = 1;
        GW_METRIC_INC(&w->metrics, claims[GW_CLAIM_CACHED]);
        gw_activity_touch_entry(w, e);
        gw_conn_forward(c, h);
        return;
    }
    gw_binding_claim(c);
}

/* ------------------------------------------------------------------ forwarding */

static void on_up_read(struct gw_stream *us, void *arg);
static size_t on_up_peek(struct gw_stream *us, const char *data, size_t len, void *arg);
static void on_up_write(struct gw_stream *us, void *arg);
static void on_up_event(struct gw_stream *us, short what, void *arg);

/* Sends the request to c->addr. <parsed> is the head parsed in this same callback (its slices
 * are still valid), or NULL to parse it again from the input (after a claim or a retry, when the
 * input buffer may have been rearranged). */
void gw_conn_forward(struct gw_conn *c, struct gw_h1_head *parsed)
{
    struct gw_worker *w = c->w;
    const struct gw_limits *lim = &w->gc->limits;
    int reused = 0, err = 0;
    if (c->preview_port) {
        /* The agent's ports socket sits next to its app socket; the pool key carries the
         * port, and a new connection starts with the agent's port selection line. */
        char addr[GW_ADDR_MAX + 8];
        size_t al = strlen(c->addr);
        if (al > 9 && strncmp(c->addr, "unix:", 5) == 0 &&
            strcmp(c->addr + al - 9, "/app.sock") == 0)
            snprintf(addr, sizeof(addr), "%.*s/ports.sock@%u", (int)(al - 9), c->addr,
                     c->preview_port);
        else
            snprintf(addr, sizeof(addr), "%s@%u", c->addr, c->preview_port);
        c->up = gw_upstream_get(w->ups, addr, &reused, &err);
    } else {
        c->up = gw_upstream_get(w->ups, c->addr, &reused, &err);
    }
    if (!c->up) {
        gw_binding_unreachable(c);
        return;
    }
    c->up_reused = (unsigned)reused;
    c->up_connected = (unsigned)reused;
    struct gw_stream *us = gw_upconn_stream(c->up);
    gw_stream_setcb(us, on_up_read, on_up_write, on_up_event, c);
    gw_stream_set_peek(us, on_up_peek);
    gw_stream_set_watermarks(us, lim->buffer_high, lim->buffer_low);
    if (c->req_done) {
        gw_stream_set_timeouts(us, w->to_response, reused ? NULL : w->to_connect);
    } else {
        /* A body follows: response_timeout runs from its end (request_sent()); until then
         * each side's progress is bounded by stream_idle_timeout, the client's sending and
         * the instance's taking it (a long upload at a slow, steady rate is fine). */
        gw_stream_set_timeouts(us, NULL, reused ? w->to_stream_idle : w->to_connect);
        gw_stream_set_timeouts(&c->cs, w->to_stream_idle, NULL);
    }
    gw_stream_read_enable(us);

    struct gw_h1_head h;
    if (!parsed) {
        if (parse_current_head(c, &h, 1) != GW_H1_OK) { /* parsed fine before: cannot happen */
            gw_conn_send_error(c, GW_ERR_INTERNAL, 1);
            return;
        }
        parsed = &h;
    }
    gw_h1_write_request(c, parsed, head_data(c), us);
    c->state = CS_PROXY;
    c->rscan = 0;
    c->resp_deferred = 0;
    c->resp_head_done = 0;
    c->paused_client = c->paused_up = 0;
    if (c->req_done) {
        /* No body: keep the head so that a stale pooled connection or a stale cached binding
         * can be retried transparently. */
        c->head_pending = 1; /* the head went out (or waits for the connect) above */
        return;
    }
    gw_conn_drop_pending_head(c); /* the body follows it in the input */
    c->req.settings = (void *)&w->req_body_settings;
    c->req.data = c;
    relay_req_body(c);
}

/* Runs <len> bytes of a message body through <p> (its body callbacks see them): returns how
 * many belong to the message, fewer than <len> when it ended in them (*ended = 1: a callback
 * paused the parser), or -1 with llhttp's error in *err. */
static ssize_t body_step(llhttp_t *p, const char *data, size_t len, int *ended,
                         llhttp_errno_t *err)
{
    llhttp_errno_t e = llhttp_execute(p, data, len);
    *ended = 0;
    *err = e;
    if (e == HPE_PAUSED) {
        *ended = 1;
        return llhttp_get_error_pos(p) - data;
    }
    return e == HPE_OK ? (ssize_t)len : -1;
}

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

static int on_resp_body(llhttp_t *p, const char *at, size_t len)
{
    struct gw_conn *c = p->data;
    if (c->rewrite) {
        if (evbuffer_get_length(c->aux) + len > c->w->gc->limits.rewrite_max_body) {
            c->rewrite_overflow = 1;
            return -1;
        }
        return evbuffer_add(c->aux, at, len) < 0 ? -1 : 0;
    }
    if (c->dechunk)
        evbuffer_add(c->cs.out, at, len);
    if (c->sniff)
        return gw_mcp_sniff(c, at, len);
    return 0;
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
            cm_log_info("conn", "bad chunked request body session=%s", gw_conn_hash_hex(c));
            gw_conn_send_error(c, GW_ERR_BAD_REQUEST, 1);
            return -1;
        }
        body = (size_t)k;
    }
    ssize_t used = body_step(&c->req, data, body, &ended, &e);
    if (used < 0) {
        cm_log_info("conn", "bad request body session=%s err=%s", gw_conn_hash_hex(c),
                    llhttp_errno_name(e));
        gw_conn_send_error(c, c->body_too_large ? GW_ERR_BODY_TOO_LARGE : GW_ERR_BAD_REQUEST, 1);
        return -1;
    }
    if (c->req_chunked && (ended != gw_h1_chunked_done(&c->chunk) || (size_t)used != body)) {
        /* the two disagree on where the body ends: neither reading is forwarded */
        cm_log_warn("conn", "chunked body framed differently by llhttp session=%s", gw_conn_hash_hex(c));
        gw_conn_send_error(c, GW_ERR_BAD_REQUEST, 1);
        return -1;
    }
    if (ended)
        request_sent(c);
    return used;
}

static void relay_req_body(struct gw_conn *c)
{
    struct gw_worker *w = c->w;
    struct evbuffer *in = c->cs.in;
    struct evbuffer *out = gw_upconn_stream(c->up)->out;
    while (!c->req_done && evbuffer_get_length(in) > 0) {
        if (evbuffer_get_length(out) >= w->gc->limits.buffer_high) {
            gw_stream_flush(gw_upconn_stream(c->up)); /* waits by itself while connecting */
            if (evbuffer_get_length(out) >= w->gc->limits.buffer_high) {
                /* EV_WRITE is armed (or the connect pending): on_up_write resumes */
                c->paused_client = 1;
                gw_stream_read_disable(&c->cs);
                return;
            }
        }
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        ssize_t used = req_body_step(c, v.iov_base, v.iov_len);
        if (used < 0)
            return;
        evbuffer_remove_buffer(in, out, (size_t)used);
        GW_METRIC_ADD(&w->metrics, bytes_in, used);
    }
    gw_stream_flush(gw_upconn_stream(c->up));
}

/* Request body bytes read into the client's empty input (on_client_peek): framed by llhttp
 * where they were read and sent to the instance from there, so the body is never copied into
 * the input buffer (only what the instance's socket refuses is copied, to its output). Takes
 * the body's bytes; what follows the body (a pipelined request) is left to the input. */
static size_t pass_req_body(struct gw_conn *c, const char *data, size_t len)
{
    struct gw_worker *w = c->w;
    struct gw_stream *us = gw_upconn_stream(c->up);
    ssize_t used = req_body_step(c, data, len);
    if (used < 0)
        return len; /* answered; <c> may be gone */
    if (used) {
        struct iovec iov = {(void *)data, (size_t)used};
        gw_stream_write(us, &iov, 1);
        GW_METRIC_ADD(&w->metrics, bytes_in, (size_t)used);
    }
    if (!c->req_done && evbuffer_get_length(us->out) >= w->gc->limits.buffer_high) {
        c->paused_client = 1; /* EV_WRITE is armed (or the connect pending): on_up_write resumes */
        gw_stream_read_disable(&c->cs);
    }
    return (size_t)used;
}

/* ------------------------------------------------------------------ responses */

static void finish_exchange(struct gw_conn *c)
{
    struct gw_worker *w = c->w;
    gw_stream_flush(&c->cs);
    gw_conn_drop_pending_head(c);
    int reusable = c->req_done && c->resp_keepalive && !c->upgrade_req;
    if (!c->req_done)
        c->close_after = 1;
    gw_upconn_release(c->up, reusable);
    c->up = NULL;
    end_stream(c);
    aux_reset(c);
    if (c->close_after || !c->req_keepalive || w->stopping) {
        gw_conn_begin_close(c);
        return;
    }
    enter_idle(c);
    c->t_start = 0;
    c->paused_client = c->paused_up = 0;
    gw_stream_read_enable(&c->cs);
    if (evbuffer_get_length(c->cs.in)) {
        c->state = CS_HEAD;
        process_head(c);
    }
}

/* The final response head went to the client: the request head is no longer needed for a
 * retry, and the response is counted. */
static void head_sent(struct gw_conn *c)
{
    gw_conn_drop_pending_head(c);
    gw_metrics_response(&c->w->metrics, c->status, cm_now_mono() - c->t_start);
}

/* What the final response head <h> decides for the exchange. */
static void take_final_head(struct gw_conn *c, const struct gw_h1_head *h)
{
    c->resp_head_done = 1;
    c->status = h->status;
    c->resp_keepalive = h->keep_alive;
    if (c->upgrade_req) /* refused upgrade: the connection state is unclear, close after */
        c->close_after = 1;
    c->eof_body = !h->body_done && !h->chunked && !h->has_cl;
    if (c->eof_body)
        c->close_after = 1; /* close-delimited body: the client learns the end by the close */
    c->dechunk = c->http10 && h->chunked;
    if (c->dechunk)
        c->close_after = 1;
}

static int is_event_stream(const struct gw_h1_head *h)
{
    return h->content_type >= 0 && h->headers[h->content_type].value_len >= 17 &&
           gw_h1_ieq(h->headers[h->content_type].value, "text/event-stream", 17);
}

static void response_done(struct gw_conn *c);

/* Response body bytes read into the instance's empty input, once the head went out and the
 * body needs only relaying (no dechunking, rewriting or sniffing): framed by llhttp where
 * they were read and written to the client from there (what its socket refuses is copied to
 * its output), never copied into the input. Takes all of it (bytes after the response: the
 * connection is not reused, as when they waited in the input). */
static size_t pass_resp_body(struct gw_conn *c, struct gw_stream *us, const char *data,
                             size_t len)
{
    struct gw_worker *w = c->w;
    int done;
    llhttp_errno_t e;
    ssize_t used = body_step(&c->resp, data, len, &done, &e);
    if (used < 0) {
        cm_log_warn("conn", "bad response body instance=%s err=%s", c->instance,
                    llhttp_errno_name(e));
        gw_conn_free(c); /* the response started: cut it */
        return len;
    }
    if (used) {
        struct iovec iov = {(void *)data, (size_t)used};
        gw_stream_write(&c->cs, &iov, 1);
        GW_METRIC_ADD(&w->metrics, bytes_out, (size_t)used);
    }
    if (done) {
        if ((size_t)used < len)
            c->resp_keepalive = 0;
        response_done(c);
        return len;
    }
    /* The body goes on past this read: from now on it may stream for long. */
    if (us->rtimeout != w->to_stream_idle)
        gw_stream_set_timeouts(us, w->to_stream_idle, NULL);
    if (evbuffer_get_length(c->cs.out) >= w->gc->limits.buffer_high) {
        c->paused_up = 1; /* EV_WRITE is armed: on_client_write resumes */
        gw_stream_read_disable(us);
    }
    return len;
}

/* An upstream read that found the input empty, offered before it is appended there: when it
 * is exactly one whole response of the common shape and the exchange needs nothing from it
 * but relaying (no Mcp-Session-Id to store, no MCP DELETE, CDP, upgrade, HTTP/1.0 or event
 * stream), it goes to the client straight from the read and never enters the input buffer (no
 * chain allocated, copied and freed for it). Body bytes after the head and tunnel bytes are
 * passed on from the read too (pass_resp_body(), gw_tunnel_pass()). Anything else is left to
 * gw_conn_relay_resp() (0). */
static size_t on_up_peek(struct gw_stream *us, const char *data, size_t len, void *arg)
{
    struct gw_conn *c = arg;
    struct gw_worker *w = c->w;
    if (c->state == CS_TUNNEL)
        return gw_tunnel_pass(c, &c->cs, data, len);
    if (c->state == CS_PROXY && c->resp_head_done && !c->rewrite && !c->dechunk && !c->sniff &&
        !c->alias_pending)
        return pass_resp_body(c, us, data, len);
    if (c->state != CS_PROXY || c->resp_head_done || c->alias_pending || c->cdp_path ||
        c->upgrade_req || c->http10 || (c->kind == KEY_MCP && c->is_delete) || c->unproven)
        return 0;
    struct gw_h1_head h;
    h.headers = w->headers;
    h.max_headers = (uint32_t)w->gc->limits.max_headers;
    size_t head_len, max = w->gc->limits.max_header_bytes * 4;
    if (gw_h1_scan(&h, data, CM_MIN(len, max), 1, c->head_method, &head_len) != GW_H1_OK) {
        c->resp_deferred = 1; /* parse_resp_head() goes to llhttp at once */
        return 0;
    }
    size_t body_len = h.body_done ? 0 : (size_t)h.content_length;
    if (head_len + body_len != len || is_event_stream(&h))
        return 0;
    if (c->route->mcp && !c->alias_done && !c->had_mcp_id)
        for (uint32_t i = 0; i < h.n_headers; i++)
            if (h.headers[i].cls & GW_H1_C_MCP)
                return 0; /* a minted MCP session id: parse_resp_head() stores it first */
    take_final_head(c, &h);
    gw_h1_write_whole(c, &h, data, head_len, body_len);
    head_sent(c);
    finish_exchange(c);
    return len;
}

/* Returns 1 when the head was handled and relaying may go on, 0 to wait, -1 when <c> is gone
 * or finished. */
static int parse_resp_head(struct gw_conn *c)
{
    struct gw_worker *w = c->w;
    struct gw_stream *us = gw_upconn_stream(c->up);
    struct evbuffer *in = us->in;
    size_t len = evbuffer_get_length(in);
    size_t max = w->gc->limits.max_header_bytes * 4;
    if (len == 0)
        return 0;
    /* The common head, whole in the first read, is found and parsed in one pass (llhttp only
     * joins in below if the body needs a parser); once per head, as in process_head(), and not
     * again when on_up_peek() saw it defer. */
    struct gw_h1_head h;
    h.headers = w->headers;
    h.max_headers = (uint32_t)w->gc->limits.max_headers;
    size_t first = evbuffer_get_contiguous_space(in), head_len;
    const char *data = c->rscan || c->resp_deferred
                           ? NULL
                           : (const char *)evbuffer_pullup(in, (ev_ssize_t)first);
    int rc, scanned = data && gw_h1_scan(&h, data, CM_MIN(first, max), 1, c->head_method,
                                         &head_len) == GW_H1_OK;
    if (scanned) {
        rc = GW_H1_OK;
        c->rscan = 0;
    } else {
        ev_ssize_t end = head_end(in, len, c->rscan, max);
        if (end < 0) {
            c->rscan = len;
            if (len > max) {
                cm_log_warn("conn", "response head too large instance=%s", c->instance);
                gw_conn_send_error(c, GW_ERR_BAD_GATEWAY, 1);
                return -1;
            }
            return 0;
        }
        head_len = (size_t)end + 4;
        c->rscan = 0;
        data = (const char *)evbuffer_pullup(in, (ev_ssize_t)head_len);
        llhttp_init(&c->resp, HTTP_RESPONSE, &w->resp_head_settings);
        rc = data ? gw_h1_parse_head(&c->resp, &w->resp_head_settings, &h, data, head_len,
                                     c->head_method)
                  : GW_H1_BAD;
    }
    if (rc != GW_H1_OK) {
        cm_log_warn("conn", "bad response head instance=%s rc=%d", c->instance, rc);
        gw_conn_send_error(c, GW_ERR_BAD_GATEWAY, 1);
        return -1;
    }
    if (h.status == 101 && c->upgrade_req) {
        c->unproven = 0;
        gw_h1_write_response(c, &h, data, head_len);
        evbuffer_drain(in, head_len);
        gw_conn_drop_pending_head(c);
        c->resp_head_done = 1;
        c->status = 101;
        gw_metrics_response(&w->metrics, 101, cm_now_mono() - c->t_start);
        gw_tunnel_start(c);
        gw_tunnel_pump(c);
        return -1;
    }
    if (h.status < 200) {
        /* Interim response (100 Continue, 103 Early Hints): pass it on, wait for the final. */
        if (!c->http10)
            gw_h1_write_response(c, &h, data, head_len);
        evbuffer_drain(in, head_len);
        return 1;
    }
    if ((c->route->mcp || c->unproven) && gw_mcp_on_resp_head(c, &h))
        return -1;
    take_final_head(c, &h);
    int whole = 0; /* the whole response was sent below */
    int is_sse = is_event_stream(&h);
    int cdp = c->cdp_path && c->host && h.status == 200 && !h.body_done && !is_sse;
    int fits = !cdp && !h.body_done && h.has_cl && !h.chunked && !c->dechunk && !is_sse &&
               evbuffer_get_contiguous_space(in) >= head_len + h.content_length;
    if (scanned && !h.body_done && !fits) {
        /* The body is relayed through llhttp: let it parse the head too. It accepts whatever
         * gw_h1_scan() does, the same way (tests/fuzz/fuzz_h1_scan.c). */
        llhttp_init(&c->resp, HTTP_RESPONSE, &w->resp_head_settings);
        if (gw_h1_parse_head(&c->resp, &w->resp_head_settings, &h, data, head_len,
                             c->head_method) != GW_H1_OK) {
            gw_conn_send_error(c, GW_ERR_INTERNAL, 1);
            return -1;
        }
    }
    if (cdp) {
        /* CDP discovery: hold the head, collect and rewrite the (small) body. */
        c->aux = evbuffer_new();
        c->aux_head = evbuffer_new();
        if (!c->aux || !c->aux_head) {
            gw_conn_send_error(c, GW_ERR_INTERNAL, 1);
            return -1;
        }
        c->rewrite = 1;
        evbuffer_remove_buffer(in, c->aux_head, head_len);
    } else if (fits) { /* the whole response is in the first chain (see send_whole) */
        gw_h1_write_whole(c, &h, data, head_len, (size_t)h.content_length);
        evbuffer_drain(in, head_len + (size_t)h.content_length);
        whole = 1;
    } else {
        if (c->route->legacy_sse && c->is_get && c->kind == KEY_SID && is_sse &&
            h.status == 200 && (c->aux = evbuffer_new()) != NULL)
            c->sniff = 1;
        gw_h1_write_response(c, &h, data, head_len);
        evbuffer_drain(in, head_len);
    }
    head_sent(c);
    if (h.body_done || whole) {
        finish_exchange(c);
        return -1;
    }
    c->resp.settings = (void *)&w->resp_body_settings;
    c->resp.data = c;
    return 1;
}

/* The response's last byte arrived: a held (rewritten) body goes out now, then the exchange
 * ends. A rewrite that fails is a 502: nothing reached the client yet. */
static void response_done(struct gw_conn *c)
{
    if (c->rewrite && gw_cdp_emit(c) < 0) {
        c->resp_head_done = 0;
        gw_conn_send_error(c, GW_ERR_BAD_GATEWAY, 1);
        return;
    }
    finish_exchange(c);
}

void gw_conn_relay_resp(struct gw_conn *c)
{
    struct gw_worker *w = c->w;
    if (c->alias_pending)
        return;
    while (c->up && !c->resp_head_done) {
        int r = parse_resp_head(c);
        if (r == 0)
            gw_stream_flush(&c->cs); /* e.g. a 100 Continue passed on, the final head still due */
        if (r <= 0)
            return;
    }
    if (!c->up)
        return;
    struct gw_stream *us = gw_upconn_stream(c->up);
    struct evbuffer *in = us->in;
    struct evbuffer *out = c->cs.out;
    while (evbuffer_get_length(in) > 0) {
        if (evbuffer_get_length(out) >= w->gc->limits.buffer_high) {
            gw_stream_flush(&c->cs);
            if (evbuffer_get_length(out) >= w->gc->limits.buffer_high) {
                c->paused_up = 1; /* EV_WRITE is armed: on_client_write resumes */
                gw_stream_read_disable(us);
                return;
            }
        }
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        int done;
        llhttp_errno_t e;
        ssize_t n = body_step(&c->resp, v.iov_base, v.iov_len, &done, &e);
        size_t used = n < 0 ? 0 : (size_t)n;
        if (done && c->body_alias) { /* paused by the endpoint sniffer, not at the end */
            c->body_alias = 0;
            c->held = used;
            gw_mcp_store_alias(c, CM_KEY_SRC_SSE);
            return;
        }
        if (n < 0) {
            if (c->rewrite) { /* nothing reached the client yet */
                cm_log_warn("conn", "response to rewrite too large instance=%s", c->instance);
                c->resp_head_done = 0;
                gw_conn_send_error(c, GW_ERR_BAD_GATEWAY, 1);
                return;
            }
            cm_log_warn("conn", "bad response body instance=%s err=%s", c->instance,
                        llhttp_errno_name(e));
            gw_conn_free(c); /* the response started: cut it */
            return;
        }
        if (c->dechunk || c->rewrite)
            evbuffer_drain(in, used);
        else
            evbuffer_remove_buffer(in, out, used);
        GW_METRIC_ADD(&w->metrics, bytes_out, used);
        if (done) {
            response_done(c);
            return;
        }
    }
    /* The body goes on past this read: from now on it may stream for long. */
    gw_stream_set_timeouts(us, w->to_stream_idle, NULL);
    gw_stream_flush(&c->cs);
}

/* ------------------------------------------------------------------ upstream callbacks */

static void on_up_read(struct gw_stream *us, void *arg)
{
    struct gw_conn *c = arg;
    (void)us;
    if (c->state == CS_TUNNEL)
        gw_tunnel_pump(c);
    else if (c->state == CS_PROXY)
        gw_conn_relay_resp(c);
}

static void on_up_write(struct gw_stream *us, void *arg)
{
    struct gw_conn *c = arg;
    (void)us;
    if (!c->paused_client)
        return;
    c->paused_client = 0;
    gw_stream_read_enable(&c->cs);
    if (c->state == CS_TUNNEL)
        gw_tunnel_pump(c);
    else if (c->state == CS_PROXY && !c->req_done)
        relay_req_body(c);
}

static void retry_fresh(struct gw_conn *c)
{
    gw_upconn_release(c->up, 0);
    c->up = NULL;
    c->retried = 1;
    gw_conn_forward(c, NULL);
}

static void on_up_event(struct gw_stream *us, short what, void *arg)
{
    struct gw_conn *c = arg;
    struct gw_worker *w = c->w;
    if (what & GW_STREAM_CONNECTED) {
        c->up_connected = 1;
        if (c->req_done)
            gw_stream_set_timeouts(us, w->to_response, NULL);
        else
            gw_stream_set_timeouts(us, NULL, w->to_stream_idle);
        gw_stream_flush(us);
        /* What waited for the connection may all be out now, with no write callback to
         * come: resume the request body here. */
        if (c->paused_client && evbuffer_get_length(us->out) < w->gc->limits.buffer_high)
            on_up_write(us, c);
        return;
    }
    if (c->state == CS_TUNNEL) {
        /* One side closed: flush what the other gets, then close. */
        gw_tunnel_pump(c);
        c->close_after = 1;
        gw_conn_begin_close(c);
        return;
    }
    if (what & GW_STREAM_TIMEOUT) {
        if (!c->up_connected) {
            gw_binding_unreachable(c);
        } else if (!c->resp_head_done) {
            cm_log_warn("conn", "response timeout instance=%s", c->instance);
            gw_conn_send_error(c, GW_ERR_UPSTREAM_TIMEOUT, 1);
        } else {
            gw_conn_free(c); /* body stalled past stream_idle_timeout */
        }
        return;
    }
    /* EOF or error */
    if (!c->up_connected) {
        gw_binding_unreachable(c);
        return;
    }
    if (!c->resp_head_done) {
        struct evbuffer *in = gw_upconn_stream(c->up)->in;
        if (c->up_reused && !c->retried && c->head_pending && evbuffer_get_length(in) == 0) {
            retry_fresh(c); /* the pooled connection had gone stale */
            return;
        }
        if (c->preview_port) { /* the instance is fine; nothing answers on that port */
            cm_log_info("conn", "preview port closed session=%s instance=%s port=%u",
                        gw_conn_sess_hex(c), c->instance, c->preview_port);
            gw_conn_send_error(c, GW_ERR_BAD_GATEWAY, 1);
            return;
        }
        cm_log_warn("conn", "instance closed before answering session=%s instance=%s",
                    gw_conn_hash_hex(c), c->instance);
        gw_cache_drop(w->cache, c->hash);
        gw_conn_send_error(c, c->kind == KEY_SID ? GW_ERR_INSTANCE_LOST : GW_ERR_SESSION_NOT_FOUND, 1);
        return;
    }
    gw_conn_relay_resp(c); /* whatever arrived with the close */
    if (!c->up)
        return;
    /* The head decides, not llhttp_message_needs_eof(): a Transfer-Encoding among a chunked
     * body's trailers changes llhttp's flags, and a close in the trailers is a truncation. */
    if ((what & GW_STREAM_EOF) && c->eof_body) {
        llhttp_finish(&c->resp);
        c->close_after = 1;
        response_done(c);
        return;
    }
    /* truncated body: close so the client sees it incomplete */
    cm_log_info("conn", "response truncated instance=%s", c->instance);
    gw_upconn_release(c->up, 0);
    c->up = NULL;
    c->resp_head_done = 1;
    gw_conn_begin_close(c);
}

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
            relay_req_body(c);
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
        break;
    }
}

static void on_client_write(struct gw_stream *cs, void *arg)
{
    struct gw_conn *c = arg;
    if (c->state == CS_CLOSING) {
        if (evbuffer_get_length(cs->out) == 0 && !c->shut) {
            c->shut = 1;
            shutdown(cs->fd, SHUT_WR);
        }
        return;
    }
    if (c->paused_up && c->up) {
        c->paused_up = 0;
        gw_stream_read_enable(gw_upconn_stream(c->up));
        if (c->state == CS_TUNNEL)
            gw_tunnel_pump(c);
        else
            gw_conn_relay_resp(c);
    }
}

static void on_client_event(struct gw_stream *cs, short what, void *arg)
{
    struct gw_conn *c = arg;
    (void)cs;
    if (c->state == CS_TUNNEL && (what & GW_STREAM_EOF) && c->up) {
        /* Client closed its side: pass on what it sent, then close both. */
        gw_tunnel_pump(c);
        struct gw_stream *us = gw_upconn_stream(c->up);
        if (evbuffer_get_length(us->out) == 0)
            shutdown(us->fd, SHUT_WR);
    }
    if ((what & GW_STREAM_TIMEOUT) && c->state == CS_PROXY && !c->req_done &&
        !c->resp_head_done) {
        /* the request body stalled past stream_idle_timeout */
        cm_log_info("conn", "request body stalled session=%s", gw_conn_hash_hex(c));
        gw_conn_send_error(c, GW_ERR_REQUEST_TIMEOUT, 1);
        return;
    }
    /* EOF, error or stream idle timeout: the client is gone; cancel the upstream request. */
    gw_conn_free(c);
}

/* ------------------------------------------------------------------ accept */

void gw_conn_accept(struct gw_worker *w, int fd, const struct sockaddr *sa, socklen_t salen)
{
    (void)salen;
    struct gw_conn *c = calloc(1, sizeof(*c));
    if (!c) {
        close(fd);
        return;
    }
    c->w = w;
    if (gw_stream_init(&c->cs, w->base, fd, &w->scratch) < 0) { /* closes fd */
        free(c);
        return;
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
    enter_idle(c);
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    w->n_conns++;
    GW_METRIC_INC(&w->metrics, conns_accepted);
    GW_METRIC_INC(&w->metrics, conns_active);
    if (w->n_conns >= w->gc->limits.max_connections && w->accepting) {
        w->accepting = 0;
        evconnlistener_disable(w->listener);
    }
}

void gw_conn_drain_all(struct gw_worker *w)
{
    struct gw_conn *c = w->conns;
    while (c) {
        struct gw_conn *next = c->next;
        if (c->state == CS_IDLE)
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
    w->resp_body_settings.on_body = on_resp_body;
    w->resp_body_settings.on_message_complete = on_msg_complete;
}
