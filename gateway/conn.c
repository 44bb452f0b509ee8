#include "gateway/conn.h"

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


enum key_kind {
    KEY_SID, /* platform key: x-fc-session-id, cookie, or one the gateway made */
    KEY_MCP, /* Mcp-Session-Id (an alias) */
    KEY_SSE, /* legacy MCP SSE sessionId / session_id query parameter (an alias) */
};

/* The source class each kind of key is hashed under (common/key.h). */
static const char *const key_sources[] = {
    [KEY_SID] = CM_KEY_SRC_SID, [KEY_MCP] = CM_KEY_SRC_MCP, [KEY_SSE] = CM_KEY_SRC_SSE};

/* A Redis operation a connection waits for; the connection may go away first. */
struct conn_op {
    struct gw_conn *c;
};

enum conn_state {
    CS_IDLE,    /* between requests: keep-alive timer armed */
    CS_HEAD,    /* receiving a request head: header timer armed */
    CS_ROUTING, /* waiting for a claim; client reading paused */
    CS_PROXY,   /* request sent or being sent, response awaited or being relayed */
    CS_TUNNEL,  /* after 101 Switching Protocols: bytes both ways */
    CS_CLOSING, /* flushing the last response, then lingering close */
};

struct gw_conn {
    struct gw_conn *next, *prev;
    struct gw_worker *w;
    struct gw_stream cs; /* the client's socket */
    enum conn_state state;
    struct event timer;
    const struct gw_route *route;
    struct gw_claim *claim;
    struct gw_upconn *up;
    llhttp_t req, resp;
    struct gw_h1_chunked chunk; /* our check of a chunked request body's framing */
    size_t head_len;  /* request head: in head_slot, else at the start of the input */
    char *head_slot;  /* the loop's slot holding a head that came whole in one read */
    size_t scan;      /* request bytes already searched for the end of the head */
    size_t rscan;     /* same for the response */
    uint64_t body_bytes;
    cm_usec_t t_start;
    cm_usec_t idle_since; /* CS_IDLE: when the last exchange ended (coarse clock) */
    struct cm_hash hash; /* cache key: the session's hash, or the alias's */
    char hash_hex[CM_HASH_HEX_LEN + 1];
    struct cm_hash session;
    char session_hex[CM_HASH_HEX_LEN + 1];
    struct conn_op *op;      /* alias being stored */
    struct evbuffer *aux;    /* SSE sniff window, or the body being rewritten */
    struct evbuffer *aux_head; /* response head held back while its body is rewritten */
    char *host;              /* client's Host, kept for the CDP rewrite */
    size_t held;             /* response bytes parsed but held until the alias is stored */
    char alias_id[CM_KEY_MAX + 1];
    char key[CM_KEY_MAX + 1];
    char auto_key[CM_HASH_HEX_LEN + 1];
    char instance[GW_INSTANCE_ID_MAX];
    char addr[GW_ADDR_MAX];
    char peer[INET6_ADDRSTRLEN];
    int status;
    unsigned key_len : 8;
    unsigned req_keepalive : 1;
    unsigned req_done : 1;
    unsigned req_chunked : 1;   /* the request body is chunked: c->chunk checks it first */
    unsigned head_pending : 1;  /* bodiless request: head kept for a retry (slot or input) */
    unsigned resp_head_done : 1;
    unsigned resp_keepalive : 1;
    unsigned close_after : 1;
    unsigned eof_body : 1; /* the response body ends with the instance's close (its head said) */
    unsigned resp_deferred : 1; /* gw_h1_scan() deferred on this response head (on_up_peek) */
    unsigned paused_client : 1; /* client reading paused: upstream output above high */
    unsigned paused_up : 1;     /* upstream reading paused: client output above high */
    unsigned head_method : 1;
    unsigned http10 : 1;
    unsigned upgrade_req : 1;
    unsigned issue_cookie : 1;
    unsigned from_cache : 1;
    unsigned retried : 1;
    unsigned reclaimed : 1;
    unsigned up_connected : 1;
    unsigned up_reused : 1;
    unsigned body_too_large : 1;
    unsigned dechunk : 1;
    unsigned in_stream : 1;
    unsigned shut : 1;
    unsigned kind : 2;
    unsigned had_mcp_id : 1;
    unsigned is_delete : 1;
    unsigned is_get : 1;
    unsigned cdp_path : 1;
    unsigned alias_pending : 1;
    unsigned alias_done : 1;
    unsigned sniff : 1;
    unsigned body_alias : 1;
    unsigned rewrite : 1;
    unsigned rewrite_overflow : 1;
    unsigned used_auto : 1;    /* this request is on the connection's own (no_key new) session */
    unsigned auto_is_mcp : 1;  /* ...whose server minted an Mcp-Session-Id: see process_head */
    unsigned released : 1;     /* MCP DELETE: the session was released before the answer */
    unsigned head_timer : 1;   /* the timer runs header_timeout for the head being received */
    unsigned keyless_new : 1;  /* no key: this request named a session of its own making */
    unsigned unproven : 1;     /* ...bound for it now, and not yet answered with success */
    uint8_t cors;              /* 1 + the route's cors_origins entry the Origin matched, or 0 */
    size_t reframe_len; /* body length of a rewritten response */
    uint16_t preview_port; /* preview host: the port inside the sandbox */
};

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

static void drop_pending_head(struct gw_conn *c)
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

static void conn_free(struct gw_conn *c);
static void process_head(struct gw_conn *c);
static void begin_exchange(struct gw_conn *c, struct gw_h1_head *h, int rc);

/* The hashes as hex, made when first needed (logs, Redis scripts): not on the hot path. */
static const char *hash_hex(struct gw_conn *c)
{
    if (!c->hash_hex[0])
        cm_hash_hex(c->hash, c->hash_hex);
    return c->hash_hex;
}

static const char *sess_hex(struct gw_conn *c)
{
    if (!c->session_hex[0])
        cm_hash_hex(c->session, c->session_hex);
    return c->session_hex;
}

static void relay_req_body(struct gw_conn *c);
static void relay_resp(struct gw_conn *c);
static void start_claim(struct gw_conn *c);
struct gw_cache_entry;
static void refresh_binding(struct gw_conn *c, struct gw_cache_entry *e);
static void forward(struct gw_conn *c, struct gw_h1_head *parsed);

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

static void send_error(struct gw_conn *c, enum gw_err e, int close);
static void answered(struct gw_conn *c, int status, int close);

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct gw_conn *c = arg;
    struct gw_worker *w = c->w;
    (void)fd, (void)what;
    switch (c->state) {
    case CS_HEAD:
        if (c->head_timer) {
            send_error(c, GW_ERR_REQUEST_TIMEOUT, 1);
        } else { /* the head's first bytes came as a keep-alive timer ran out */
            c->head_timer = 1;
            arm_timer(c, w->to_header);
        }
        break;
    case CS_IDLE: {
        cm_usec_t idle = cm_now_mono_coarse() - c->idle_since;
        if (idle >= w->gc->limits.keepalive_timeout) {
            conn_free(c);
        } else {
            struct timeval tv;
            cm_usec_to_tv(w->gc->limits.keepalive_timeout - idle, &tv);
            evtimer_add(&c->timer, &tv);
        }
        break;
    }
    case CS_CLOSING:
        conn_free(c);
        break;
    case CS_ROUTING:
    case CS_PROXY:
    case CS_TUNNEL:
        break; /* a lazy keep-alive or header timer: enter_idle() arms it again */
    }
}

static void begin_close(struct gw_conn *c)
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
    drop_pending_head(c);
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

static void release_unused(struct gw_conn *c, const char *why);

static void conn_free(struct gw_conn *c)
{
    struct gw_worker *w = c->w;
    if (c->unproven) /* the client left before an answer that starts its session */
        release_unused(c, "client gone");
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

/* ------------------------------------------------------------------ keyless sessions */

static void on_unused_released(redisReply *reply, const char *err, void *data)
{
    (void)data;
    if (err || !reply || reply->type == REDIS_REPLY_ERROR)
        cm_log_warn("conn", "cannot release an unused session err=%s",
                    err ? err : reply ? reply->str : "no reply");
}

/* A session made for a keyless request whose answer did not start it (an error status
 * without an Mcp-Session-Id, or no answer at all): nobody can reach it again, so it must not hold its
 * instance until the idle timeout. Released at once (not waited for); the RELEASE script has
 * the instance destroyed, never handed to another session (it has seen a client's bytes),
 * and the scheduler refills the pool. The connection's next keyless request makes a new one. */
static void release_unused(struct gw_conn *c, const char *why)
{
    struct gw_worker *w = c->w;
    c->unproven = 0;
    c->issue_cookie = 0;
    if (c->used_auto)
        c->auto_key[0] = '\0';
    gw_cache_drop(w->cache, c->hash);
    char ms[24];
    snprintf(ms, sizeof(ms), "%" PRIu64, cm_now_wall_ms());
    const char *prefix = w->gc->common->redis.prefix;
    const char *argv[] = {prefix, sess_hex(c), c->route->tenant, "unused", ms};
    size_t lens[] = {strlen(prefix), CM_HASH_HEX_LEN, strlen(c->route->tenant), 6, strlen(ms)};
    GW_METRIC_INC(&w->metrics, sessions_unused);
    cm_log_info("conn", "keyless request did not start its session: released session=%s "
                "instance=%s why=\"%s\"", sess_hex(c), c->instance, why);
    if (cm_redis_script(w->redis, CM_SCRIPT_RELEASE, on_unused_released, NULL, 5, argv, lens) < 0)
        cm_log_warn("conn", "cannot release an unused session session=%s err=store",
                    sess_hex(c));
}

/* ------------------------------------------------------------------ CORS */

/* The value of the first header named <name> (<nl> bytes, lower-case), or NULL. */
static const struct gw_h1_header *find_header(const struct gw_h1_head *h, const char *name,
                                              size_t nl)
{
    for (uint32_t i = 0; i < h->n_headers; i++)
        if (h->headers[i].name_len == nl && strncasecmp(h->headers[i].name, name, nl) == 0)
            return &h->headers[i];
    return NULL;
}

/* 1 + the index of the route's cors_origins entry allowing <origin>, or 0. */
static uint8_t cors_match(const struct gw_route *r, const char *origin, size_t n)
{
    for (size_t i = 0; i < r->n_cors_origins; i++) { /* at most 255 (config.c) */
        const char *o = r->cors_origins[i];
        if ((o[0] == '*' && o[1] == '\0') || (strlen(o) == n && memcmp(o, origin, n) == 0))
            return (uint8_t)(i + 1);
    }
    return 0;
}

/* A token list as Access-Control-Request-Headers carries it ("content-type, mcp-session-id"). */
static int token_list_ok(const char *v, size_t n)
{
    if (n > 1024)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)v[i];
        if (!isalnum(ch) && !strchr("!#$%&'*+-.^_`|~, \t", ch))
            return 0;
    }
    return 1;
}

/* What a browser script may read of an answer besides the CORS-safelisted headers. */
#define CORS_EXPOSE                                                                                \
    "access-control-expose-headers: mcp-session-id, mcp-protocol-version, x-berth-session, "     \
    "x-berth-instance, retry-after\r\n"

/* The CORS headers of an answer to an allowed Origin (c->cors), preflight or not. */
static size_t cors_headers(const struct gw_conn *c, char *buf, size_t cap)
{
    const char *o = c->route->cors_origins[c->cors - 1];
    int any = o[0] == '*';
    int n = snprintf(buf, cap, "access-control-allow-origin: %s\r\n%s" CORS_EXPOSE, o,
                     any ? "" : "access-control-allow-credentials: true\r\n");
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

static void add_cors_headers(struct evbuffer *out, const struct gw_conn *c)
{
    char buf[512];
    evbuffer_add(out, buf, cors_headers(c, buf, sizeof(buf)));
}

static void answer_preflight(struct gw_conn *c, const struct gw_h1_head *h,
                             const struct gw_h1_header *acrm);

/* Routes with CORS handled by the gateway (MCP routes, and any with cors_origins): notes
 * whether the request's Origin is allowed (its answer then carries the CORS headers, the
 * instance's own replaced), and answers a preflight (OPTIONS with Origin and
 * Access-Control-Request-Method) itself: no session is claimed and no instance sees it, so
 * a browser's preflights never bind sandboxes. Returns 1 when the request was answered. */
static int cors_request(struct gw_conn *c, const struct gw_h1_head *h)
{
    const struct gw_h1_header *origin = find_header(h, "origin", 6);
    if (origin)
        c->cors = cors_match(c->route, origin->value, origin->value_len);
    if (h->method_id != HTTP_OPTIONS || !c->route->cors_preflight || !origin)
        return 0;
    const struct gw_h1_header *acrm = find_header(h, "access-control-request-method", 29);
    if (!acrm)
        return 0;
    answer_preflight(c, h, acrm);
    return 1;
}

/* ------------------------------------------------------------------ responses we write */

static void send_error(struct gw_conn *c, enum gw_err e, int close)
{
    struct gw_worker *w = c->w;
    const struct gw_err_info *info = gw_err_info(e);
    GW_METRIC_INC(&w->metrics, errors[e]);
    if (c->unproven)
        release_unused(c, info->code);
    if (c->resp_head_done) {
        /* The response already started: all we can do is cut it. */
        conn_free(c);
        return;
    }
    if (c->up) {
        gw_upconn_release(c->up, 0);
        c->up = NULL;
    }
    drop_pending_head(c);
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
        add_cors_headers(out, c);
        evbuffer_add(out, "vary: origin\r\n", 14);
    }
    if (close)
        evbuffer_add(out, "connection: close\r\n", 19);
    evbuffer_add(out, "\r\n", 2);
    if (!c->head_method)
        evbuffer_add(out, body, (size_t)blen);
    answered(c, info->status, close);
}

/* The answer to a preflight the gateway handles itself (see cors_request()). */
static void answer_preflight(struct gw_conn *c, const struct gw_h1_head *h,
                             const struct gw_h1_header *acrm)
{
    const struct gw_h1_header *acrh = find_header(h, "access-control-request-headers", 30);
    const char *m = acrm->value, *rh = acrh ? acrh->value : "";
    size_t mn = acrm->value_len, rhn = acrh ? acrh->value_len : 0;
    gw_h1_trim(&m, &mn);
    gw_h1_trim(&rh, &rhn);
    if (mn == 0 || mn > 32 || !token_list_ok(m, mn) || memchr(m, ',', mn) || memchr(m, ' ', mn) ||
        !token_list_ok(rh, rhn)) {
        c->cors = 0;
        send_error(c, GW_ERR_BAD_REQUEST, 0);
        return;
    }
    if (!c->cors) {
        cm_log_debug("conn", "CORS preflight from an origin not allowed route=%s",
                     c->route->name);
        send_error(c, GW_ERR_ORIGIN_NOT_ALLOWED, 0);
        return;
    }
    int close = !c->req_done || !c->req_keepalive;
    struct evbuffer *out = c->cs.out;
    evbuffer_add(out, "HTTP/1.1 204 No Content\r\n", 25);
    add_cors_headers(out, c);
    evbuffer_add_printf(out,
                        "access-control-allow-methods: %.*s\r\n"
                        "access-control-max-age: %u\r\n"
                        "vary: origin, access-control-request-method, "
                        "access-control-request-headers\r\n"
                        "cache-control: no-store\r\n",
                        (int)mn, m, c->route->cors_max_age);
    if (rhn)
        evbuffer_add_printf(out, "access-control-allow-headers: %.*s\r\n", (int)rhn, rh);
    if (close)
        evbuffer_add(out, "connection: close\r\n", 19);
    evbuffer_add(out, "\r\n", 2);
    drop_pending_head(c);
    answered(c, 204, close);
}

/* Ends an exchange the gateway answered itself: the connection closes, or waits for (or
 * goes on with) the next request. */
static void answered(struct gw_conn *c, int status, int close)
{
    struct gw_worker *w = c->w;
    c->status = status;
    if (c->t_start)
        gw_metrics_response(&w->metrics, status, cm_now_mono() - c->t_start);
    end_stream(c);
    if (close) {
        begin_close(c);
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
            send_error(c, GW_ERR_HEADERS_TOO_LARGE, 1);
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
            send_error(c, GW_ERR_BAD_REQUEST, 1);
        }
        return;
    }
    c->head_len = (size_t)end + 4;
    c->scan = 0;
    if (c->head_len > lim->max_header_bytes) {
        send_error(c, GW_ERR_HEADERS_TOO_LARGE, 1);
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
static size_t pass_tunnel(struct gw_conn *c, struct gw_stream *to, const char *data, size_t len);

static size_t on_client_peek(struct gw_stream *cs, const char *data, size_t len, void *arg)
{
    struct gw_conn *c = arg;
    struct gw_worker *w = c->w;
    (void)cs;
    if (c->state == CS_PROXY && !c->req_done && c->up)
        return pass_req_body(c, data, len);
    if (c->state == CS_TUNNEL && c->up)
        return pass_tunnel(c, gw_upconn_stream(c->up), data, len);
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
        send_error(c, rc == GW_H1_TOO_MANY  ? GW_ERR_HEADERS_TOO_LARGE
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
        send_error(c, GW_ERR_BAD_REQUEST, 1);
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
        send_error(c, GW_ERR_BAD_REQUEST, 1);
        return;
    }
    c->route = gw_config_route(w->gc, host, host_len, path, path_len);
    if (!c->route) {
        send_error(c, GW_ERR_NOT_FOUND, 0);
        return;
    }
    if ((c->route->cors_preflight && h->method_id == HTTP_OPTIONS) || c->route->n_cors_origins) {
        if (cors_request(c, h)) /* a preflight: answered here, no session touched */
            return;
    }
    if (h->has_cl && h->content_length > c->route->max_body) {
        send_error(c, GW_ERR_BODY_TOO_LARGE, 1);
        return;
    }
    if (c->route->auth && !bearer_ok(c, h)) {
        send_error(c, GW_ERR_UNAUTHORIZED, 0);
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
        send_error(c, GW_ERR_INVALID_SESSION_KEY, 0);
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
                send_error(c, GW_ERR_INVALID_SESSION_KEY, 0);
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
            send_error(c, GW_ERR_INVALID_SESSION_KEY, 0);
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
            send_error(c, GW_ERR_INVALID_SESSION_KEY, 0);
            return;
        }
        c->kind = KEY_SSE;
        key = qid;
        key_len = qid_len;
    } else if (kr == GW_SKEY_NONE) {
        switch (c->route->no_key) {
        case GW_NO_KEY_REJECT:
            send_error(c, GW_ERR_SESSION_KEY_REQUIRED, 0);
            return;
        case GW_NO_KEY_ISSUE:
            if (cm_random_id(c->auto_key) < 0) {
                send_error(c, GW_ERR_INTERNAL, 1);
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
                    send_error(c, GW_ERR_INTERNAL, 1);
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
    c->hash = cm_key_hash(c->route->tenant, key_sources[c->kind], c->key, key_len);
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
        refresh_binding(c, e);
    if (e) {
        memcpy(c->instance, e->instance, sizeof(c->instance));
        memcpy(c->addr, e->addr, sizeof(c->addr));
        c->session = e->session;
        c->session_hex[0] = '\0';
        c->from_cache = 1;
        GW_METRIC_INC(&w->metrics, claims[GW_CLAIM_CACHED]);
        gw_activity_touch_entry(w, e);
        forward(c, h);
        return;
    }
    start_claim(c);
}

/* ------------------------------------------------------------------ claims */

struct gw_refresh {
    struct gw_refresh *next, *prev; /* worker's list: freed at shutdown if still pending */
    struct gw_worker *w;
    struct cm_hash key;
};

static void refresh_free(struct gw_refresh *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        r->w->refreshes = r->next;
    if (r->next)
        r->next->prev = r->prev;
    free(r);
}

void gw_conn_refreshes_free(struct gw_worker *w)
{
    while (w->refreshes)
        refresh_free(w->refreshes);
}

static void on_refreshed(const struct gw_binding *b, int err, void *data)
{
    struct gw_refresh *r = data;
    struct gw_worker *w = r->w;
    struct gw_cache_entry *e = gw_cache_get(w->cache, r->key);
    if (e) {
        e->refreshing = 0;
        if (err < 0)
            gw_cache_put(w->cache, b,
                         gw_cache_expiry(w->gc->cache_ttl, b->hash, cm_now_mono()));
        else if (err != GW_ERR_STORE_UNAVAILABLE)
            gw_cache_drop(w->cache, r->key); /* gone or lost: the next request asks again */
    }
    refresh_free(r);
}

/* What a claim for c's session asks the claimer, in <mode>. */
static struct gw_claim_req claim_req(const struct gw_conn *c, enum gw_claim_mode mode)
{
    return (struct gw_claim_req){
        .tenant = c->route->tenant,
        .source = key_sources[c->kind],
        .key = c->key,
        .key_len = c->key_len,
        .tpl = c->route->tpl,
        .mode = mode,
    };
}

/* Checks a stale binding with Redis in the background (lookup only: never binds). */
static void refresh_binding(struct gw_conn *c, struct gw_cache_entry *e)
{
    struct gw_refresh *r = calloc(1, sizeof(*r));
    if (!r)
        return;
    r->w = c->w;
    r->key = c->hash;
    r->next = c->w->refreshes;
    if (r->next)
        r->next->prev = r;
    c->w->refreshes = r;
    struct gw_claim_req req = claim_req(c, c->kind == KEY_SID ? GW_CLAIM_MODE_LOOKUP
                                                              : GW_CLAIM_MODE_ALIAS);
    if (!gw_claim_start(c->w->claimer, &req, on_refreshed, r)) {
        refresh_free(r);
        return;
    }
    e->refreshing = 1;
    GW_METRIC_INC(&c->w->metrics, revalidations[GW_REVAL_LOOKUP]);
}

static void on_claimed(const struct gw_binding *b, int err, void *data)
{
    struct gw_conn *c = data;
    struct gw_worker *w = c->w;
    c->claim = NULL;
    gw_stream_read_enable(&c->cs);
    if (err == GW_ERR_STORE_UNAVAILABLE) {
        struct gw_cache_entry *stale = gw_cache_get(w->cache, c->hash);
        if (stale) { /* the store timed out: a binding we knew is better than a 503 */
            memcpy(c->instance, stale->instance, sizeof(c->instance));
            memcpy(c->addr, stale->addr, sizeof(c->addr));
            c->session = stale->session;
            c->session_hex[0] = '\0';
            c->from_cache = 1;
            forward(c, NULL);
            return;
        }
    }
    if (err >= 0) {
        if (err != GW_ERR_STORE_UNAVAILABLE)
            cm_log_debug("conn", "claim failed session=%s err=%s", hash_hex(c),
                         gw_err_info((enum gw_err)err)->code);
        if (err == GW_ERR_NOT_FOUND || (err == GW_ERR_INSTANCE_LOST && c->kind != KEY_SID))
            err = GW_ERR_SESSION_NOT_FOUND; /* MCP: tells the client to initialize again */
        send_error(c, (enum gw_err)err, 0);
        return;
    }
    c->session = b->session;
    memcpy(c->session_hex, b->session_hex, sizeof(c->session_hex));
    cm_usec_t now = cm_now_mono();
    struct gw_cache_entry *e =
        gw_cache_put(w->cache, b, gw_cache_expiry(w->gc->cache_ttl, b->hash, now));
    /* The claim script recorded the activity. The next touch is due within activity_flush,
     * spread by the session's (random) hash: sessions started together, as a batch of agents
     * or a benchmark's warm-up, must not all come due in the same instant. */
    if (e)
        e->last_flush = now - (cm_usec_t)(b->session.lo % (w->gc->activity_flush / 2 + 1));
    memcpy(c->instance, b->instance, sizeof(c->instance));
    memcpy(c->addr, b->addr, sizeof(c->addr));
    c->unproven = c->keyless_new && b->how != GW_CLAIM_BOUND;
    if (b->how != GW_CLAIM_BOUND)
        cm_log_debug("conn", "session bound session=%s instance=%s how=%s", hash_hex(c),
                    b->instance, b->how == GW_CLAIM_NEW ? "pool" : "started");
    forward(c, NULL);
}

static void start_claim(struct gw_conn *c)
{
    struct gw_worker *w = c->w;
    /* a preview link only reaches a session that exists: it never creates one */
    struct gw_claim_req req = claim_req(c, c->kind != KEY_SID ? GW_CLAIM_MODE_ALIAS
                                           : c->preview_port  ? GW_CLAIM_MODE_LOOKUP
                                                              : GW_CLAIM_MODE_CLAIM);
    c->state = CS_ROUTING;
    gw_stream_read_disable(&c->cs);
    c->claim = gw_claim_start(w->claimer, &req, on_claimed, c);
    if (!c->claim)
        send_error(c, GW_ERR_INTERNAL, 1);
}

/* ------------------------------------------------------------------ forwarding */

/* A head is assembled in a stack buffer, then written from it (gw_stream_write) or added to
 * the output in one piece: it is a dozen pieces, and an evbuffer_add() each costs more than
 * copying them here. A head larger than the buffer spills to the output in order. */
struct hb {
    struct evbuffer *out;
    size_t n;
    char buf[4096];
};

static void hb_spill(struct hb *b)
{
    if (b->n) {
        evbuffer_add(b->out, b->buf, b->n);
        b->n = 0;
    }
}

static void hb_add_slow(struct hb *b, const void *p, size_t len)
{
    hb_spill(b);
    if (len > sizeof(b->buf)) {
        evbuffer_add(b->out, p, len);
        return;
    }
    memcpy(b->buf, p, len);
    b->n = len;
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

static void hb_printf(struct hb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
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
 * sees it, "127.0.0.1:<app port>" for a sandbox (reached through its socket) or a preview
 * port, the upstream's "host:port" for a static one. Returns its length (< cap). */
static size_t upstream_authority(const struct gw_conn *c, char *buf, size_t cap)
{
    const char *a = c->addr;
    unsigned port = c->preview_port ? c->preview_port : c->route->tpl->app_port;
    /* memcmp of a constant length is inlined; strncmp is a call (callgrind: ~50 a request) */
    if (!c->preview_port && memcmp(a, "unix:", 5) != 0) {
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

/* Sends the rewritten request head to <us>: straight from the stack when nothing is queued
 * (no copy into the output buffer), else after what is. */
static void write_request_head(struct gw_conn *c, const struct gw_h1_head *h, const char *head,
                               struct gw_stream *us)
{
    struct gw_worker *w = c->w;
    struct hb hb, *out = &hb;
    hb.out = us->out;
    hb.n = 0;
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
    HB_LIT(out, "\r\nx-forwarded-proto: http\r\n");
    if (h->request_id < 0 || h->headers[h->request_id].value_len == 0 ||
        h->headers[h->request_id].value_len > 128) {
        char id[17];
        gw_worker_request_id(w, id);
        HB_LIT(out, "x-request-id: ");
        hb_add(out, id, 16);
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

static void on_up_read(struct gw_stream *us, void *arg);
static size_t on_up_peek(struct gw_stream *us, const char *data, size_t len, void *arg);
static void on_up_write(struct gw_stream *us, void *arg);
static void on_up_event(struct gw_stream *us, short what, void *arg);

static void instance_unreachable(struct gw_conn *c)
{
    struct gw_worker *w = c->w;
    if (c->up) {
        gw_upconn_release(c->up, 0);
        c->up = NULL;
    }
    gw_cache_drop(w->cache, c->hash);
    if (c->from_cache && !c->reclaimed && c->head_pending) {
        /* The cached binding may be stale (inval lost): ask Redis once more. */
        c->reclaimed = 1;
        c->from_cache = 0;
        start_claim(c);
        return;
    }
    cm_log_warn("conn", "instance unreachable session=%s instance=%s addr=%s", hash_hex(c),
                c->instance, c->addr);
    /* An MCP client learns from 404 that its session ended and initializes again. */
    send_error(c, c->kind == KEY_SID ? GW_ERR_INSTANCE_LOST : GW_ERR_SESSION_NOT_FOUND, 0);
}

/* Sends the request to c->addr. <parsed> is the head parsed in this same callback (its slices
 * are still valid), or NULL to parse it again from the input (after a claim or a retry, when the
 * input buffer may have been rearranged). */
static void forward(struct gw_conn *c, struct gw_h1_head *parsed)
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
        instance_unreachable(c);
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
            send_error(c, GW_ERR_INTERNAL, 1);
            return;
        }
        parsed = &h;
    }
    write_request_head(c, parsed, head_data(c), us);
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
    drop_pending_head(c); /* the body follows it in the input */
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

static int sniff_endpoint(struct gw_conn *c, const char *at, size_t len)
{
    /* Legacy MCP SSE: look at the first events for `endpoint`, bounded by sse_sniff_bytes. */
    if (evbuffer_add(c->aux, at, len) < 0) {
        c->sniff = 0;
        return 0;
    }
    for (;;) {
        size_t n = evbuffer_get_length(c->aux);
        const char *buf = (const char *)evbuffer_pullup(c->aux, -1);
        int is_endpoint;
        const char *data, *id;
        size_t data_len, id_len;
        size_t ev = buf ? gw_rewrite_sse_event(buf, n, &is_endpoint, &data, &data_len) : 0;
        if (ev == 0) {
            if (n > c->w->gc->limits.sse_sniff_bytes) {
                cm_log_info("conn", "no endpoint event in the first bytes of an SSE stream "
                                    "session=%s bytes=%zu", sess_hex(c), n);
                c->sniff = 0;
            }
            return 0;
        }
        if (is_endpoint && data && gw_rewrite_endpoint_id(data, data_len, &id, &id_len)) {
            c->sniff = 0;
            if (!cm_key_valid(id, id_len)) {
                cm_log_warn("conn", "endpoint event with an invalid session id session=%s",
                            sess_hex(c));
                return 0;
            }
            memcpy(c->alias_id, id, id_len);
            c->alias_id[id_len] = '\0';
            c->body_alias = 1;
            return HPE_PAUSED; /* hold these bytes until the alias is stored */
        }
        evbuffer_drain(c->aux, ev);
    }
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
        return sniff_endpoint(c, at, len);
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
            cm_log_info("conn", "bad chunked request body session=%s", hash_hex(c));
            send_error(c, GW_ERR_BAD_REQUEST, 1);
            return -1;
        }
        body = (size_t)k;
    }
    ssize_t used = body_step(&c->req, data, body, &ended, &e);
    if (used < 0) {
        cm_log_info("conn", "bad request body session=%s err=%s", hash_hex(c),
                    llhttp_errno_name(e));
        send_error(c, c->body_too_large ? GW_ERR_BODY_TOO_LARGE : GW_ERR_BAD_REQUEST, 1);
        return -1;
    }
    if (c->req_chunked && (ended != gw_h1_chunked_done(&c->chunk) || (size_t)used != body)) {
        /* the two disagree on where the body ends: neither reading is forwarded */
        cm_log_warn("conn", "chunked body framed differently by llhttp session=%s", hash_hex(c));
        send_error(c, GW_ERR_BAD_REQUEST, 1);
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

/* ------------------------------------------------------------------ aliases */

static void alias_failed(struct gw_conn *c, enum gw_err e)
{
    if (!c->resp_head_done)
        send_error(c, e, 1);
    else
        conn_free(c); /* mid-stream: the client cannot use the endpoint, cut the stream */
}

static void on_alias_stored(redisReply *reply, const char *err, void *data)
{
    struct conn_op *op = data;
    struct gw_conn *c = op->c;
    free(op);
    if (!c)
        return;
    c->op = NULL;
    c->alias_pending = 0;
    if (err || !reply || reply->type != REDIS_REPLY_INTEGER) {
        cm_log_warn("conn", "cannot store alias session=%s err=%s", sess_hex(c),
                    err ? err : "bad reply");
        alias_failed(c, GW_ERR_STORE_UNAVAILABLE);
        return;
    }
    if (reply->integer == 0) { /* the session ended meanwhile */
        alias_failed(c, GW_ERR_INSTANCE_LOST);
        return;
    }
    if (!c->up)
        return;
    struct gw_stream *us = gw_upconn_stream(c->up);
    gw_stream_read_enable(us);
    if (!c->resp_head_done) {
        c->alias_done = 1;
        if (c->used_auto)
            c->auto_is_mcp = 1;
    } else {
        struct evbuffer *in = us->in;
        if (c->dechunk)
            evbuffer_drain(in, c->held);
        else
            evbuffer_remove_buffer(in, c->cs.out, c->held);
        GW_METRIC_ADD(&c->w->metrics, bytes_out, c->held);
        c->held = 0;
        llhttp_resume(&c->resp);
    }
    relay_resp(c);
}

/* Records c->alias_id (of <source>) as an alias of c's session before the client may use it;
 * upstream reading pauses meanwhile. */
static void store_alias(struct gw_conn *c, const char *source)
{
    struct gw_worker *w = c->w;
    struct cm_hash ah = cm_key_hash(c->route->tenant, source, c->alias_id, strlen(c->alias_id));
    char ahex[CM_HASH_HEX_LEN + 1];
    cm_hash_hex(ah, ahex);
    const char *prefix = w->gc->common->redis.prefix;
    const char *argv[] = {prefix, ahex, sess_hex(c)};
    size_t lens[] = {strlen(prefix), CM_HASH_HEX_LEN, CM_HASH_HEX_LEN};
    struct conn_op *op = malloc(sizeof(*op));
    if (!op || cm_redis_script(w->redis, CM_SCRIPT_ALIAS, on_alias_stored, op, 3, argv, lens) < 0) {
        free(op);
        alias_failed(c, GW_ERR_STORE_UNAVAILABLE);
        return;
    }
    op->c = c;
    c->op = op;
    c->alias_pending = 1;
    gw_stream_read_disable(gw_upconn_stream(c->up));
    cm_log_debug("conn", "alias source=%s session=%s", source, sess_hex(c));
}

static void on_released(redisReply *reply, const char *err, void *data)
{
    struct conn_op *op = data;
    struct gw_conn *c = op->c;
    free(op);
    if (!c)
        return;
    c->op = NULL;
    c->alias_pending = 0;
    if (err || !reply)
        cm_log_warn("conn", "cannot release session session=%s err=%s", sess_hex(c),
                    err ? err : "no reply");
    if (!c->up)
        return;
    gw_stream_read_enable(gw_upconn_stream(c->up));
    relay_resp(c);
}

/* MCP DELETE answered 2xx: releases the session before the answer reaches the client (who
 * may send its next request to another replica at once); upstream reading pauses meanwhile.
 * The answer goes on even if Redis fails: the instance has ended the MCP session anyway. */
static void release_session(struct gw_conn *c)
{
    struct gw_worker *w = c->w;
    char ms[24];
    snprintf(ms, sizeof(ms), "%" PRIu64, cm_now_wall_ms());
    const char *prefix = w->gc->common->redis.prefix;
    const char *argv[] = {prefix, sess_hex(c), c->route->tenant, "deleted", ms};
    size_t lens[] = {strlen(prefix), CM_HASH_HEX_LEN, strlen(c->route->tenant), 7, strlen(ms)};
    c->released = 1;
    gw_cache_drop(w->cache, c->hash);
    gw_cache_drop(w->cache, c->session);
    cm_log_info("conn", "session released by MCP DELETE session=%s", sess_hex(c));
    struct conn_op *op = malloc(sizeof(*op));
    if (!op || cm_redis_script(w->redis, CM_SCRIPT_RELEASE, on_released, op, 5, argv, lens) < 0) {
        free(op);
        cm_log_warn("conn", "cannot release session session=%s err=store", sess_hex(c));
        return;
    }
    op->c = c;
    c->op = op;
    c->alias_pending = 1;
    gw_stream_read_disable(gw_upconn_stream(c->up));
}

/* ------------------------------------------------------------------ responses */

static void finish_exchange(struct gw_conn *c)
{
    struct gw_worker *w = c->w;
    gw_stream_flush(&c->cs);
    drop_pending_head(c);
    int reusable = c->req_done && c->resp_keepalive && !c->upgrade_req;
    if (!c->req_done)
        c->close_after = 1;
    gw_upconn_release(c->up, reusable);
    c->up = NULL;
    end_stream(c);
    aux_reset(c);
    if (c->close_after || !c->req_keepalive || w->stopping) {
        begin_close(c);
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

/* Builds the client's response head in <out> (spilling to its output only if it overflows). */
static void build_response_head(struct gw_conn *c, const struct gw_h1_head *h, const char *head,
                                size_t head_len, struct hb *out)
{
    struct gw_worker *w = c->w;
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
        hb_printf(out, "set-cookie: %s=%s; Path=/; HttpOnly; SameSite=Lax\r\n",
                  c->route->cookie, c->key);
    if (c->cors) {
        char buf[512];
        hb_add(out, buf, cors_headers(c, buf, sizeof(buf)));
        HB_LIT(out, "vary: origin\r\n");
    }
    if (switching)
        HB_LIT(out, "connection: upgrade\r\n");
    else if (h->status >= 200 && (c->close_after || !c->req_keepalive))
        HB_LIT(out, "connection: close\r\n");
    else if (h->status >= 200 && c->http10)
        HB_LIT(out, "connection: keep-alive\r\n");
    HB_LIT(out, "\r\n");
}

static void write_response_head(struct gw_conn *c, const struct gw_h1_head *h, const char *head,
                                size_t head_len)
{
    struct hb hb;
    hb.out = c->cs.out;
    hb.n = 0;
    build_response_head(c, h, head, head_len, &hb);
    hb_spill(&hb);
}

static void start_tunnel(struct gw_conn *c)
{
    struct gw_worker *w = c->w;
    c->state = CS_TUNNEL;
    c->req_done = 1;
    gw_stream_set_timeouts(gw_upconn_stream(c->up), w->to_stream_idle, NULL);
    gw_stream_set_timeouts(&c->cs, w->to_stream_idle, NULL);
    gw_stream_read_enable(&c->cs);
}

static void tunnel_pump(struct gw_conn *c)
{
    struct gw_worker *w = c->w;
    struct gw_stream *us = gw_upconn_stream(c->up);
    size_t high = w->gc->limits.buffer_high;
    struct evbuffer *cin = c->cs.in, *cout = c->cs.out;
    struct evbuffer *uin = us->in, *uout = us->out;
    size_t n = evbuffer_get_length(cin);
    if (n) {
        evbuffer_add_buffer(uout, cin);
        GW_METRIC_ADD(&w->metrics, bytes_in, n);
    }
    n = evbuffer_get_length(uin);
    if (n) {
        evbuffer_add_buffer(cout, uin);
        GW_METRIC_ADD(&w->metrics, bytes_out, n);
    }
    gw_stream_flush(&c->cs);
    gw_stream_flush(us);
    /* Above the mark after the flush, so EV_WRITE is armed: its callback resumes. */
    if (evbuffer_get_length(uout) >= high) {
        c->paused_client = 1;
        gw_stream_read_disable(&c->cs);
    }
    if (evbuffer_get_length(cout) >= high) {
        c->paused_up = 1;
        gw_stream_read_disable(us);
    }
}

/* A tunnel's bytes read into an empty input: sent to the other side straight from the read
 * (what its socket refuses is copied to its output); reading pauses while that output is
 * above the mark, as in tunnel_pump(). */
static size_t pass_tunnel(struct gw_conn *c, struct gw_stream *to, const char *data, size_t len)
{
    struct gw_worker *w = c->w;
    int to_client = to == &c->cs;
    struct iovec iov = {(void *)data, len};
    gw_stream_write(to, &iov, 1);
    if (to_client)
        GW_METRIC_ADD(&w->metrics, bytes_out, len);
    else
        GW_METRIC_ADD(&w->metrics, bytes_in, len);
    if (evbuffer_get_length(to->out) >= w->gc->limits.buffer_high) {
        if (to_client) {
            c->paused_up = 1;
            gw_stream_read_disable(gw_upconn_stream(c->up));
        } else {
            c->paused_client = 1;
            gw_stream_read_disable(&c->cs);
        }
    }
    return len;
}

/* The final response head went to the client: the request head is no longer needed for a
 * retry, and the response is counted. */
static void head_sent(struct gw_conn *c)
{
    drop_pending_head(c);
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

/* A whole response (the head at <data>, then <body_len> bytes of body) goes to the client in
 * one writev: the head rewritten on the stack, the body straight from where it was read. A
 * Content-Length body has no framing to check: it is counted, not run through llhttp. */
static void send_whole(struct gw_conn *c, const struct gw_h1_head *h, const char *data,
                       size_t head_len, size_t body_len)
{
    struct hb hb;
    hb.out = c->cs.out;
    hb.n = 0;
    build_response_head(c, h, data, head_len, &hb);
    struct iovec iov[2] = {{hb.buf, hb.n}, {(void *)(data + head_len), body_len}};
    gw_stream_write(&c->cs, iov, body_len ? 2 : 1);
    GW_METRIC_ADD(&c->w->metrics, bytes_out, body_len);
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
        conn_free(c); /* the response started: cut it */
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
 * passed on from the read too (pass_resp_body(), pass_tunnel()). Anything else is left to
 * relay_resp() (0). */
static size_t on_up_peek(struct gw_stream *us, const char *data, size_t len, void *arg)
{
    struct gw_conn *c = arg;
    struct gw_worker *w = c->w;
    if (c->state == CS_TUNNEL)
        return pass_tunnel(c, &c->cs, data, len);
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
    send_whole(c, &h, data, head_len, body_len);
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
                send_error(c, GW_ERR_BAD_GATEWAY, 1);
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
        send_error(c, GW_ERR_BAD_GATEWAY, 1);
        return -1;
    }
    if (h.status == 101 && c->upgrade_req) {
        c->unproven = 0;
        write_response_head(c, &h, data, head_len);
        evbuffer_drain(in, head_len);
        drop_pending_head(c);
        c->resp_head_done = 1;
        c->status = 101;
        gw_metrics_response(&w->metrics, 101, cm_now_mono() - c->t_start);
        start_tunnel(c);
        tunnel_pump(c);
        return -1;
    }
    if (h.status < 200) {
        /* Interim response (100 Continue, 103 Early Hints): pass it on, wait for the final. */
        if (!c->http10)
            write_response_head(c, &h, data, head_len);
        evbuffer_drain(in, head_len);
        return 1;
    }
    if (!c->alias_done && c->route->mcp && !c->had_mcp_id) {
        /* MCP initialize: the server minted a session id; store the alias before the client
         * can send it to another gateway. */
        for (uint32_t i = 0; i < h.n_headers; i++) {
            const struct gw_h1_header *x = &h.headers[i];
            if (!(x->cls & GW_H1_C_MCP))
                continue;
            const char *v = x->value;
            size_t vn = x->value_len;
            gw_h1_trim(&v, &vn);
            if (!cm_key_valid(v, vn)) {
                cm_log_warn("conn", "instance sent an invalid Mcp-Session-Id instance=%s",
                            c->instance);
                break;
            }
            memcpy(c->alias_id, v, vn);
            c->alias_id[vn] = '\0';
            store_alias(c, CM_KEY_SRC_MCP);
            return -1;
        }
    }
    if (c->kind == KEY_MCP && c->is_delete && h.status >= 200 && h.status < 300 &&
        c->route->mcp_delete_releases && !c->released) {
        release_session(c);
        if (c->alias_pending)
            return -1; /* on_released() parses this head again */
    }
    if (c->unproven) {
        /* The answer to the keyless request its session was made for: a success starts the
         * session (the client has its key: a cookie, x-berth-session, the connection, or an
         * Mcp-Session-Id stored above); an error leaves nothing bound. */
        if (h.status >= 400 && !c->alias_done) {
            char why[32];
            snprintf(why, sizeof(why), "answered %d", h.status);
            release_unused(c, why);
        } else {
            c->unproven = 0;
        }
    }
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
            send_error(c, GW_ERR_INTERNAL, 1);
            return -1;
        }
    }
    if (cdp) {
        /* CDP discovery: hold the head, collect and rewrite the (small) body. */
        c->aux = evbuffer_new();
        c->aux_head = evbuffer_new();
        if (!c->aux || !c->aux_head) {
            send_error(c, GW_ERR_INTERNAL, 1);
            return -1;
        }
        c->rewrite = 1;
        evbuffer_remove_buffer(in, c->aux_head, head_len);
    } else if (fits) { /* the whole response is in the first chain (see send_whole) */
        send_whole(c, &h, data, head_len, (size_t)h.content_length);
        evbuffer_drain(in, head_len + (size_t)h.content_length);
        whole = 1;
    } else {
        if (c->route->legacy_sse && c->is_get && c->kind == KEY_SID && is_sse &&
            h.status == 200 && (c->aux = evbuffer_new()) != NULL)
            c->sniff = 1;
        write_response_head(c, &h, data, head_len);
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

static int emit_rewritten(struct gw_conn *c)
{
    struct gw_worker *w = c->w;
    size_t head_len = evbuffer_get_length(c->aux_head);
    const char *head = (const char *)evbuffer_pullup(c->aux_head, -1);
    size_t body_len = evbuffer_get_length(c->aux);
    const char *body = (const char *)evbuffer_pullup(c->aux, -1);
    struct gw_h1_head h;
    llhttp_t tmp;
    h.headers = w->headers;
    h.max_headers = (uint32_t)w->gc->limits.max_headers;
    llhttp_init(&tmp, HTTP_RESPONSE, &w->resp_head_settings);
    struct evbuffer *nb = evbuffer_new();
    if (!nb || !head || gw_h1_parse_head(&tmp, &w->resp_head_settings, &h, head, head_len, 0) ||
        gw_rewrite_cdp(body ? body : "", body_len, c->host, strlen(c->host), 0 /* no TLS yet */,
                       nb) < 0) {
        if (nb)
            evbuffer_free(nb);
        return -1;
    }
    c->reframe_len = evbuffer_get_length(nb);
    write_response_head(c, &h, head, head_len);
    evbuffer_add_buffer(c->cs.out, nb);
    evbuffer_free(nb);
    return 0;
}

/* The response's last byte arrived: a held (rewritten) body goes out now, then the exchange
 * ends. A rewrite that fails is a 502: nothing reached the client yet. */
static void response_done(struct gw_conn *c)
{
    if (c->rewrite && emit_rewritten(c) < 0) {
        c->resp_head_done = 0;
        send_error(c, GW_ERR_BAD_GATEWAY, 1);
        return;
    }
    finish_exchange(c);
}

static void relay_resp(struct gw_conn *c)
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
            store_alias(c, CM_KEY_SRC_SSE);
            return;
        }
        if (n < 0) {
            if (c->rewrite) { /* nothing reached the client yet */
                cm_log_warn("conn", "response to rewrite too large instance=%s", c->instance);
                c->resp_head_done = 0;
                send_error(c, GW_ERR_BAD_GATEWAY, 1);
                return;
            }
            cm_log_warn("conn", "bad response body instance=%s err=%s", c->instance,
                        llhttp_errno_name(e));
            conn_free(c); /* the response started: cut it */
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
        tunnel_pump(c);
    else if (c->state == CS_PROXY)
        relay_resp(c);
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
        tunnel_pump(c);
    else if (c->state == CS_PROXY && !c->req_done)
        relay_req_body(c);
}

static void retry_fresh(struct gw_conn *c)
{
    gw_upconn_release(c->up, 0);
    c->up = NULL;
    c->retried = 1;
    forward(c, NULL);
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
        tunnel_pump(c);
        c->close_after = 1;
        begin_close(c);
        return;
    }
    if (what & GW_STREAM_TIMEOUT) {
        if (!c->up_connected) {
            instance_unreachable(c);
        } else if (!c->resp_head_done) {
            cm_log_warn("conn", "response timeout instance=%s", c->instance);
            send_error(c, GW_ERR_UPSTREAM_TIMEOUT, 1);
        } else {
            conn_free(c); /* body stalled past stream_idle_timeout */
        }
        return;
    }
    /* EOF or error */
    if (!c->up_connected) {
        instance_unreachable(c);
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
                        sess_hex(c), c->instance, c->preview_port);
            send_error(c, GW_ERR_BAD_GATEWAY, 1);
            return;
        }
        cm_log_warn("conn", "instance closed before answering session=%s instance=%s",
                    hash_hex(c), c->instance);
        gw_cache_drop(w->cache, c->hash);
        send_error(c, c->kind == KEY_SID ? GW_ERR_INSTANCE_LOST : GW_ERR_SESSION_NOT_FOUND, 1);
        return;
    }
    relay_resp(c); /* whatever arrived with the close */
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
    begin_close(c);
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
        tunnel_pump(c);
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
            tunnel_pump(c);
        else
            relay_resp(c);
    }
}

static void on_client_event(struct gw_stream *cs, short what, void *arg)
{
    struct gw_conn *c = arg;
    (void)cs;
    if (c->state == CS_TUNNEL && (what & GW_STREAM_EOF) && c->up) {
        /* Client closed its side: pass on what it sent, then close both. */
        tunnel_pump(c);
        struct gw_stream *us = gw_upconn_stream(c->up);
        if (evbuffer_get_length(us->out) == 0)
            shutdown(us->fd, SHUT_WR);
    }
    if ((what & GW_STREAM_TIMEOUT) && c->state == CS_PROXY && !c->req_done &&
        !c->resp_head_done) {
        /* the request body stalled past stream_idle_timeout */
        cm_log_info("conn", "request body stalled session=%s", hash_hex(c));
        send_error(c, GW_ERR_REQUEST_TIMEOUT, 1);
        return;
    }
    /* EOF, error or stream idle timeout: the client is gone; cancel the upstream request. */
    conn_free(c);
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
            conn_free(c);
        else
            c->close_after = 1;
        c = next;
    }
}

void gw_conn_close_all(struct gw_worker *w)
{
    while (w->conns)
        conn_free(w->conns);
}

/* Settings for the worker's parsers (body callbacks need the conn). */
void gw_conn_settings_init(struct gw_worker *w);
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
