/* MCP and keyless sessions on the exchange: aliases stored before the client sees them
 * (a minted Mcp-Session-Id, a legacy SSE endpoint's sessionId), sessions released by an MCP
 * DELETE, and keyless sessions that never started released at once. */
#include "gateway/conn_int.h"

#include <event2/buffer.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/redis.h"
#include "common/store.h"
#include "gateway/cache.h"
#include "gateway/metrics.h"
#include "gateway/rewrite.h"
#include "gateway/upstream.h"
#include "gateway/worker.h"

static void on_unused_released(redisReply *reply, const char *err, void *data)
{
    (void)data;
    if (err || !reply || reply->type == REDIS_REPLY_ERROR)
        cm_log_warn("conn", "cannot release an unused session err=%s",
                    err     ? err
                    : reply ? reply->str
                            : "no reply");
}

/* A session made for a keyless request whose answer did not start it (an error status
 * without an Mcp-Session-Id, or no answer at all): nobody can reach it again, so it must not hold
 * its instance until the idle timeout. Released at once (not waited for); the RELEASE script has
 * the instance destroyed, never handed to another session (it has seen a client's bytes),
 * and the scheduler refills the pool. The connection's next keyless request makes a new one. */
void gw_mcp_release_unused(struct gw_conn *c, const char *why)
{
    struct gw_worker *w = c->w;
    c->unproven = 0;
    c->issue_cookie = 0;
    if (c->used_auto)
        c->autok->key[0] = '\0';
    gw_cache_drop(w->cache, c->hash);
    char ms[24];
    snprintf(ms, sizeof(ms), "%" PRIu64, cm_now_wall_ms());
    const char *prefix = w->gc->common->redis.prefix;
    const char *argv[] = {prefix, gw_conn_sess_hex(c), c->route->tenant, "unused", ms};
    size_t lens[] = {strlen(prefix), CM_HASH_HEX_LEN, strlen(c->route->tenant), 6, strlen(ms)};
    GW_METRIC_INC(&w->metrics, sessions_unused);
    GW_XLOG(info, c,
            "keyless request did not start its session: released session=%s "
            "instance=%s why=\"%s\"",
            gw_conn_sess_hex(c), c->instance, why);
    if (cm_redis_script(w->redis, CM_SCRIPT_RELEASE, on_unused_released, NULL, 5, argv, lens) < 0)
        GW_XLOG(warn, c, "cannot release an unused session session=%s err=store",
                gw_conn_sess_hex(c));
}

int gw_mcp_sniff(struct gw_conn *c, const char *at, size_t len)
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
                GW_XLOG(info, c,
                        "no endpoint event in the first bytes of an SSE stream "
                        "session=%s bytes=%zu",
                        gw_conn_sess_hex(c), n);
                c->sniff = 0;
            }
            return 0;
        }
        if (is_endpoint && data && gw_rewrite_endpoint_id(data, data_len, &id, &id_len)) {
            c->sniff = 0;
            if (!cm_key_valid(id, id_len)) {
                GW_XLOG(warn, c, "endpoint event with an invalid session id session=%s",
                        gw_conn_sess_hex(c));
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

static void alias_failed(struct gw_conn *c, enum gw_err e)
{
    if (!c->resp_head_done)
        gw_conn_send_error(c, e, 1);
    else
        gw_conn_free(c); /* mid-stream: the client cannot use the endpoint, cut the stream */
}

/* A Redis operation the connection waited for answered: the connection, or NULL when it went
 * away meanwhile; its upstream reading may resume. */
static struct gw_conn *op_done(void *data)
{
    struct conn_op *op = data;
    struct gw_conn *c = op->c;
    free(op);
    if (c) {
        c->op = NULL;
        c->alias_pending = 0;
    }
    return c;
}

static void on_alias_stored(redisReply *reply, const char *err, void *data)
{
    struct gw_conn *c = op_done(data);
    if (!c)
        return;
    if (err || !reply || reply->type != REDIS_REPLY_INTEGER) {
        GW_XLOG(warn, c, "cannot store alias session=%s err=%s", gw_conn_sess_hex(c),
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
            c->autok->is_mcp = 1;
    } else {
        struct evbuffer *in = us->in;
        if (c->dechunk)
            evbuffer_drain(in, c->held);
        else
            evbuffer_remove_buffer(in, c->cs.out, c->held);
        GW_XFER_OUT(c, c->held);
        c->held = 0;
        llhttp_resume(&c->resp);
    }
    gw_up_relay(c);
}

/* Records c->alias_id (of <source>) as an alias of c's session before the client may use it;
 * upstream reading pauses meanwhile. */
void gw_mcp_store_alias(struct gw_conn *c, const char *source)
{
    struct gw_worker *w = c->w;
    struct cm_hash ah = cm_key_hash(c->route->tenant, source, c->alias_id, strlen(c->alias_id));
    char ahex[CM_HASH_HEX_LEN + 1];
    cm_hash_hex(ah, ahex);
    const char *prefix = w->gc->common->redis.prefix;
    const char *argv[] = {prefix, ahex, gw_conn_sess_hex(c)};
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
    GW_XLOG(debug, c, "alias source=%s session=%s", source, gw_conn_sess_hex(c));
}

static void on_released(redisReply *reply, const char *err, void *data)
{
    struct gw_conn *c = op_done(data);
    if (!c)
        return;
    if (err || !reply)
        GW_XLOG(warn, c, "cannot release session session=%s err=%s", gw_conn_sess_hex(c),
                err ? err : "no reply");
    if (!c->up)
        return;
    gw_stream_read_enable(gw_upconn_stream(c->up));
    gw_up_relay(c);
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
    const char *argv[] = {prefix, gw_conn_sess_hex(c), c->route->tenant, "deleted", ms};
    size_t lens[] = {strlen(prefix), CM_HASH_HEX_LEN, strlen(c->route->tenant), 7, strlen(ms)};
    c->released = 1;
    gw_cache_drop(w->cache, c->hash);
    gw_cache_drop(w->cache, c->session);
    GW_XLOG(info, c, "session released by MCP DELETE session=%s", gw_conn_sess_hex(c));
    struct conn_op *op = malloc(sizeof(*op));
    if (!op || cm_redis_script(w->redis, CM_SCRIPT_RELEASE, on_released, op, 5, argv, lens) < 0) {
        free(op);
        GW_XLOG(warn, c, "cannot release session session=%s err=store", gw_conn_sess_hex(c));
        return;
    }
    op->c = c;
    c->op = op;
    c->alias_pending = 1;
    gw_stream_read_disable(gw_upconn_stream(c->up));
}

/* The three rules a final response head settles before it reaches the client. */
int gw_mcp_on_resp_head(struct gw_conn *c, const struct gw_h1_head *h)
{
    if (!c->alias_done && c->route->mcp && !c->had_mcp_id) {
        /* MCP initialize: the server minted a session id; store the alias before the client
         * can send it to another gateway. */
        for (uint32_t i = 0; i < h->n_headers; i++) {
            const struct gw_h1_header *x = &h->headers[i];
            if (!(x->cls & GW_H1_C_MCP))
                continue;
            const char *v = x->value;
            size_t vn = x->value_len;
            gw_h1_trim(&v, &vn);
            if (!cm_key_valid(v, vn)) {
                GW_XLOG(warn, c, "instance sent an invalid Mcp-Session-Id instance=%s",
                        c->instance);
                break;
            }
            memcpy(c->alias_id, v, vn);
            c->alias_id[vn] = '\0';
            gw_mcp_store_alias(c, CM_KEY_SRC_MCP);
            return 1;
        }
    }
    if (c->kind == KEY_MCP && c->is_delete && h->status >= 200 && h->status < 300 &&
        c->route->mcp_delete_releases && !c->released) {
        release_session(c);
        if (c->alias_pending)
            return 1; /* on_released() relays again: the head is parsed anew */
    }
    if (c->unproven) {
        /* The answer to the keyless request its session was made for: a success starts the
         * session (the client has its key: a cookie, x-berth-session, the connection, or an
         * Mcp-Session-Id stored above); an error leaves nothing bound. */
        if (h->status >= 400 && !c->alias_done) {
            char why[32];
            snprintf(why, sizeof(why), "answered %d", h->status);
            gw_mcp_release_unused(c, why);
        } else {
            c->unproven = 0;
        }
    }
    return 0;
}
