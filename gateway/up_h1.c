/* The instance's side of an exchange over HTTP/1.1: the request sent on a pooled
 * connection, the response head found and parsed (the whole-response fast path from the read),
 * its body relayed with backpressure, upstream events (connect, EOF, timeout, a stale pooled
 * connection retried once). */
#include "gateway/conn_int.h"

#include <event2/buffer.h>
#include <linux/sockios.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>

#include "common/log.h"
#include "gateway/cache.h"
#include "gateway/metrics.h"
#include "gateway/upstream.h"
#include "gateway/usage.h"
#include "gateway/worker.h"

/* Request bodies up to this size are checked at resume_timeout (on_up_event()). */
#define RESUME_CHECK_MAX_BODY 4096

static void on_up_read(struct gw_stream *us, void *arg);
static size_t on_up_peek(struct gw_stream *us, const char *data, size_t len, void *arg);
static void on_up_write(struct gw_stream *us, void *arg);
static void on_up_event(struct gw_stream *us, short what, void *arg);
static void response_done(struct gw_conn *c);

/* Sends the request to c->addr. <parsed> is the head parsed in this same callback (its slices
 * are still valid), or NULL to parse it again from the input (after a claim or a retry, when the
 * input buffer may have been rearranged). */
void gw_up_forward(struct gw_conn *c, struct gw_h1_head *parsed)
{
    struct gw_worker *w = c->w;
    const struct gw_limits *lim = &w->gc->limits;
    int reused = 0, err = 0;
    if (!c->usage_on && w->usage) {
        if (gw_usage_begin(w->usage, c->session, c->t_start))
            c->usage_on = 1;
        else
            GW_METRIC_INC(&w->metrics, usage_dropped);
    }
    if (c->preview_port) {
        /* The agent's ports socket sits next to its app socket (a VM's ports forward is its
         * app forward's port + 1); the pool key carries the port, and a new connection
         * starts with the agent's port selection line. */
        char addr[GW_UPOOL_ADDR_MAX];
        size_t al = strlen(c->addr);
        const char *colon = strrchr(c->addr, ':');
        char *end = NULL;
        unsigned long fwd = 0;
        if (al > 9 && strncmp(c->addr, "unix:", 5) == 0 &&
            strcmp(c->addr + al - 9, "/app.sock") == 0)
            snprintf(addr, sizeof(addr), "%.*s/ports.sock@%u", (int)(al - 9), c->addr,
                     c->preview_port);
        else if (strncmp(c->addr, "vm:", 3) == 0 && colon && colon > c->addr + 3 &&
                 (fwd = strtoul(colon + 1, &end, 10)) > 0 && fwd < 65535 && !*end)
            snprintf(addr, sizeof(addr), "%.*s:%lu@%u#%s", (int)(colon - c->addr), c->addr,
                     fwd + 1, c->preview_port, c->instance);
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
        /* A body follows: response_timeout runs from its end (conn.c, request_sent()); until then
         * each side's progress is bounded by stream_idle_timeout, the client's sending and
         * the instance's taking it (a long upload at a slow, steady rate is fine). */
        gw_stream_set_timeouts(us, NULL, reused ? w->to_stream_idle : w->to_connect);
        gw_stream_set_timeouts(&c->cs, w->to_stream_idle, NULL);
    }
    gw_stream_read_enable(us);

    struct gw_h1_head h;
    if (!parsed) {
        if (gw_conn_parse_head(c, &h, 1) != GW_H1_OK) { /* parsed fine before: cannot happen */
            gw_conn_send_error(c, GW_ERR_INTERNAL, 1);
            return;
        }
        parsed = &h;
    }
    gw_h1_write_request(c, parsed, gw_conn_head_data(c), us);
    c->state = CS_PROXY;
    c->rscan = 0;
    c->resp_deferred = 0;
    c->resp_head_done = 0;
    c->up_took = 0;
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
    gw_conn_relay_req_body(c);
}

int gw_up_on_body(llhttp_t *p, const char *at, size_t len)
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

static int is_event_stream(const struct gw_h1_head *h)
{
    return h->content_type >= 0 && h->headers[h->content_type].value_len >= 17 &&
           gw_h1_ieq(h->headers[h->content_type].value, "text/event-stream", 17);
}

/* Response body bytes read into the instance's empty input, once the head went out and the
 * body needs only relaying (no dechunking, rewriting or sniffing): framed by llhttp where
 * they were read and written to the client from there (what its socket refuses is copied to
 * its output), never copied into the input. Takes all of it (bytes after the response: the
 * connection is not reused, as when they waited in the input). */
static size_t pass_resp_body(struct gw_conn *c, struct gw_stream *us, const char *data, size_t len)
{
    struct gw_worker *w = c->w;
    int done;
    llhttp_errno_t e;
    ssize_t used = gw_h1_body_step(&c->resp, data, len, &done, &e);
    if (used < 0) {
        GW_XLOG(warn, c, "bad response body instance=%s err=%s", c->instance, llhttp_errno_name(e));
        gw_conn_free(c); /* the response started: cut it */
        return len;
    }
    if (used) {
        struct iovec iov = {(void *)data, (size_t)used};
        gw_stream_write(&c->cs, &iov, 1);
        GW_XFER_OUT(c, (size_t)used);
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
    gw_conn_backpressure(c, &c->cs, 0);
    return len;
}

/* An upstream read that found the input empty, offered before it is appended there: when it
 * is exactly one whole response of the common shape and the exchange needs nothing from it
 * but relaying (no Mcp-Session-Id to store, no MCP DELETE, CDP, upgrade, HTTP/1.0 or event
 * stream), it goes to the client straight from the read and never enters the input buffer (no
 * chain allocated, copied and freed for it). Body bytes after the head and tunnel bytes are
 * passed on from the read too (pass_resp_body(), gw_tunnel_pass()). Anything else is left to
 * gw_up_relay() (0). */
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
                return 0; /* a minted MCP session id: gw_mcp_on_resp_head() stores it first */
    gw_exchange_final_head(c, &h);
    c->down->whole(c, &h, data, head_len, body_len);
    gw_exchange_head_sent(c);
    gw_exchange_finish(c);
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
     * joins in below if the body needs a parser); once per head, as in conn.c process_head(), and
     * not again when on_up_peek() saw it defer. */
    struct gw_h1_head h;
    h.headers = w->headers;
    h.max_headers = (uint32_t)w->gc->limits.max_headers;
    size_t first = evbuffer_get_contiguous_space(in), head_len;
    const char *data =
        c->rscan || c->resp_deferred ? NULL : (const char *)evbuffer_pullup(in, (ev_ssize_t)first);
    int rc, scanned = data && gw_h1_scan(&h, data, CM_MIN(first, max), 1, c->head_method,
                                         &head_len) == GW_H1_OK;
    if (scanned) {
        rc = GW_H1_OK;
        c->rscan = 0;
    } else {
        ev_ssize_t end = gw_h1_head_end(in, len, c->rscan, max);
        if (end < 0) {
            c->rscan = len;
            if (len > max) {
                GW_XLOG(warn, c, "response head too large instance=%s", c->instance);
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
        GW_XLOG(warn, c, "bad response head instance=%s rc=%d", c->instance, rc);
        gw_conn_send_error(c, GW_ERR_BAD_GATEWAY, 1);
        return -1;
    }
    if (h.status == 101 && c->upgrade_req) {
        c->unproven = 0;
        c->down->head(c, &h, data, head_len);
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
            c->down->head(c, &h, data, head_len);
        evbuffer_drain(in, head_len);
        return 1;
    }
    if ((c->route->mcp || c->unproven) && gw_mcp_on_resp_head(c, &h))
        return -1;
    gw_exchange_final_head(c, &h);
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
    } else if (fits) { /* the whole response is in the first chain (see struct gw_down_ops) */
        c->down->whole(c, &h, data, head_len, (size_t)h.content_length);
        evbuffer_drain(in, head_len + (size_t)h.content_length);
        whole = 1;
    } else {
        if (c->route->legacy_sse && c->is_get && c->kind == KEY_SID && is_sse && h.status == 200 &&
            (c->aux = evbuffer_new()) != NULL)
            c->sniff = 1;
        c->down->head(c, &h, data, head_len);
        evbuffer_drain(in, head_len);
    }
    gw_exchange_head_sent(c);
    if (h.body_done || whole) {
        gw_exchange_finish(c);
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
    gw_exchange_finish(c);
}

void gw_up_relay(struct gw_conn *c)
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
        if (gw_conn_backpressure(c, &c->cs, 1))
            return;
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        int done;
        llhttp_errno_t e;
        ssize_t n = gw_h1_body_step(&c->resp, v.iov_base, v.iov_len, &done, &e);
        size_t used = n < 0 ? 0 : (size_t)n;
        if (done && c->body_alias) { /* paused by the endpoint sniffer, not at the end */
            c->body_alias = 0;
            c->held = used;
            gw_mcp_store_alias(c, CM_KEY_SRC_SSE);
            return;
        }
        if (n < 0) {
            if (c->rewrite) { /* nothing reached the client yet */
                GW_XLOG(warn, c, "response to rewrite too large instance=%s", c->instance);
                c->resp_head_done = 0;
                gw_conn_send_error(c, GW_ERR_BAD_GATEWAY, 1);
                return;
            }
            GW_XLOG(warn, c, "bad response body instance=%s err=%s", c->instance,
                    llhttp_errno_name(e));
            gw_conn_free(c); /* the response started: cut it */
            return;
        }
        if (c->dechunk || c->rewrite)
            evbuffer_drain(in, used);
        else
            evbuffer_remove_buffer(in, out, used);
        GW_XFER_OUT(c, used);
        if (done) {
            response_done(c);
            return;
        }
    }
    /* The body goes on past this read: from now on it may stream for long. */
    gw_stream_set_timeouts(us, w->to_stream_idle, NULL);
    gw_stream_flush(&c->cs);
}

static void on_up_read(struct gw_stream *us, void *arg)
{
    struct gw_conn *c = arg;
    (void)us;
    if (c->state == CS_TUNNEL)
        gw_tunnel_pump(c);
    else if (c->state == CS_PROXY)
        gw_up_relay(c);
}

static void on_up_write(struct gw_stream *us, void *arg)
{
    struct gw_conn *c = arg;
    (void)us;
    if (c->up_wshut)
        gw_tunnel_shut_up(c);
    if (!c->paused_client)
        return;
    c->paused_client = 0;
    gw_stream_read_enable(&c->cs);
    if (c->state == CS_TUNNEL)
        gw_tunnel_pump(c);
    else if (c->state == CS_PROXY && !c->req_done)
        gw_conn_relay_req_body(c);
}

static void retry_fresh(struct gw_conn *c)
{
    gw_upconn_release(c->up, 0);
    c->up = NULL;
    c->retried = 1;
    gw_up_forward(c, NULL);
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
        } else if (!c->resp_head_done && !c->up_took && w->to_response_rest) {
            /* resume_timeout: has the instance taken the request at all? A paused sandbox that
             * was not thawed (its scheduler is down) leaves it unread in the socket, where a
             * live agent reads a head and a small body at once (its relay buffer, 64 KiB by
             * default, is empty when an exchange begins), whatever its app does. A larger
             * body may wait on a slow app: only response_timeout applies to it. */
            int unread = 0;
            if (c->xfer_in <= RESUME_CHECK_MAX_BODY && ioctl(us->fd, SIOCOUTQ, &unread) == 0 &&
                unread > 0) {
                GW_XLOG(warn, c,
                        "instance took nothing of the request session=%s instance=%s "
                        "unread=%d",
                        gw_conn_hash_hex(c), c->instance, unread);
                gw_conn_send_error(c, GW_ERR_INSTANCE_UNAVAILABLE, 1);
                return;
            }
            c->up_took = 1;
            gw_stream_set_timeouts(us, w->to_response_rest, NULL);
        } else if (!c->resp_head_done) {
            GW_XLOG(warn, c, "response timeout instance=%s", c->instance);
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
            GW_XLOG(info, c, "preview port closed session=%s instance=%s port=%u",
                    gw_conn_sess_hex(c), c->instance, c->preview_port);
            gw_conn_send_error(c, GW_ERR_BAD_GATEWAY, 1);
            return;
        }
        GW_XLOG(warn, c, "instance closed before answering session=%s instance=%s",
                gw_conn_hash_hex(c), c->instance);
        gw_cache_drop(w->cache, c->hash);
        gw_conn_send_error(c, c->kind == KEY_SID ? GW_ERR_INSTANCE_LOST : GW_ERR_SESSION_NOT_FOUND,
                           1);
        return;
    }
    gw_up_relay(c); /* whatever arrived with the close */
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
    /* truncated body: close so the client sees it incomplete (HTTP/2: RST_STREAM, even for
     * a body that ends with the close, which an error is not) */
    GW_XLOG(info, c, "response truncated instance=%s", c->instance);
    gw_upconn_release(c->up, 0);
    c->up = NULL;
    c->resp_head_done = 1;
    c->resp_cut = 1;
    gw_conn_begin_close(c);
}
