#include "gateway/h1.h"

#include <string.h>
#include <strings.h>

static int name_is(const char *p, size_t n, const char *lower, size_t ln)
{
    return n == ln && gw_h1_ieq(p, lower, n);
}

int gw_h1_name_eq(const struct gw_h1_header *h, const char *lower_name, size_t n)
{
    return name_is(h->name, h->name_len, lower_name, n);
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
    switch (nl) {
    case 4:
        if (name_is(n, nl, "host", 4)) {
            if (h->host >= 0) { /* RFC 9112 3.2: more than one Host is a 400 */
                h->err = GW_H1_BAD;
                return -1;
            }
            h->host = idx;
        }
        break;
    case 2:
        if (name_is(n, nl, "te", 2))
            h->te = idx;
        break;
    case 6:
        if (name_is(n, nl, "cookie", 6) && h->cookie < 0)
            h->cookie = idx;
        else if (name_is(n, nl, "expect", 6))
            h->expect = idx;
        break;
    case 10:
        if (name_is(n, nl, "connection", 10)) {
            h->connection = idx;
            if (add_conn_tokens(h, x->value, x->value_len) < 0) {
                h->err = GW_H1_BAD;
                return -1;
            }
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
            if (h->has_cl) { /* llhttp also refuses; be explicit about the smuggling shape */
                h->err = GW_H1_BAD_FRAMING;
                return -1;
            }
            h->has_cl = 1;
        }
        break;
    case 15:
        if (name_is(n, nl, "x-forwarded-for", 15))
            h->xff = idx;
        break;
    case 17:
        if (p->type == HTTP_REQUEST && name_is(n, nl, "transfer-encoding", 17)) {
            /* an empty one sets no llhttp flag but is no framing an instance agrees on */
            const char *v = x->value;
            size_t vn = x->value_len;
            gw_h1_trim(&v, &vn);
            if (vn == 0) {
                h->err = GW_H1_BAD_FRAMING;
                return -1;
            }
        }
        break;
    case 16:
        if (name_is(n, nl, "proxy-connection", 16))
            if (add_conn_tokens(h, x->value, x->value_len) < 0) {
                h->err = GW_H1_BAD;
                return -1;
            }
        break;
    default:
        break;
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

int gw_h1_parse_head(llhttp_t *parser, const llhttp_settings_t *settings, struct gw_h1_head *head,
                     const char *buf, size_t len, int head_request)
{
    struct gw_h1_header *headers = head->headers;
    uint32_t max = head->max_headers;
    memset(head, 0, sizeof(*head));
    head->headers = headers;
    head->max_headers = max;
    head->host = head->cookie = head->connection = head->te = head->expect = -1;
    head->content_type = head->xff = head->request_id = head->authorization = -1;
    parser->data = head;
    (void)settings;
    llhttp_errno_t e = llhttp_execute(parser, buf, len);
    if (e == HPE_PAUSED) {
        size_t used = (size_t)(llhttp_get_error_pos(parser) - buf);
        llhttp_resume(parser);
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

static int precheck_headers_complete(llhttp_t *p)
{
    (void)p;
    return HPE_USER; /* the head ended without CRLFCRLF: bare LF line ends */
}

int gw_h1_precheck(const char *buf, size_t len, int response)
{
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

int gw_h1_is_hop(const struct gw_h1_head *head, const struct gw_h1_header *h)
{
    static const struct {
        const char *n;
        size_t l;
    } hop[] = {{"connection", 10},       {"keep-alive", 10},         {"proxy-connection", 16},
               {"te", 2},                {"trailer", 7},             {"upgrade", 7},
               {"proxy-authorization", 19}, {"proxy-authenticate", 18}};
    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
        if (name_is(h->name, h->name_len, hop[i].n, hop[i].l))
            return 1;
    for (uint32_t i = 0; i < head->n_conn_tokens; i++) {
        const char *t = head->conn_tokens[i].p;
        uint32_t tl = head->conn_tokens[i].len;
        /* Connection must not make us drop the framing or our own headers. */
        if (name_is(t, tl, "content-length", 14) || name_is(t, tl, "transfer-encoding", 17) ||
            name_is(t, tl, "host", 4))
            continue;
        if (h->name_len == tl && strncasecmp(h->name, t, tl) == 0) /* neither side lower-case */
            return 1;
    }
    return 0;
}
