#include "gateway/h1.h"

#include <event2/buffer.h>

#include <stddef.h>
#include <string.h>
#include <strings.h>

/* Byte classes (h1.h): SC_TCHAR a header name byte (RFC 9110 5.6.2 tchar), SC_VALUE a field value
 * byte we take (VCHAR, SP, HTAB: no obs-text, which gw_h1_parse_head() decides on), SC_URL a
 * request-target byte we take (RFC 3986 unreserved, gen-delims but '#', sub-delims, '%'). */
const uint8_t gw_h1_sc[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    2, 7, 2, 3, 7, 7, 7, 7, 6, 6, 7, 7, 6, 7, 7, 6,
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 2, 6, 2, 6,
    6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 2, 6, 3, 7,
    3, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 2, 3, 2, 7, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
};

/* The <n> bytes at <p> equal <lower>, a literal of lower-case letters and '-', ignoring ASCII
 * case. OR-ing 0x20 lower-cases a letter and turns no other byte a name or a value can hold
 * (no CR) into a letter or '-', so eight bytes compare at once. */
static inline int lc_eq(const char *p, const char *lower, size_t n)
{
    const uint64_t lc = 0x2020202020202020ull;
    uint64_t a, b;
    if (n >= 8) {
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            memcpy(&a, p + i, 8);
            memcpy(&b, lower + i, 8);
            if ((a | lc) != b)
                return 0;
        }
        if (i == n)
            return 1;
        memcpy(&a, p + n - 8, 8); /* the last eight, overlapping what was compared */
        memcpy(&b, lower + n - 8, 8);
        return (a | lc) == b;
    }
    for (size_t i = 0; i < n; i++)
        if ((char)(p[i] | 0x20) != lower[i])
            return 0;
    return 1;
}

/* <p> (<n> bytes of a header name or value) is <lower> (lower-case letters and '-'). */
static int name_is(const char *p, size_t n, const char *lower, size_t ln)
{
    return n == ln && lc_eq(p, lower, n);
}

void gw_h1_trim(const char **p, size_t *n)
{
    while (*n && ((*p)[0] == ' ' || (*p)[0] == '\t')) {
        (*p)++;
        (*n)--;
    }
    while (*n && ((*p)[*n - 1] == ' ' || (*p)[*n - 1] == '\t'))
        (*n)--;
}

#define HEAD(p) ((struct gw_h1_head *)(p)->data)

static int on_method(llhttp_t *p, const char *at, size_t len)
{
    struct gw_h1_head *h = HEAD(p);
    if (!h->method)
        h->method = at;
    h->method_len += (uint32_t)len;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    struct gw_h1_head *h = HEAD(p);
    if (!h->url)
        h->url = at;
    h->url_len += (uint32_t)len;
    return 0;
}

static int on_status(llhttp_t *p, const char *at, size_t len)
{
    struct gw_h1_head *h = HEAD(p);
    if (!h->reason)
        h->reason = at;
    h->reason_len += (uint32_t)len;
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct gw_h1_head *h = HEAD(p);
    if (h->in_value || h->n_headers == 0 || h->headers[h->n_headers - 1].value) {
        if (h->n_headers == h->max_headers) {
            h->err = GW_H1_TOO_MANY;
            return -1;
        }
        struct gw_h1_header *x = &h->headers[h->n_headers++];
        x->name = at;
        x->name_len = (uint32_t)len;
        x->value = NULL;
        x->value_len = 0;
        x->cls = 0;
        h->in_value = 0;
    } else {
        h->headers[h->n_headers - 1].name_len += (uint32_t)len;
    }
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct gw_h1_head *h = HEAD(p);
    struct gw_h1_header *x = &h->headers[h->n_headers - 1];
    if (!x->value)
        x->value = at;
    else if (at != x->value + x->value_len) {
        /* llhttp accepts obs-fold and reports the continuation as a second span: refuse it
         * (RFC 9112 5.2) rather than let the slice cover the CRLF. */
        h->err = GW_H1_BAD;
        return -1;
    }
    x->value_len += (uint32_t)len;
    h->in_value = 1;
    return 0;
}

/* Returns 0, or -1 when there are more Connection options than we can track: refusing is the
 * only safe answer, since an untracked option could name a header meant to stop here. */
static int add_conn_tokens(struct gw_h1_head *h, const char *v, size_t n)
{
    while (n) {
        const char *comma = memchr(v, ',', n);
        size_t tl = comma ? (size_t)(comma - v) : n;
        const char *t = v;
        size_t tn = tl;
        gw_h1_trim(&t, &tn);
        if (tn) {
            if (h->n_conn_tokens == GW_H1_MAX_CONN_TOKENS)
                return -1;
            h->conn_tokens[h->n_conn_tokens].p = t;
            h->conn_tokens[h->n_conn_tokens].len = (uint32_t)tn;
            h->n_conn_tokens++;
        }
        if (!comma)
            break;
        n -= tl + 1;
        v = comma + 1;
    }
    return 0;
}

/* Records what header <idx> is (the named indices, Connection options, its class). Returns 0
 * or the gw_h1_status the head must get. Shared by both parsers. */
static int note_header(struct gw_h1_head *h, int idx, int request)
{
    struct gw_h1_header *x = &h->headers[idx];
    const char *n = x->name;
    size_t nl = x->name_len;
    switch (nl) {
    case 2:
        if (name_is(n, nl, "te", 2)) {
            h->te = idx;
            x->cls = GW_H1_C_HOP;
        }
        break;
    case 4:
        if (name_is(n, nl, "host", 4)) {
            if (h->host >= 0) /* RFC 9112 3.2: more than one Host is a 400 */
                return GW_H1_BAD;
            h->host = idx;
        }
        break;
    case 6:
        if (name_is(n, nl, "cookie", 6)) {
            if (h->cookie < 0)
                h->cookie = idx;
        } else if (name_is(n, nl, "expect", 6)) {
            h->expect = idx;
        }
        break;
    case 7:
        if (name_is(n, nl, "upgrade", 7))
            x->cls = GW_H1_C_HOP | GW_H1_C_UPGRADE;
        else if (name_is(n, nl, "trailer", 7))
            x->cls = GW_H1_C_HOP;
        break;
    case 10:
        if (name_is(n, nl, "connection", 10)) {
            h->connection = idx;
            x->cls = GW_H1_C_HOP;
            if (add_conn_tokens(h, x->value, x->value_len) < 0)
                return GW_H1_BAD;
        } else if (name_is(n, nl, "keep-alive", 10)) {
            x->cls = GW_H1_C_HOP;
        }
        break;
    case 12:
        if (name_is(n, nl, "content-type", 12))
            h->content_type = idx;
        else if (name_is(n, nl, "x-request-id", 12))
            h->request_id = idx;
        break;
    case 13:
        if (name_is(n, nl, "authorization", 13))
            h->authorization = idx;
        break;
    case 14:
        if (name_is(n, nl, "content-length", 14)) {
            if (h->has_cl) /* llhttp also refuses; be explicit about the smuggling shape */
                return GW_H1_BAD_FRAMING;
            h->has_cl = 1;
            x->cls = GW_H1_C_CL;
        } else if (name_is(n, nl, "mcp-session-id", 14)) {
            x->cls = GW_H1_C_MCP;
        }
        break;
    case 15:
        if (name_is(n, nl, "x-forwarded-for", 15))
            h->xff = idx;
        break;
    case 16:
        if (name_is(n, nl, "proxy-connection", 16)) {
            x->cls = GW_H1_C_HOP;
            if (add_conn_tokens(h, x->value, x->value_len) < 0)
                return GW_H1_BAD;
        } else if (name_is(n, nl, "x-forwarded-host", 16)) {
            x->cls = GW_H1_C_XFH;
        }
        break;
    case 17:
        if (name_is(n, nl, "transfer-encoding", 17)) {
            x->cls = GW_H1_C_TE;
            if (request) {
                /* One header of exactly "chunked" (RFC 9112 6.1 lets a server refuse codings
                 * it does not know; 400 is allowed). llhttp 8 frames "cow, chunked" and
                 * "identity, chunked", and a second header, as chunked; an instance that
                 * knows no "cow", takes only the first header or reads a list differently
                 * frames the body another way. An empty value sets no llhttp flag but is no
                 * framing an instance agrees on either. */
                const char *v = x->value;
                size_t vn = x->value_len;
                gw_h1_trim(&v, &vn);
                if (h->has_te || !name_is(v, vn, "chunked", 7))
                    return GW_H1_BAD_FRAMING;
            }
            h->has_te = 1;
        } else if (name_is(n, nl, "x-forwarded-proto", 17)) {
            x->cls = GW_H1_C_XFP;
        }
        break;
    case 18:
        if (name_is(n, nl, "proxy-authenticate", 18))
            x->cls = GW_H1_C_HOP;
        break;
    case 19:
        if (name_is(n, nl, "proxy-authorization", 19))
            x->cls = GW_H1_C_HOP;
        break;
    default:
        break;
    }
    if (nl > 8 && lc_eq(n, "x-berth-", 8))
        x->cls |= GW_H1_C_BERTH;
    else if (nl > 15 && lc_eq(n, "access-control-", 15))
        x->cls |= GW_H1_C_CORS;
    return 0;
}

/* Marks the headers the Connection options name as hop-by-hop (RFC 9110 7.6.1), once the
 * whole head is known (an option may name a header that came before it). Connection must not
 * make us drop the framing or our own headers. */
static void mark_conn_named(struct gw_h1_head *h)
{
    for (uint32_t i = 0; i < h->n_conn_tokens; i++) {
        const char *t = h->conn_tokens[i].p;
        uint32_t tl = h->conn_tokens[i].len;
        if (name_is(t, tl, "content-length", 14) || name_is(t, tl, "transfer-encoding", 17) ||
            name_is(t, tl, "host", 4))
            continue;
        for (uint32_t k = 0; k < h->n_headers; k++) {
            struct gw_h1_header *x = &h->headers[k];
            if (x->name_len == tl && strncasecmp(x->name, t, tl) == 0) /* neither lower-case */
                x->cls |= GW_H1_C_HOP;
        }
    }
}

static int on_header_value_complete(llhttp_t *p)
{
    struct gw_h1_head *h = HEAD(p);
    int idx = (int)h->n_headers - 1;
    struct gw_h1_header *x = &h->headers[idx];
    if (!x->value)
        x->value = x->name + x->name_len; /* empty value: a zero-length slice */
    const char *n = x->name;
    size_t nl = x->name_len;
    /* llhttp accepts an empty name and spaces in and after names it has no rule for; a name
     * is a token and RFC 9112 5.1 requires a 400 for white space before the colon. */
    if (nl == 0 || memchr(n, ' ', nl) || n[nl - 1] == '\t') {
        h->err = GW_H1_BAD;
        return -1;
    }
    int rc = note_header(h, idx, p->type == HTTP_REQUEST);
    if (rc) {
        h->err = rc;
        return -1;
    }
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct gw_h1_head *h = HEAD(p);
    h->http_major = p->http_major;
    h->http_minor = p->http_minor;
    h->keep_alive = (uint8_t)llhttp_should_keep_alive(p);
    h->upgrade = p->upgrade;
    h->chunked = (p->flags & F_CHUNKED) ? 1 : 0;
    h->content_length = (p->flags & F_CONTENT_LENGTH) ? p->content_length : 0;
    if (p->type == HTTP_REQUEST) {
        h->method_id = p->method;
        /* llhttp takes what follows a CONNECT head as tunnel data whatever its framing says,
         * so a Content-Length body would be read as the next request (a desync with the
         * instance, which reads it as the body). A reverse proxy has no use for CONNECT. */
        if (p->method == HTTP_CONNECT) {
            h->err = GW_H1_CONNECT;
            return -1;
        }
        /* RFC 9112 6.1: a request whose transfer coding does not end in chunked has no
         * determinable length. llhttp says so only after this callback, which pauses. */
        if ((p->flags & F_TRANSFER_ENCODING) && !(p->flags & F_CHUNKED)) {
            h->err = GW_H1_BAD_FRAMING;
            return -1;
        }
    } else {
        h->status = p->status_code;
        if (h->status < 100) { /* llhttp takes any three digits; 0xx is no HTTP status */
            h->err = GW_H1_BAD;
            return -1;
        }
    }
    /* Stop right after the head so the caller decides what to do with the body. */
    return HPE_PAUSED;
}

void gw_h1_settings_init(llhttp_settings_t *s, llhttp_data_cb on_body, llhttp_cb on_complete)
{
    llhttp_settings_init(s);
    s->on_method = on_method;
    s->on_url = on_url;
    s->on_status = on_status;
    s->on_header_field = on_header_field;
    s->on_header_value = on_header_value;
    s->on_header_value_complete = on_header_value_complete;
    s->on_headers_complete = on_headers_complete;
    s->on_body = on_body;
    s->on_message_complete = on_complete;
}

/* Resets <head> but for its header array and limit. The Connection options array is not
 * cleared (n_conn_tokens counts what is valid): 256 bytes less to write per head. */
static void init_head(struct gw_h1_head *head)
{
    struct gw_h1_header *headers = head->headers;
    uint32_t max = head->max_headers;
    memset(head, 0, offsetof(struct gw_h1_head, conn_tokens));
    head->n_headers = 0;
    head->in_value = head->err = 0;
    head->headers = headers;
    head->max_headers = max;
    head->host = head->cookie = head->connection = head->te = head->expect = -1;
    head->content_type = head->xff = head->request_id = head->authorization = -1;
}

/* RFC 9112 3: request-line = method SP request-target SP HTTP-version CRLF, exactly: a token,
 * one SP, a target of visible ASCII (0x21-0x7E), one SP, "HTTP/" DIGIT "." DIGIT, CRLF; empty
 * lines (CRLF) before it are allowed (2.2). llhttp 8 also takes doubled spaces, a bare LF,
 * bytes >= 0x80 in the target, and a line without a version (HTTP/0.9), after which it waits
 * for header lines: such a client got its 400 only at header_timeout. Returns GW_H1_OK,
 * GW_H1_INCOMPLETE (the <n> bytes are a proper prefix of such a line) or GW_H1_BAD. */
static int check_request_line(const char *p, size_t n)
{
    size_t i = 0;
    while (i < n && p[i] == '\r') {
        if (i + 1 == n)
            return GW_H1_INCOMPLETE;
        if (p[i + 1] != '\n')
            return GW_H1_BAD;
        i += 2;
    }
    size_t from = i;
    while (i < n && (gw_h1_sc[(unsigned char)p[i]] & SC_TCHAR))
        i++;
    if (i == n)
        return GW_H1_INCOMPLETE;
    if (i == from || p[i] != ' ')
        return GW_H1_BAD;
    from = ++i;
    while (i < n && (unsigned char)p[i] - 0x21u < 0x5eu)
        i++;
    if (i == n)
        return GW_H1_INCOMPLETE;
    if (i == from || p[i] != ' ')
        return GW_H1_BAD;
    i++;
    static const char version[] = "HTTP/#.#\r\n"; /* '#': a digit */
    for (size_t k = 0; k < sizeof(version) - 1; k++, i++) {
        if (i == n)
            return GW_H1_INCOMPLETE;
        if (version[k] == '#' ? (unsigned)(p[i] - '0') > 9u : p[i] != version[k])
            return GW_H1_BAD;
    }
    return GW_H1_OK;
}

/* Each header of <h> is one line, name ":" OWS value OWS CRLF, up to the next one or the
 * blank line at <blank>. RFC 9112 5.2 makes a server reject obs-fold (a line starting with SP
 * or HTAB continues the previous one) or unfold it; we reject it. llhttp 8 accepts it, and when
 * the first line's value is empty ("Transfer-Encoding:" CRLF " chunked") it reports the
 * continuation as the value, so nothing but the bytes around the slices shows the fold: the
 * gateway read "chunked" (or a Host, a session key) that the instance may read unfolded,
 * differently, or not at all. */
static int one_line_each(const struct gw_h1_head *h, const char *blank)
{
    for (uint32_t i = 0; i < h->n_headers; i++) {
        const struct gw_h1_header *x = &h->headers[i];
        const char *p = x->name + x->name_len;
        const char *next = i + 1 < h->n_headers ? h->headers[i + 1].name : blank;
        if (p >= next || *p++ != ':')
            return 0;
        if (x->value_len) {
            while (p < x->value && (*p == ' ' || *p == '\t'))
                p++;
            if (p != x->value)
                return 0; /* the value starts on a later line */
            p += x->value_len;
        }
        while (p < next && (*p == ' ' || *p == '\t'))
            p++;
        if (next - p != 2 || p[0] != '\r' || p[1] != '\n')
            return 0;
    }
    return 1;
}

static int parse_head(llhttp_t *parser, struct gw_h1_head *head, const char *buf, size_t len,
                      int head_request)
{
    init_head(head);
    if (parser->type == HTTP_REQUEST) {
        int rc = check_request_line(buf, len);
        if (rc != GW_H1_OK)
            return rc;
    }
    parser->data = head;
    llhttp_errno_t e = llhttp_execute(parser, buf, len);
    if (e == HPE_PAUSED) {
        size_t used = (size_t)(llhttp_get_error_pos(parser) - buf);
        llhttp_resume(parser);
        if (used < 2 || !one_line_each(head, buf + used - 2))
            return GW_H1_BAD;
        if (head->upgrade && parser->type == HTTP_REQUEST &&
            (head->chunked || (head->has_cl && head->content_length > 0))) {
            /* An upgrade offer on a request with a body (h2c-style): we do not take it up;
             * the request goes on as an ordinary one (Upgrade is hop-by-hop anyway). */
            head->upgrade = 0;
        }
        if (head->upgrade && parser->type == HTTP_REQUEST) {
            /* Upgrade requests (WebSocket) are handled by the caller; no body framing. */
            head->body_done = 1;
            return used == len ? GW_H1_OK : GW_H1_BAD;
        }
        if (parser->type == HTTP_RESPONSE &&
            (head_request || head->status == 204 || head->status == 304 ||
             (head->status >= 100 && head->status < 200))) {
            head->body_done = 1;
            return used == len ? GW_H1_OK : GW_H1_BAD;
        }
        if (used != len)
            return GW_H1_BAD;
        /* A request without Content-Length or chunked has no body (RFC 9112 6.3). */
        if (parser->type == HTTP_REQUEST && !head->chunked && !head->has_cl)
            head->body_done = 1;
        if (head->has_cl && head->content_length == 0 && !head->chunked)
            head->body_done = 1;
        return GW_H1_OK;
    }
    if (head->err)
        return head->err;
    if (e == HPE_OK)
        return GW_H1_INCOMPLETE;
    if (e == HPE_UNEXPECTED_CONTENT_LENGTH || e == HPE_INVALID_TRANSFER_ENCODING ||
        e == HPE_INVALID_CONTENT_LENGTH)
        return GW_H1_BAD_FRAMING;
    return GW_H1_BAD;
}

int gw_h1_parse_head(llhttp_t *parser, const llhttp_settings_t *settings, struct gw_h1_head *head,
                     const char *buf, size_t len, int head_request)
{
    (void)settings;
    int rc = parse_head(parser, head, buf, len, head_request);
    if (rc == GW_H1_OK)
        mark_conn_named(head);
    return rc;
}

static int precheck_headers_complete(llhttp_t *p)
{
    (void)p;
    return HPE_USER; /* the head ended without CRLFCRLF: bare LF line ends */
}

int gw_h1_precheck(const char *buf, size_t len, int response)
{
    if (!response && check_request_line(buf, len) == GW_H1_BAD)
        return GW_H1_BAD;
    llhttp_t p;
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    s.on_headers_complete = precheck_headers_complete;
    llhttp_init(&p, response ? HTTP_RESPONSE : HTTP_REQUEST, &s);
    llhttp_errno_t e = llhttp_execute(&p, buf, len);
    if (e == HPE_OK || e == HPE_PAUSED)
        return GW_H1_INCOMPLETE;
    if (e == HPE_UNEXPECTED_CONTENT_LENGTH || e == HPE_INVALID_TRANSFER_ENCODING ||
        e == HPE_INVALID_CONTENT_LENGTH)
        return GW_H1_BAD_FRAMING;
    return GW_H1_BAD;
}

/* ------------------------------------------------------------------ gw_h1_scan */

static int method_id(const char *m, size_t n)
{
    switch (n) {
    case 3:
        if (memcmp(m, "GET", 3) == 0)
            return HTTP_GET;
        if (memcmp(m, "PUT", 3) == 0)
            return HTTP_PUT;
        break;
    case 4:
        if (memcmp(m, "POST", 4) == 0)
            return HTTP_POST;
        if (memcmp(m, "HEAD", 4) == 0)
            return HTTP_HEAD;
        break;
    case 5:
        if (memcmp(m, "PATCH", 5) == 0)
            return HTTP_PATCH;
        break;
    case 6:
        if (memcmp(m, "DELETE", 6) == 0)
            return HTTP_DELETE;
        break;
    case 7:
        if (memcmp(m, "OPTIONS", 7) == 0)
            return HTTP_OPTIONS;
        break;
    default:
        break;
    }
    return -1;
}

static int is_crlf(const char *p, const char *end)
{
    return end - p >= 2 && p[0] == '\r' && p[1] == '\n';
}

int gw_h1_scan(struct gw_h1_head *head, const char *buf, size_t avail, int response,
               int head_request, size_t *head_len)
{
    init_head(head);
    const char *p = buf, *end = buf + avail;
    if (!response) {
        const char *m = p;
        while (p < end && (unsigned)(*p - 'A') < 26u)
            p++;
        int id = method_id(m, (size_t)(p - m));
        if (id < 0 || p == end || *p != ' ')
            return GW_H1_DEFER;
        head->method = m;
        head->method_len = (uint32_t)(p - m);
        head->method_id = (uint8_t)id;
        const char *u = ++p;
        if (p == end || *p != '/')
            return GW_H1_DEFER;
        while (p < end && (gw_h1_sc[(unsigned char)*p] & SC_URL))
            p++;
        if (end - p < 11 || memcmp(p, " HTTP/1.1\r\n", 11) != 0)
            return GW_H1_DEFER;
        head->url = u;
        head->url_len = (uint32_t)(p - u);
        p += 11;
    } else {
        if (end - p < 13 || memcmp(p, "HTTP/1.1 ", 9) != 0)
            return GW_H1_DEFER;
        p += 9;
        if ((unsigned)(p[0] - '2') > 3u || (unsigned)(p[1] - '0') > 9u ||
            (unsigned)(p[2] - '0') > 9u || p[3] != ' ')
            return GW_H1_DEFER;
        head->status = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
        if (head->status == 204 || head->status == 304)
            return GW_H1_DEFER;
        p += 4;
        const char *r = p;
        while (p < end && (unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7f)
            p++;
        if (p == r || !is_crlf(p, end))
            return GW_H1_DEFER;
        head->reason = r;
        head->reason_len = (uint32_t)(p - r);
        p += 2;
    }
    head->http_major = head->http_minor = 1;
    int close = 0;
    for (;;) {
        if (p < end && *p == '\r') {
            if (!is_crlf(p, end))
                return GW_H1_DEFER;
            p += 2;
            break;
        }
        const char *name = p;
        while (p < end && (gw_h1_sc[(unsigned char)*p] & SC_TCHAR))
            p++;
        if (p == name || p == end || *p != ':')
            return GW_H1_DEFER;
        uint32_t nl = (uint32_t)(p - name);
        p++;
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        const char *v = p;
        while (p < end && (gw_h1_sc[(unsigned char)*p] & SC_VALUE))
            p++;
        if (!is_crlf(p, end))
            return GW_H1_DEFER;
        uint32_t vl = (uint32_t)(p - v);
        if (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
            return GW_H1_DEFER;
        p += 2;
        if (head->n_headers == head->max_headers)
            return GW_H1_DEFER;
        int idx = (int)head->n_headers++;
        struct gw_h1_header *x = &head->headers[idx];
        x->name = name;
        x->name_len = nl;
        x->value = vl ? v : name + nl; /* where gw_h1_parse_head() puts an empty value */
        x->value_len = vl;
        x->cls = 0;
        int had_connection = head->connection >= 0;
        if (note_header(head, idx, !response) != 0 || (x->cls & (GW_H1_C_TE | GW_H1_C_UPGRADE)))
            return GW_H1_DEFER;
        if (x->cls & GW_H1_C_CL) {
            if (vl == 0 || vl > 15)
                return GW_H1_DEFER;
            uint64_t n = 0;
            for (uint32_t i = 0; i < vl; i++) {
                if ((unsigned)(v[i] - '0') > 9u)
                    return GW_H1_DEFER;
                n = n * 10 + (uint64_t)(v[i] - '0');
            }
            if (!response && n > 0)
                return GW_H1_DEFER; /* a request body: llhttp frames it (no need to read on) */
            head->content_length = n;
        } else if (head->connection == idx) {
            if (had_connection)
                return GW_H1_DEFER;
            if (name_is(v, vl, "close", 5))
                close = 1;
            else if (!name_is(v, vl, "keep-alive", 10))
                return GW_H1_DEFER;
        } else if ((x->cls & GW_H1_C_HOP) && name_is(name, nl, "proxy-connection", 16)) {
            return GW_H1_DEFER;
        }
    }
    head->keep_alive = !close;
    if (!response) {
        head->body_done = 1; /* a body was deferred on at its Content-Length */
    } else {
        if (!head->has_cl)
            return GW_H1_DEFER; /* close-delimited: llhttp's EOF handling */
        head->body_done = head_request || head->content_length == 0;
    }
    mark_conn_named(head);
    *head_len = (size_t)(p - buf);
    return GW_H1_OK;
}

/* Runs <len> bytes of a message body through <p> (its body callbacks see them): returns how
 * many belong to the message, fewer than <len> when it ended in them (*ended = 1: a callback
 * paused the parser), or -1 with llhttp's error in *err. */
ssize_t gw_h1_body_step(llhttp_t *p, const char *data, size_t len, int *ended, llhttp_errno_t *err)
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

/* Offset of the "\r\n\r\n" ending the head at the start of <in> (<len> bytes), searching from
 * byte <scan> (what earlier calls searched, less 3) and no further than a head of <max> bytes
 * can reach; -1 if not there. The first bytes are made contiguous (nothing to do when the head
 * arrived in one read): evbuffer_search() costs several times more. */
ev_ssize_t gw_h1_head_end(struct evbuffer *in, size_t len, size_t scan, size_t max)
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
