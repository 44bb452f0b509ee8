/* Fuzz target: gateway/h1.c driven the way gateway/conn.c drives it. Each input is one side of
 * a connection (client requests or instance responses): the head is found by its CRLFCRLF,
 * prechecked while incomplete, parsed with the gateway's head settings, then the body runs
 * through the same parser with body callbacks (in pieces, as reads deliver it), then the next
 * pipelined message, a few times over.
 *
 * Input: byte 0 selects the side (bit 0: responses), "response to HEAD" (bit 1) and the header
 * limit (bits 2-4); byte 1 seeds where the body is split; the rest is the stream.
 *
 * Beyond "no crash, no leak, no hang" it checks what conn.c relies on: slices lie inside the
 * head, indices name the right headers, Connection tokens are trimmed non-empty tokens, no
 * header value spans a line break, a head that parses had no earlier prefix refused by the
 * precheck, framing is consistent (never Content-Length with chunked, bodiless when it must
 * be, a request's Transfer-Encoding one header of exactly "chunked"), a Content-Length
 * body is exactly that long, and where llhttp and our chunked framing check
 * (gw_h1_chunked_step) both take a chunked request body they end it at the same byte. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gateway/h1.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_MESSAGES 8

static struct gw_h1_header headers[1000];

struct body_state {
    const char *lo, *hi; /* the bytes being fed */
    uint64_t bytes;
    int complete;
};

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, "fuzz_h1: " __VA_ARGS__);                                                  \
        fprintf(stderr, "\n");                                                                     \
        abort();                                                                                   \
    } while (0)

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct body_state *b = p->data;
    if (at < b->lo || at + len > b->hi)
        FAIL("body slice outside the input");
    b->bytes += len;
    return 0;
}

static int on_complete(llhttp_t *p)
{
    struct body_state *b = p->data;
    b->complete = 1;
    return HPE_PAUSED; /* as conn.c: stop at the end of the message */
}

static const char *find_crlfcrlf(const char *p, size_t n)
{
    for (size_t i = 0; i + 4 <= n; i++)
        if (p[i] == '\r' && p[i + 1] == '\n' && p[i + 2] == '\r' && p[i + 3] == '\n')
            return p + i;
    return NULL;
}

static int inside(const char *p, size_t n, const char *lo, size_t len)
{
    return p && p >= lo && p + n <= lo + len;
}

static int is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static void check_head(const struct gw_h1_head *h, const char *buf, size_t len, int response)
{
    if (h->n_headers > h->max_headers)
        FAIL("%u headers over the limit %u", h->n_headers, h->max_headers);
    for (uint32_t i = 0; i < h->n_headers; i++) {
        const struct gw_h1_header *x = &h->headers[i];
        if (x->name_len == 0)
            FAIL("header %u has an empty name", i);
        if (!inside(x->name, x->name_len, buf, len))
            FAIL("header %u name outside the head", i);
        if (!inside(x->value, x->value_len, buf, len))
            FAIL("header %u value outside the head", i);
        for (uint32_t k = 0; k < x->value_len; k++)
            if (x->value[k] == '\r' || x->value[k] == '\n')
                FAIL("header %u (%.*s) value spans a line break", i, (int)x->name_len, x->name);
        for (uint32_t k = 0; k < x->name_len; k++)
            if ((unsigned char)x->name[k] <= 0x20 || x->name[k] == ':' ||
                (unsigned char)x->name[k] >= 0x7f)
                FAIL("header %u name has a non-token byte 0x%02x", i,
                     (unsigned char)x->name[k]);
        int hop = gw_h1_is_hop(h, x);
        if (hop != 0 && hop != 1)
            FAIL("gw_h1_is_hop returned %d", hop);
        if (hop && (gw_h1_name_eq(x, "content-length", 14) ||
                    gw_h1_name_eq(x, "transfer-encoding", 17) || gw_h1_name_eq(x, "host", 4)))
            FAIL("framing or Host treated as hop-by-hop");
        if (gw_h1_name_eq(x, "connection", 10) && !hop)
            FAIL("Connection not hop-by-hop");
    }
    const struct {
        int idx;
        const char *name;
    } named[] = {{h->host, "host"},
                 {h->cookie, "cookie"},
                 {h->connection, "connection"},
                 {h->te, "te"},
                 {h->expect, "expect"},
                 {h->content_type, "content-type"},
                 {h->xff, "x-forwarded-for"},
                 {h->request_id, "x-request-id"},
                 {h->authorization, "authorization"}};
    for (size_t i = 0; i < sizeof(named) / sizeof(named[0]); i++) {
        int idx = named[i].idx;
        if (idx == -1)
            continue;
        if (idx < 0 || (uint32_t)idx >= h->n_headers)
            FAIL("index of %s out of range: %d", named[i].name, idx);
        if (!gw_h1_name_eq(&h->headers[idx], named[i].name, strlen(named[i].name)))
            FAIL("index of %s names another header", named[i].name);
    }
    if (h->n_conn_tokens > GW_H1_MAX_CONN_TOKENS)
        FAIL("too many connection tokens");
    for (uint32_t i = 0; i < h->n_conn_tokens; i++) {
        const char *t = h->conn_tokens[i].p;
        uint32_t tl = h->conn_tokens[i].len;
        if (tl == 0 || !inside(t, tl, buf, len))
            FAIL("connection token %u outside the head", i);
        if (is_ows(t[0]) || is_ows(t[tl - 1]) || memchr(t, ',', tl))
            FAIL("connection token %u not trimmed: \"%.*s\"", i, (int)tl, t);
    }
    if (!response) {
        if (!inside(h->method, h->method_len, buf, len) || h->method_len == 0)
            FAIL("method outside the head");
        /* llhttp reports an empty target for "CONNECT   " (HTTP/0.9 shape; conn.c: 400) */
        if (h->url_len && !inside(h->url, h->url_len, buf, len))
            FAIL("url outside the head");
    } else {
        if (h->status < 100 || h->status > 999)
            FAIL("status %d", h->status);
        if (h->reason_len && !inside(h->reason, h->reason_len, buf, len))
            FAIL("reason outside the head");
    }
    if (h->keep_alive > 1 || h->chunked > 1 || h->has_cl > 1 || h->body_done > 1)
        FAIL("flag not 0/1");
    if (h->has_cl && h->chunked)
        FAIL("Content-Length and chunked both accepted");
    if (!h->has_cl && h->content_length)
        FAIL("content_length without Content-Length");
    if (h->has_cl && h->content_length == 0 && !h->body_done)
        FAIL("Content-Length: 0 but a body expected");
    if (!response && !h->chunked && !h->has_cl && !h->body_done)
        FAIL("request without framing but a body expected");
    if (response && (h->status == 204 || h->status == 304 || h->status < 200) && !h->body_done)
        FAIL("status %d with a body", h->status);
    if (!response && ((h->has_cl && h->content_length > 0) || h->chunked) && h->body_done)
        FAIL("request announces a body (Content-Length %llu, chunked %d) but body_done is set",
             (unsigned long long)h->content_length, h->chunked);
    int n_te = 0;
    for (uint32_t i = 0; i < h->n_headers && !response; i++) {
        const struct gw_h1_header *x = &h->headers[i];
        if (!gw_h1_name_eq(x, "transfer-encoding", 17))
            continue;
        if (!h->chunked)
            FAIL("request with a Transfer-Encoding not ending in chunked accepted (RFC 9112 6.1)");
        const char *v = x->value;
        size_t vn = x->value_len;
        gw_h1_trim(&v, &vn);
        if (++n_te > 1 || vn != 7 || strncasecmp(v, "chunked", 7) != 0)
            FAIL("request Transfer-Encoding other than one \"chunked\" accepted: %.*s", (int)vn, v);
    }
    /* Every header a Connection (or Proxy-Connection) option names is hop-by-hop, however
     * many options there are (RFC 9110 7.6.1), except the framing and Host. */
    for (uint32_t i = 0; i < h->n_headers; i++) {
        const struct gw_h1_header *c = &h->headers[i];
        if (!gw_h1_name_eq(c, "connection", 10) && !gw_h1_name_eq(c, "proxy-connection", 16))
            continue;
        const char *v = c->value, *vend = c->value + c->value_len;
        while (v < vend) {
            const char *comma = memchr(v, ',', (size_t)(vend - v));
            const char *t = v, *tend = comma ? comma : vend;
            while (t < tend && is_ows(*t))
                t++;
            while (tend > t && is_ows(tend[-1]))
                tend--;
            struct gw_h1_header tok = {.name = t, .name_len = (uint32_t)(tend - t)};
            if (tok.name_len && !gw_h1_name_eq(&tok, "content-length", 14) &&
                !gw_h1_name_eq(&tok, "transfer-encoding", 17) && !gw_h1_name_eq(&tok, "host", 4))
                for (uint32_t k = 0; k < h->n_headers; k++)
                    if (h->headers[k].name_len == tok.name_len &&
                        strncasecmp(h->headers[k].name, t, tok.name_len) == 0 &&
                        !gw_h1_is_hop(h, &h->headers[k]))
                        FAIL("%.*s is named by Connection but not hop-by-hop",
                             (int)tok.name_len, t);
            if (!comma)
                break;
            v = comma + 1;
        }
    }
}

/* Parses one message at <p> (of <n> bytes). Returns the bytes it used, or 0 to stop. */
static size_t one_message(const char *p, size_t n, int response, int head_request,
                          uint32_t max_headers, unsigned split_seed)
{
    const char *end = find_crlfcrlf(p, n);
    if (!end) {
        /* conn.c prechecks what it has so garbage gets its 400 before the timeout */
        int rc = gw_h1_precheck(p, n, response);
        if (rc != GW_H1_INCOMPLETE && rc != GW_H1_BAD && rc != GW_H1_BAD_FRAMING)
            FAIL("precheck returned %d", rc);
        return 0;
    }
    size_t head_len = (size_t)(end - p) + 4;
    llhttp_settings_t head_settings, body_settings;
    gw_h1_settings_init(&head_settings, NULL, NULL);
    llhttp_settings_init(&body_settings);
    body_settings.on_body = on_body;
    body_settings.on_message_complete = on_complete;
    llhttp_t parser;
    llhttp_init(&parser, response ? HTTP_RESPONSE : HTTP_REQUEST, &head_settings);
    struct gw_h1_head h;
    h.headers = headers;
    h.max_headers = max_headers;
    int rc = gw_h1_parse_head(&parser, &head_settings, &h, p, head_len, head_request);
    if (rc != GW_H1_OK && rc != GW_H1_INCOMPLETE && rc != GW_H1_BAD && rc != GW_H1_TOO_MANY &&
        rc != GW_H1_BAD_FRAMING && rc != GW_H1_CONNECT)
        FAIL("parse_head returned %d", rc);
    if (rc != GW_H1_OK)
        return 0;
    check_head(&h, p, head_len, response);
    /* No proper prefix of a head that parses may have been refused by the precheck. */
    size_t probes[] = {head_len - 1, head_len - 2, head_len / 2, 1};
    for (size_t i = 0; i < sizeof(probes) / sizeof(probes[0]); i++) {
        size_t k = probes[i];
        if (k == 0 || k >= head_len)
            continue;
        int pre = gw_h1_precheck(p, k, response);
        if (pre != GW_H1_INCOMPLETE)
            FAIL("precheck refused (%d) a %zu-byte prefix of a %zu-byte head that parses", pre,
                 k, head_len);
    }
    if (h.body_done)
        return head_len;

    /* The body, through the same parser, in pieces; a chunked request's pieces through our
     * framing check first, llhttp seeing only what it takes (as conn.c). */
    struct body_state b = {.lo = p + head_len, .hi = p + n};
    parser.settings = (void *)&body_settings;
    parser.data = &b;
    const char *q = p + head_len, *qend = p + n;
    int checked = !response && h.chunked;
    struct gw_h1_chunked ck;
    gw_h1_chunked_init(&ck, 64 << (split_seed & 3), 4096);
    unsigned seed = split_seed * 2654435761u + 1;
    while (q < qend && !b.complete) {
        seed = seed * 1103515245u + 12345u;
        size_t piece = 1 + (seed >> 16) % 4096;
        if (piece > (size_t)(qend - q))
            piece = (size_t)(qend - q);
        if (checked) {
            ssize_t k = gw_h1_chunked_step(&ck, q, piece);
            if (k < 0)
                return 0; /* conn.c: 400, nothing of the piece forwarded */
            if ((size_t)k > piece || ((size_t)k < piece && !gw_h1_chunked_done(&ck)))
                FAIL("chunked check took %zd of %zu bytes", k, piece);
            piece = (size_t)k;
        }
        llhttp_errno_t e = llhttp_execute(&parser, q, piece);
        if (e == HPE_PAUSED) {
            const char *at = llhttp_get_error_pos(&parser);
            if (!b.complete || at < q || at > q + piece)
                FAIL("paused outside the message end");
            /* Both take the body: they must end it at the same byte (conn.c refuses a
             * disagreement, but either side being wrong is a bug to know of). */
            if (checked && (!gw_h1_chunked_done(&ck) || at != q + piece))
                FAIL("llhttp ended a chunked body where our check does not");
            q = at;
            break;
        }
        if (e != HPE_OK)
            return 0; /* conn.c: 400 (request) or cut (response) */
        if (checked && gw_h1_chunked_done(&ck))
            FAIL("our check ended a chunked body llhttp goes on with");
        q += piece;
    }
    if (!b.complete) {
        /* conn.c ends a close-delimited body with llhttp_finish() at the instance's EOF. With
         * no body byte executed since the pause after the head, llhttp still thinks it is in
         * the head and answers HPE_INVALID_EOF_STATE (conn.c ignores the result). */
        if (response && !h.chunked && !h.has_cl) { /* as conn.c, from the head */
            llhttp_errno_t e = llhttp_finish(&parser);
            if (e != HPE_OK && e != HPE_PAUSED &&
                !(e == HPE_INVALID_EOF_STATE && q == p + head_len))
                FAIL("finish of a close-delimited body: %s", llhttp_errno_name(e));
        }
        return 0;
    }
    if (h.has_cl && b.bytes != h.content_length)
        FAIL("Content-Length %llu but %llu body bytes", (unsigned long long)h.content_length,
             (unsigned long long)b.bytes);
    return (size_t)(q - p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    int response = data[0] & 1;
    int head_request = (data[0] >> 1) & 1;
    static const uint32_t limits[8] = {8, 16, 32, 64, 100, 200, 500, 1000};
    uint32_t max_headers = limits[(data[0] >> 2) & 7];
    unsigned seed = data[1];
    /* An exact-size copy keeps reads past the end visible to ASan. */
    size_t n = size - 2;
    char *buf = malloc(n ? n : 1);
    if (!buf)
        return 0;
    memcpy(buf, data + 2, n);
    size_t off = 0;
    for (int m = 0; m < MAX_MESSAGES && off < n; m++) {
        size_t used = one_message(buf + off, n - off, response, head_request, max_headers,
                                  seed + (unsigned)m);
        if (used == 0)
            break;
        off += used;
    }
    free(buf);
    return 0;
}
