/* CORS on routes the gateway handles it for: the Origin checked against the route's
 * cors_origins, preflights answered here (no session, no instance), the headers of answers. */
#include "gateway/conn_int.h"

#include <ctype.h>
#include <event2/buffer.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "common/log.h"
#include "gateway/h1.h"

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
    "access-control-expose-headers: mcp-session-id, mcp-protocol-version, x-berth-session, "       \
    "x-berth-instance, retry-after\r\n"

/* The CORS headers of an answer to an allowed Origin (c->cors), preflight or not. */
size_t gw_cors_headers(const struct gw_conn *c, char *buf, size_t cap)
{
    const char *o = c->route->cors_origins[c->cors - 1];
    int any = o[0] == '*';
    int n = snprintf(buf, cap, "access-control-allow-origin: %s\r\n%s" CORS_EXPOSE, o,
                     any ? "" : "access-control-allow-credentials: true\r\n");
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

/* The answer to a preflight the gateway handles itself (see gw_cors_request()). */
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
        gw_conn_send_error(c, GW_ERR_BAD_REQUEST, 0);
        return;
    }
    if (!c->cors) {
        GW_XLOG(debug, c, "CORS preflight from an origin not allowed route=%s", c->route->name);
        gw_conn_send_error(c, GW_ERR_ORIGIN_NOT_ALLOWED, 0);
        return;
    }
    int close = !c->req_done || !c->req_keepalive;
    /* the request headers' names: bounded by max_header_bytes, so built in an evbuffer */
    struct evbuffer *f = evbuffer_new();
    char cors[512];
    if (!f) {
        gw_conn_send_error(c, GW_ERR_INTERNAL, 1);
        return;
    }
    evbuffer_add(f, cors, gw_cors_headers(c, cors, sizeof(cors)));
    evbuffer_add_printf(f,
                        "access-control-allow-methods: %.*s\r\n"
                        "access-control-max-age: %u\r\n"
                        "vary: origin, access-control-request-method, "
                        "access-control-request-headers\r\n"
                        "cache-control: no-store\r\n",
                        (int)mn, m, c->route->cors_max_age);
    if (rhn)
        evbuffer_add_printf(f, "access-control-allow-headers: %.*s\r\n", (int)rhn, rh);
    size_t fl = evbuffer_get_length(f);
    const char *fields = (const char *)evbuffer_pullup(f, -1);
    if (!fields) {
        evbuffer_free(f);
        gw_conn_send_error(c, GW_ERR_INTERNAL, 1);
        return;
    }
    c->down->answer(c, 204, fields, fl, NULL, 0, close);
    evbuffer_free(f);
    gw_conn_drop_pending_head(c);
    gw_conn_answered(c, 204, close);
}

/* Routes with CORS handled by the gateway (MCP routes, and any with cors_origins): notes
 * whether the request's Origin is allowed (its answer then carries the CORS headers, the
 * instance's own replaced), and answers a preflight (OPTIONS with Origin and
 * Access-Control-Request-Method) itself: no session is claimed and no instance sees it, so
 * a browser's preflights never bind sandboxes. Returns 1 when the request was answered. */
int gw_cors_request(struct gw_conn *c, const struct gw_h1_head *h)
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
