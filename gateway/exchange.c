/* One request and its response, whatever the protocol: routing, authorization, the
 * session key and its hash, the binding from the cache or a claim, and the decisions the final
 * response head makes, to the end of the exchange. */
#include "gateway/conn_int.h"

#include <event2/buffer.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/config.h"
#include "common/log.h"
#include "common/redis.h"
#include "gateway/activity.h"
#include "gateway/cache.h"
#include "gateway/metrics.h"
#include "gateway/skey.h"
#include "gateway/upstream.h"
#include "gateway/usage.h"
#include "gateway/worker.h"

/* The longest Host taken (a DNS name's 253 bytes, a port, IPv6 brackets): it goes upstream in
 * X-Forwarded-Host (and, with upstream_host: client, as Host too), and the CDP rewrite puts it
 * in every URL it rewrites. */
#define GW_HOST_MAX 261

void gw_exchange_reset_aux(struct gw_conn *c)
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

/* A log-safe copy of <n> bytes at <v> into <out> (<cap> bytes): what a key=value line can
 * carry unquoted (no space, quote, backslash or control byte: '_' for those), cut with "...". */
static void log_safe(char *out, size_t cap, const char *v, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n && k + 4 < cap; i++) {
        unsigned char ch = (unsigned char)v[i];
        out[k++] = ch > 0x20 && ch < 0x7f && ch != '"' && ch != '\\' ? (char)ch : '_';
    }
    if (k + 4 >= cap && n > k) {
        memcpy(out + k, "...", 3);
        k += 3;
    }
    out[k] = '\0';
}

/* The exchange's request id: the client's X-Request-Id when it is usable (1..128 bytes; it goes
 * upstream as it came, and logs carry it made log-safe), else ours, which goes upstream. */
static void take_request_id(struct gw_conn *c, const struct gw_h1_head *h)
{
    if (h && h->request_id >= 0) {
        const struct gw_h1_header *x = &h->headers[h->request_id];
        if (x->value_len && x->value_len <= GW_REQ_ID_MAX) {
            log_safe(c->req_id, sizeof(c->req_id), x->value, x->value_len);
            c->req_id_client = 1;
            return;
        }
    }
    gw_worker_request_id(c->w, c->req_id);
    c->req_id_client = 0;
}

/* Keeps what the access-log line needs of the request head, when this exchange gets one. */
static void access_begin(struct gw_conn *c, const struct gw_h1_head *h)
{
    const struct gw_access_log *a = &c->w->gc->access_log;
    c->acc_on = a->enabled && (a->sample <= 1 || ++c->w->access_seq % a->sample == 0);
    if (!c->acc_on)
        return;
    if (h) {
        log_safe(c->acc_method, sizeof(c->acc_method), h->method, h->method_len);
        log_safe(c->acc_path, sizeof(c->acc_path), h->url, h->url_len);
    } else {
        memcpy(c->acc_method, "-", 2);
        memcpy(c->acc_path, "-", 2);
    }
}

/* One line per exchange (gateway.access_log), whatever the log level: who, what, how it ended,
 * bytes each way (bodies), time to the response head and in all. */
static void access_line(struct gw_conn *c, int aborted)
{
    cm_usec_t now = cm_now_mono();
    double ttfb = c->t_head ? (double)(c->t_head - c->t_start) / 1000.0 : -1.0;
    const char *tenant = c->route ? c->route->tenant : "-";
    cm_log_write(CM_LOG_INFO, "access",
                 "exchange req=%s peer=%s proto=%s/%s method=%s path=%s status=%d tenant=%s "
                 "session=%s instance=%s in=%" PRIu64 " out=%" PRIu64 " ttfb_ms=%.3f "
                 "total_ms=%.3f%s",
                 gw_conn_req_id(c), c->peer, c->secure ? "https" : "http",
                 c->virt     ? "2"
                 : c->http10 ? "1.0"
                             : "1.1",
                 c->acc_method, c->acc_path, c->status, tenant,
                 c->key_len ? gw_conn_sess_hex(c) : "-", c->instance[0] ? c->instance : "-",
                 c->xfer_in, c->xfer_out, ttfb, (double)(now - c->t_start) / 1000.0,
                 aborted ? " end=aborted" : "");
}

void gw_exchange_end(struct gw_conn *c, int aborted)
{
    if (c->usage_on) {
        c->usage_on = 0;
        gw_usage_end(c->w->usage, c->session, cm_now_mono(), c->xfer_in, c->xfer_out);
    }
    if (!c->in_stream)
        return;
    c->in_stream = 0;
    GW_METRIC_ADD(&c->w->metrics, streams_active, -1);
    if (c->acc_on)
        access_line(c, aborted);
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

/* The request head of c->head_len bytes was found (parsed into <h> if <rc> is GW_H1_OK):
 * routes the exchange. */
void gw_exchange_begin(struct gw_conn *c, struct gw_h1_head *h, int rc)
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
    c->used_auto = c->released = c->resp_cut = 0;
    c->keyless_new = c->unproven = 0;
    c->cors = 0;
    c->held = 0;
    gw_exchange_reset_aux(c);
    c->body_bytes = 0;
    c->key_len = 0;
    c->req_keepalive = 0;
    c->instance[0] = '\0';
    c->status = 0;
    c->xfer_in = c->xfer_out = 0;
    c->t_head = 0;
    c->route = NULL;
    take_request_id(c, rc == GW_H1_OK ? h : NULL);
    access_begin(c, rc == GW_H1_OK ? h : NULL);
    GW_METRIC_INC(&w->metrics, requests);
    c->in_stream = 1;
    GW_METRIC_INC(&w->metrics, streams_active);
    if (rc != GW_H1_OK) {
        gw_conn_send_error(c,
                           rc == GW_H1_TOO_MANY  ? GW_ERR_HEADERS_TOO_LARGE
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
    if (c->route->rate && !gw_rate_take(c->route->rate, (uint64_t)cm_now_mono() * 1000)) {
        if (c->route->tenant_idx < GW_TENANT_SLOTS)
            GW_METRIC_INC(&w->metrics, tenant_request_rate[c->route->tenant_idx]);
        gw_conn_send_error(c, GW_ERR_TENANT_REQUEST_RATE, 0);
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
        memcmp(path, "/json", 5) == 0 && (path_len == 5 || path[5] == '/' || path[5] == '?') &&
        host_len) {
        c->cdp_path = 1;
        c->host = strndup(host, host_len);
    }
    /* No platform key: an alias may name the session. MCP Streamable HTTP: the server's id;
     * legacy MCP HTTP+SSE: POST /messages?sessionId=... */
    const char *alias = NULL, *q;
    size_t alias_len = 0;
    unsigned alias_kind = KEY_MCP;
    if (kr == GW_SKEY_NONE && mcp_id) {
        alias = mcp_id;
        alias_len = mcp_len;
    } else if (kr == GW_SKEY_NONE && c->route->legacy_sse &&
               (q = memchr(h->url, '?', h->url_len)) != NULL &&
               gw_skey_query(q + 1, h->url_len - (size_t)(q - h->url) - 1, &alias, &alias_len)) {
        alias_kind = KEY_SSE;
    } else {
        alias = NULL; /* gw_skey_query() may have set it before it refused */
    }
    if (alias) {
        if (!cm_key_valid(alias, alias_len)) {
            gw_conn_send_error(c, GW_ERR_INVALID_SESSION_KEY, 0);
            return;
        }
        c->kind = alias_kind;
        key = alias;
        key_len = alias_len;
    } else if (kr == GW_SKEY_NONE) {
        switch (c->route->no_key) {
        case GW_NO_KEY_REJECT:
            gw_conn_send_error(c, GW_ERR_SESSION_KEY_REQUIRED, 0);
            return;
        case GW_NO_KEY_ISSUE:
            if (cm_random_id(c->autok->key) < 0) {
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
            if (!c->autok->key[0] || c->autok->is_mcp) {
                if (cm_random_id(c->autok->key) < 0) {
                    gw_conn_send_error(c, GW_ERR_INTERNAL, 1);
                    return;
                }
                c->keyless_new = 1;
            }
            c->autok->is_mcp = 0;
            c->used_auto = 1;
            break;
        }
        key = c->autok->key;
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
        gw_up_forward(c, h);
        return;
    }
    gw_binding_claim(c);
}

void gw_exchange_finish(struct gw_conn *c)
{
    struct gw_worker *w = c->w;
    gw_stream_flush(&c->cs);
    gw_conn_drop_pending_head(c);
    int reusable = c->req_done && c->resp_keepalive && !c->upgrade_req;
    if (!c->req_done)
        c->close_after = 1;
    gw_upconn_release(c->up, reusable);
    c->up = NULL;
    gw_exchange_end(c, 0);
    gw_exchange_reset_aux(c);
    gw_conn_next(c, c->close_after || !c->req_keepalive || w->stopping);
}

/* The final response head went to the client: the request head is no longer needed for a
 * retry, and the response is counted. */
void gw_exchange_head_sent(struct gw_conn *c)
{
    c->t_head = cm_now_mono();
    gw_conn_drop_pending_head(c);
    gw_metrics_response(&c->w->metrics, c->status, c->t_head - c->t_start);
}

/* What the final response head <h> decides for the exchange. */
void gw_exchange_final_head(struct gw_conn *c, const struct gw_h1_head *h)
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
