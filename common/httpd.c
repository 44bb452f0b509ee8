#include "httpd.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <llhttp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "json.h"

/* Bytes handed to llhttp per call: bounds the copy evbuffer_pullup() may make of a body that
 * arrived in many chunks. */
#define FEED_MAX 16384
/* After an answer that closes the connection we read and discard what the client still sends
 * for at most this long, so that closing with unread bytes (which sends a reset) does not
 * destroy the answer on its way (a 413 to an upload in flight). */
#define LINGER_USEC (2 * CM_USEC_PER_SEC)
/* Accept failed (out of descriptors): the listener pauses this long instead of spinning. */
#define ACCEPT_PAUSE_USEC (100 * CM_USEC_PER_MSEC)
/* Answers queued and not yet written, bytes: above this no further pipelined request is
 * parsed until the client has read them (a client that sends and never reads must not fill
 * our memory; the timer armed at the last answer then closes it). */
#define OUT_HIGH (256 * 1024)
/* A streamed answer's drain callback runs once no more than this is queued. */
#define STREAM_LOW (16 * 1024)
#define NO_OFF UINT32_MAX
/* Buckets of the table of connections per client address and per owner (chained). */
#define QUOTA_BUCKETS 256

/* How many connections one client address (not yet held) or one owner has open. */
struct quota {
    struct quota *next;
    uint32_t n;
    uint16_t len;
    unsigned char key[]; /* 'A' and an address, or 'O' and an owner's name */
};

struct hdr {
    uint32_t name, name_len, value, value_len; /* offsets into the arena; value NO_OFF: "" */
};

enum cstate {
    C_IDLE,      /* between requests: no byte of the next one yet */
    C_READING,   /* a request begun */
    C_PENDING,   /* complete: the handler has it */
    C_STREAMING, /* the handler answers in chunks (cm_httpd_stream_begin()) */
    C_BODY,      /* the handler has the request; its body streams to it (cm_httpd_body_stream) */
    C_CLOSING,   /* the last answer is queued: close once it is written */
    C_LINGER,    /* written and shut down for writing: discard input until EOF or the timer */
};

struct cm_httpd_req {
    struct hconn *c;
    char *arena; /* the target, header names and values, each NUL-terminated */
    size_t alen, acap;
    struct hdr *hdrs;
    size_t n_hdrs, hcap;
    enum { P_NONE, P_URL, P_FIELD, P_VALUE } part;
    uint32_t url, path, query; /* offsets; query NO_OFF: none */
    char *body;
    size_t blen, bcap;
    struct evbuffer *out; /* headers the handler added */
    cm_httpd_close_cb close_cb;
    void *close_arg;
    cm_httpd_drain_cb drain_cb; /* streaming: what waits for the output to drain */
    void *drain_arg;
    uint8_t chunked; /* streaming with chunked framing (HTTP/1.1) */
    uint8_t streamed;    /* the head callback took its body as a stream */
    uint8_t body_paused; /* its body callback asked for a pause */
    cm_httpd_body_cb body_cb;
    void *body_arg;
    int err_status; /* set by a parser callback that refused the request */
    const char *err_code, *err_msg;
    uint8_t method, http10, head, keep; /* set when complete */
};

struct hconn {
    struct hconn *prev, *next;
    struct cm_httpd *h;
    struct bufferevent *bev;
    struct event *timer;
    struct event *resume; /* parses what was pipelined, on the loop turn after an answer */
    llhttp_t parser;
    enum cstate state;
    int processing; /* process() is on the stack: freeing waits for it */
    int dead;       /* to be freed when process() returns */
    int headers_done, message_done, close_after;
    int head_dispatch;        /* the head of a streamed-body request is complete: dispatch it now */
    size_t head_raw;          /* bytes of the current head fed so far */
    cm_usec_t req_start;      /* monotonic: the first byte of the current request */
    struct quota *addr_q;     /* counted against its client address (until held), or NULL */
    struct quota *owner_q;    /* counted against its owner (cm_httpd_hold()), or NULL */
    struct cm_httpd_req *req; /* reused; left to its handler if the client goes away */
};

struct lsn {
    struct lsn *next;
    struct evconnlistener *l;
    struct event *pause;
};

struct cm_httpd {
    struct event_base *base;
    struct cm_httpd_limits lim;
    cm_httpd_request_cb cb;
    void *arg;
    struct lsn *listeners;
    struct hconn *conns;
    size_t n_conns;
    struct quota *quotas[QUOTA_BUCKETS];
    llhttp_settings_t settings;
    cm_httpd_head_cb head_cb;
};

static void process(struct hconn *c);

/* --- connections per address and per owner ------------------------------------------------ */

static size_t quota_bucket(const unsigned char *key, size_t len)
{
    uint32_t x = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        x = (x ^ key[i]) * 16777619u;
    return x % QUOTA_BUCKETS;
}

static struct quota *quota_find(struct cm_httpd *h, const unsigned char *key, size_t len)
{
    for (struct quota *q = h->quotas[quota_bucket(key, len)]; q; q = q->next)
        if (q->len == len && memcmp(q->key, key, len) == 0)
            return q;
    return NULL;
}

/* The entry of <key> with one more connection counted (made when absent), or NULL when out
 * of memory. */
static struct quota *quota_take(struct cm_httpd *h, const unsigned char *key, size_t len)
{
    struct quota *q = quota_find(h, key, len);
    if (!q) {
        q = calloc(1, sizeof(*q) + len);
        if (!q)
            return NULL;
        q->len = (uint16_t)len;
        memcpy(q->key, key, len);
        size_t b = quota_bucket(key, len);
        q->next = h->quotas[b];
        h->quotas[b] = q;
    }
    q->n++;
    return q;
}

/* One connection fewer for <q> (freed at none). Takes NULL. */
static void quota_release(struct cm_httpd *h, struct quota *q)
{
    if (!q || --q->n > 0)
        return;
    struct quota **pp = &h->quotas[quota_bucket(q->key, q->len)];
    while (*pp != q)
        pp = &(*pp)->next;
    *pp = q->next;
    free(q);
}

/* The key of a client address: IPv4 whole, IPv6 its /64 (what one host is usually given, so
 * that one host cannot count as 2^64 clients). Returns its length, 0 for other families. */
static size_t addr_key(const struct sockaddr *sa, unsigned char key[17])
{
    key[0] = 'A';
    if (sa && sa->sa_family == AF_INET) {
        memcpy(key + 1, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return 5;
    }
    if (sa && sa->sa_family == AF_INET6) {
        const unsigned char *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
        static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(a, v4mapped, 12) == 0) {
            memcpy(key + 1, a + 12, 4);
            return 5;
        }
        memcpy(key + 1, a, 8);
        key[9] = '6';
        return 10;
    }
    return 0;
}

/* --- connection lifetime ------------------------------------------------------------------ */

static void req_free(struct cm_httpd_req *r)
{
    if (!r)
        return;
    if (r->out)
        evbuffer_free(r->out);
    free(r->arena);
    free(r->hdrs);
    free(r->body);
    free(r);
}

static void conn_free(struct hconn *c)
{
    struct cm_httpd *h = c->h;
    if (c->processing) {
        c->dead = 1;
        return;
    }
    if ((c->state == C_PENDING || c->state == C_STREAMING || c->state == C_BODY) && c->req) {
        /* The handler has it: with a close callback it learns now and the request goes;
         * without, the request waits for its answer, which then only frees it. */
        struct cm_httpd_req *r = c->req;
        r->c = NULL;
        if (r->close_cb) {
            cm_httpd_close_cb cb = r->close_cb;
            r->close_cb = NULL;
            cb(r->close_arg);
            req_free(r);
        }
    } else {
        req_free(c->req);
    }
    c->req = NULL;
    if (c->prev)
        c->prev->next = c->next;
    else
        h->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    h->n_conns--;
    quota_release(h, c->addr_q);
    quota_release(h, c->owner_q);
    if (c->bev)
        bufferevent_free(c->bev);
    if (c->timer)
        event_free(c->timer);
    if (c->resume)
        event_free(c->resume);
    free(c);
}

/* Returns 0, or -1 after closing <c> (an unbounded wait is worse than a lost connection). */
static int arm(struct hconn *c, cm_usec_t usec)
{
    struct timeval tv;
    cm_usec_to_tv(usec, &tv);
    if (evtimer_add(c->timer, &tv) == 0)
        return 0;
    conn_free(c);
    return -1;
}

static void request_reset(struct hconn *c)
{
    struct cm_httpd_req *r = c->req;
    r->alen = 0;
    r->n_hdrs = 0;
    r->part = P_NONE;
    r->url = r->path = 0;
    r->query = NO_OFF;
    r->blen = 0;
    r->close_cb = NULL;
    r->close_arg = NULL;
    r->drain_cb = NULL;
    r->drain_arg = NULL;
    r->chunked = 0;
    r->streamed = r->body_paused = 0;
    r->body_cb = NULL;
    r->body_arg = NULL;
    r->err_status = 0;
    if (r->out)
        evbuffer_drain(r->out, evbuffer_get_length(r->out));
    c->headers_done = c->message_done = 0;
    c->head_raw = 0;
}

/* --- answers ------------------------------------------------------------------------------ */

/* <len> SIZE_MAX: a streamed body (chunked for HTTP/1.1, until the close for HTTP/1.0). */
static int queue_answer(struct hconn *c, int status, const char *ctype, const char *body,
                        size_t len, int keep, int head)
{
    struct evbuffer *o = bufferevent_get_output(c->bev);
    int bodyless = status == 204 || status == 304;
    int http10 = c->state == C_PENDING && c->req->http10;
    if (evbuffer_add_printf(o, "HTTP/1.1 %d %s\r\n", status, cm_http_reason(status)) < 0)
        return -1;
    if (ctype && !bodyless && evbuffer_add_printf(o, "Content-Type: %s\r\n", ctype) < 0)
        return -1;
    if (len == SIZE_MAX) {
        if (!http10 && evbuffer_add(o, "Transfer-Encoding: chunked\r\n", 28) < 0)
            return -1;
        len = 0;
    } else if (!bodyless && evbuffer_add_printf(o, "Content-Length: %zu\r\n", len) < 0) {
        return -1;
    }
    if (c->req->out && evbuffer_add_buffer(o, c->req->out) < 0)
        return -1;
    const char *conn = !keep ? "Connection: close\r\n" : http10 ? "Connection: keep-alive\r\n" : "";
    if (evbuffer_add(o, conn, strlen(conn)) < 0 || evbuffer_add(o, "\r\n", 2) < 0)
        return -1;
    if (len && !bodyless && !head && evbuffer_add(o, body, len) < 0)
        return -1;
    return 0;
}

static void finish_closing(struct hconn *c)
{
    c->state = C_CLOSING;
    bufferevent_disable(c->bev, EV_READ);
    (void)arm(c, c->h->lim.timeout);
}

/* {"error":{"code":<code>,"message":<msg>}} into <b> (initialised by the caller). */
static void error_json(struct cm_jbuf *b, const char *code, const char *msg)
{
    cm_jbuf_raw(b, "{\"error\":{\"code\":", 17);
    cm_jbuf_cstr(b, code);
    cm_jbuf_raw(b, ",\"message\":", 11);
    cm_jbuf_cstr(b, msg);
    cm_jbuf_raw(b, "}}", 2);
}

/* An answer the server gives itself (the request was refused while reading): then close. */
static void refuse(struct hconn *c, int status, const char *code, const char *msg)
{
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    error_json(&b, code, msg);
    if (c->req->out)
        evbuffer_drain(c->req->out, evbuffer_get_length(c->req->out));
    int rc = b.failed ? -1 : queue_answer(c, status, "application/json", b.data, b.len, 0, 0);
    cm_jbuf_fini(&b);
    if (rc < 0) {
        conn_free(c);
        return;
    }
    finish_closing(c);
}

static void answered(struct hconn *c, int keep);

void cm_httpd_reply(struct cm_httpd_req *req, int status, const char *content_type,
                    const char *body, size_t len)
{
    struct hconn *c = req->c;
    if (!c) {
        req_free(req); /* its client went away */
        return;
    }
    if (c->state == C_BODY) /* answered before its body ended: the rest is not read */
        c->state = C_PENDING;
    if (c->state != C_PENDING)
        return; /* answered already: a caller's bug, but not a reason to corrupt the stream */
    if (status < 200 || status > 599)
        status = 500;
    int keep = req->keep;
    req->close_cb = NULL;
    if (queue_answer(c, status, content_type, body, len, keep, req->head) < 0) {
        c->state = C_CLOSING; /* answered: the request goes with the connection */
        conn_free(c);
        return;
    }
    answered(c, keep);
}

/* The answer to c's request is queued in full: close, or wait for the next request. */
static void answered(struct hconn *c, int keep)
{
    if (!keep) {
        finish_closing(c);
        return;
    }
    request_reset(c);
    c->state = C_IDLE;
    /* Only a held connection may idle long: any other must come with its next request as
     * soon as with a first one, counted once its answer is out (on_write); writing the
     * answer is bounded by <timeout>. */
    int writing = evbuffer_get_length(bufferevent_get_output(c->bev)) > 0;
    if (arm(c, c->owner_q || writing ? c->h->lim.timeout : c->h->lim.header_timeout) < 0)
        return;
    /* Requests the client pipelined meanwhile: on the next loop turn, not here, so that the
     * next request's handler never runs inside whoever answered this one. */
    if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0)
        event_active(c->resume, EV_READ, 1);
}

int cm_httpd_stream_begin(struct cm_httpd_req *req, int status, const char *content_type)
{
    struct hconn *c = req->c;
    if (!c || c->state != C_PENDING)
        return -EPIPE;
    if (status < 200 || status > 599 || status == 204 || status == 304)
        return -EINVAL;
    req->chunked = !req->http10;
    if (!req->chunked)
        req->keep = 0; /* an HTTP/1.0 body ends with the connection */
    if (queue_answer(c, status, content_type, NULL, SIZE_MAX, req->keep, req->head) < 0) {
        conn_free(c); /* its close callback runs */
        return -ENOMEM;
    }
    c->state = C_STREAMING;
    /* From now on the timer bounds each wait for the client to take what is queued. */
    bufferevent_setwatermark(c->bev, EV_WRITE, STREAM_LOW, 0);
    return arm(c, c->h->lim.timeout) < 0 ? -EPIPE : 0;
}

long cm_httpd_stream_write(struct cm_httpd_req *req, const void *data, size_t len)
{
    struct hconn *c = req->c;
    if (!c || c->state != C_STREAMING)
        return -EPIPE;
    struct evbuffer *o = bufferevent_get_output(c->bev);
    if (len && !req->head && evbuffer_get_length(o) == 0 && arm(c, c->h->lim.timeout) < 0)
        return -EPIPE; /* <c> is gone, and <req> with it */
    if (len && !req->head) {
        int rc = req->chunked ? evbuffer_add_printf(o, "%zx\r\n", len) : 0;
        if (rc < 0 || evbuffer_add(o, data, len) < 0 ||
            (req->chunked && evbuffer_add(o, "\r\n", 2) < 0))
            return -ENOMEM;
    }
    return (long)evbuffer_get_length(o);
}

void cm_httpd_stream_on_drain(struct cm_httpd_req *req, cm_httpd_drain_cb cb, void *arg)
{
    req->drain_cb = cb;
    req->drain_arg = arg;
}

void cm_httpd_stream_end(struct cm_httpd_req *req)
{
    struct hconn *c = req->c;
    if (!c) {
        req_free(req); /* its client went away */
        return;
    }
    if (c->state != C_STREAMING)
        return;
    req->close_cb = NULL;
    req->drain_cb = NULL;
    bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
    if (req->chunked && !req->head &&
        evbuffer_add(bufferevent_get_output(c->bev), "0\r\n\r\n", 5) < 0) {
        conn_free(c);
        return;
    }
    c->state = C_PENDING; /* as if answered at once */
    answered(c, req->keep);
}

static void aborted(void *arg)
{
    (void)arg;
}

void cm_httpd_stream_abort(struct cm_httpd_req *req)
{
    struct hconn *c = req->c;
    if (!c) {
        req_free(req);
        return;
    }
    if (c->state != C_STREAMING)
        return;
    /* The connection goes, and the request with it (a close callback frees it there). */
    req->close_cb = aborted;
    req->drain_cb = NULL;
    conn_free(c); /* no last chunk: the client sees the answer cut */
}

void cm_httpd_set_head_cb(struct cm_httpd *h, cm_httpd_head_cb cb)
{
    h->head_cb = cb;
}

void cm_httpd_body_stream(struct cm_httpd_req *req, cm_httpd_body_cb cb, void *arg)
{
    req->body_cb = cb;
    req->body_arg = arg;
}

void cm_httpd_body_resume(struct cm_httpd_req *req)
{
    struct hconn *c = req->c;
    if (!c || !req->body_paused)
        return;
    req->body_paused = 0;
    llhttp_resume(&c->parser);
    if (c->state == C_BODY)
        event_active(c->resume, EV_READ, 1);
}

void cm_httpd_reply_error(struct cm_httpd_req *req, int status, const char *code,
                          const char *message)
{
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    error_json(&b, code, message);
    if (b.failed)
        cm_httpd_reply(req, 500, NULL, NULL, 0);
    else
        cm_httpd_reply(req, status, "application/json", b.data, b.len);
    cm_jbuf_fini(&b);
}

/* --- parsing ------------------------------------------------------------------------------ */

static int refuse_cb(struct cm_httpd_req *r, int status, const char *code, const char *msg)
{
    r->err_status = status;
    r->err_code = code;
    r->err_msg = msg;
    return HPE_USER;
}

/* Makes <*buf> hold at least <need> bytes: doubling from its size (or from <first>). Returns 0
 * or -ENOMEM (<*buf> unchanged). */
static int reserve(char **buf, size_t *cap, size_t need, size_t first)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : first;
    while (c < need)
        c *= 2;
    char *b = realloc(*buf, c);
    if (!b)
        return -ENOMEM;
    *buf = b;
    *cap = c;
    return 0;
}

/* Appends <len> bytes to the piece being built; a new piece starts after the previous one's
 * NUL. The arena is bounded by the head limit (pieces and their NULs fit in twice it). */
static int append(struct cm_httpd_req *r, int new_piece, const char *at, size_t len,
                  uint32_t *ret_off)
{
    size_t start = r->alen + (new_piece && r->alen ? 1 : 0);
    size_t need = start + len + 1;
    if (need > 2 * r->c->h->lim.max_header_bytes + 64)
        return refuse_cb(r, 431, "headers_too_large", "the request head is too large");
    if (reserve(&r->arena, &r->acap, need, 512) < 0)
        return refuse_cb(r, 503, "overloaded", "out of memory");
    if (new_piece && ret_off)
        *ret_off = (uint32_t)start;
    memcpy(r->arena + start, at, len);
    r->alen = start + len;
    r->arena[r->alen] = '\0';
    return 0;
}

static struct hconn *conn_of(llhttp_t *p)
{
    return p->data;
}

static int on_message_begin(llhttp_t *p)
{
    struct hconn *c = conn_of(p);
    if (c->state == C_IDLE) {
        c->state = C_READING;
        c->req_start = cm_now_mono();
        if (arm(c, c->h->lim.header_timeout) < 0) /* the head's deadline, from its first byte */
            return -1;
    }
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    struct cm_httpd_req *r = conn_of(p)->req;
    int first = r->part != P_URL;
    r->part = P_URL;
    return append(r, first, at, len, &r->url);
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    if (conn_of(p)->headers_done)
        return 0; /* a chunked body's trailer: not headers of the request */
    struct cm_httpd_req *r = conn_of(p)->req;
    int first = r->part != P_FIELD;
    if (first) {
        if (r->n_hdrs == r->hcap) {
            size_t cap = r->hcap ? r->hcap * 2 : 16;
            struct hdr *hd = realloc(r->hdrs, cap * sizeof(*hd));
            if (!hd)
                return refuse_cb(r, 503, "overloaded", "out of memory");
            r->hdrs = hd;
            r->hcap = cap;
        }
        r->hdrs[r->n_hdrs] = (struct hdr){0, 0, NO_OFF, 0};
        r->n_hdrs++;
        r->part = P_FIELD;
    }
    struct hdr *hd = &r->hdrs[r->n_hdrs - 1];
    hd->name_len += (uint32_t)len;
    return append(r, first, at, len, &hd->name);
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    if (conn_of(p)->headers_done)
        return 0;
    struct cm_httpd_req *r = conn_of(p)->req;
    int first = r->part != P_VALUE;
    r->part = P_VALUE;
    struct hdr *hd = &r->hdrs[r->n_hdrs - 1];
    hd->value_len += (uint32_t)len;
    return append(r, first, at, len, &hd->value);
}

/* The path (and query) of the target as their own NUL-terminated pieces after the others.
 * Returns 0, -1 (not a target we serve) or -2 (out of memory). */
static int split_target(struct cm_httpd_req *r)
{
    const char *u = r->arena + r->url;
    size_t at = 0;
    if (strncasecmp(u, "http://", 7) == 0 || strncasecmp(u, "https://", 8) == 0) {
        const char *auth = strstr(u, "//") + 2;
        at = (size_t)(auth + strcspn(auth, "/?#") - u);
    } else if (u[0] != '/' && strcmp(u, "*") != 0) {
        return -1;
    }
    size_t plen = strcspn(u + at, "?#");
    size_t q = at + plen; /* '?', '#' or the end */
    int has_q = u[q] == '?';
    size_t qlen = has_q ? strcspn(u + q + 1, "#") : 0;
    /* One growth for both pieces, then copies from the (possibly moved) target. */
    size_t need = r->alen + 1 + (plen ? plen : 1) + 1 + (has_q ? qlen + 2 : 0);
    if (reserve(&r->arena, &r->acap, need, 512) < 0)
        return -2;
    u = r->arena + r->url;
    r->path = (uint32_t)(r->alen + 1);
    if (plen)
        memcpy(r->arena + r->path, u + at, plen);
    else
        r->arena[r->path] = '/'; /* "http://host" and "http://host?x" */
    r->alen = r->path + (plen ? plen : 1);
    r->arena[r->alen] = '\0';
    if (has_q) {
        r->query = (uint32_t)(r->alen + 1);
        memcpy(r->arena + r->query, u + q + 1, qlen);
        r->alen = r->query + qlen;
        r->arena[r->alen] = '\0';
    }
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct hconn *c = conn_of(p);
    struct cm_httpd_req *r = c->req;
    c->headers_done = 1;
    r->part = P_NONE;
    /* The rest of the request has what is left of <timeout> from its first byte. */
    cm_usec_t spent = cm_now_mono() - c->req_start, t = c->h->lim.timeout;
    if (arm(c, spent < t ? t - spent : 1) < 0)
        return -1;
    if (llhttp_get_http_major(p) != 1)
        return refuse_cb(r, 400, "bad_request", "only HTTP/1.x is served here");
    /* Header values without the white space at their end (llhttp keeps it). */
    for (size_t i = 0; i < r->n_hdrs; i++) {
        struct hdr *hd = &r->hdrs[i];
        while (hd->value != NO_OFF && hd->value_len &&
               (r->arena[hd->value + hd->value_len - 1] == ' ' ||
                r->arena[hd->value + hd->value_len - 1] == '\t'))
            r->arena[hd->value + --hd->value_len] = '\0';
    }
    int rc = split_target(r);
    if (rc == -1)
        return refuse_cb(r, 400, "bad_request", "the request target is not a path");
    if (rc < 0)
        return refuse_cb(r, 503, "overloaded", "out of memory");
    if (llhttp_get_upgrade(p)) /* an Upgrade, or CONNECT (llhttp sets it for that too) */
        c->close_after = 1;    /* answered like any request; nothing after it is parsed */
    int has_cl = (p->flags & F_CONTENT_LENGTH) != 0;
    int chunked = (p->flags & F_CHUNKED) != 0;
    r->method = llhttp_get_method(p); /* for the head callback (dispatch sets it again) */
    if (!c->close_after && c->h->head_cb && c->h->head_cb(r, c->h->arg)) {
        r->streamed = 1; /* max_body is the handler's to apply */
        c->head_dispatch = 1;
    } else if (has_cl && p->content_length > c->h->lim.max_body)
        return refuse_cb(r, 413, "body_too_large", "the request body is over the limit");
    if (has_cl && !r->streamed &&
        reserve(&r->body, &r->bcap, (size_t)p->content_length + 1, (size_t)p->content_length + 1) <
            0)
        return refuse_cb(r, 503, "overloaded", "out of memory");
    const char *expect = cm_httpd_header(r, "expect");
    if (expect && strcasecmp(expect, "100-continue") == 0 && llhttp_get_http_minor(p) >= 1 &&
        ((has_cl && p->content_length > 0) || chunked)) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        if (evbuffer_add(bufferevent_get_output(c->bev), cont, sizeof(cont) - 1) < 0)
            return refuse_cb(r, 503, "overloaded", "out of memory");
    }
    return c->head_dispatch ? HPE_PAUSED : 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct hconn *c = conn_of(p);
    struct cm_httpd_req *r = c->req;
    if (r->streamed) {
        if (c->state != C_BODY || !r->body_cb)
            return 0;                      /* answered already, or nobody takes it: dropped */
        if (arm(c, c->h->lim.timeout) < 0) /* progress: the next byte is due within timeout */
            return -1;
        if (r->body_cb(r->body_arg, at, len)) {
            r->body_paused = 1;
            return HPE_PAUSED;
        }
        return 0;
    }
    if (r->blen + len > r->c->h->lim.max_body)
        return refuse_cb(r, 413, "body_too_large", "the request body is over the limit");
    if (reserve(&r->body, &r->bcap, r->blen + len + 1, 1024) < 0)
        return refuse_cb(r, 503, "overloaded", "out of memory");
    memcpy(r->body + r->blen, at, len);
    r->blen += len;
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct hconn *c = conn_of(p);
    c->message_done = 1;
    struct cm_httpd_req *r = c->req;
    if (r->streamed && c->state == C_BODY && r->body_cb)
        r->body_cb(r->body_arg, NULL, 0); /* its end */
    return HPE_PAUSED;
}

static void dispatch(struct hconn *c)
{
    struct cm_httpd_req *r = c->req;
    if (r->body)
        r->body[r->blen] = '\0';
    r->method = llhttp_get_method(&c->parser);
    r->http10 = llhttp_get_http_minor(&c->parser) == 0;
    r->head = r->method == HTTP_HEAD;
    r->keep = !c->close_after && llhttp_should_keep_alive(&c->parser);
    c->state = C_PENDING;
    evtimer_del(c->timer);
    if (r->streamed) { /* its body is still to come: read it for the handler */
        r->keep = 0;   /* the answer may come before its end: then the rest is not read */
        c->state = C_BODY;
        if (arm(c, c->h->lim.timeout) < 0)
            return;
    }
    c->h->cb(r, c->h->arg);
}

static void process(struct hconn *c)
{
    if (c->processing)
        return;
    c->processing = 1;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    const struct cm_httpd_limits *lim = &c->h->lim;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    while (!c->dead &&
           (c->state == C_IDLE || c->state == C_READING ||
            (c->state == C_BODY && !c->req->body_paused)) &&
           evbuffer_get_length(out) < OUT_HIGH) {
        size_t n = evbuffer_get_length(in);
        if (n == 0 && c->state == C_BODY && !c->message_done && !c->req->body_paused &&
            !(c->parser.flags & F_CHUNKED) && c->parser.content_length == 0) {
            /* A streamed request without a body completes without another byte: let the
             * parser get there (it paused at the end of the head). */
            llhttp_errno_t e = llhttp_execute(&c->parser, "", 0);
            if (c->message_done && (e == HPE_OK || e == HPE_PAUSED)) {
                llhttp_resume(&c->parser);
                c->state = C_PENDING;
                evtimer_del(c->timer);
            }
            break;
        }
        if (n == 0)
            break;
        if (!c->headers_done && c->head_raw >= lim->max_header_bytes) {
            refuse(c, 431, "headers_too_large", "the request head is too large");
            break;
        }
        if (n > FEED_MAX)
            n = FEED_MAX;
        if (!c->headers_done && n > lim->max_header_bytes - c->head_raw)
            n = lim->max_header_bytes - c->head_raw; /* a head ending here is within it */
        const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
        if (!p) {
            conn_free(c);
            break;
        }
        int had_headers = c->headers_done;
        llhttp_errno_t e = llhttp_execute(&c->parser, p, n);
        size_t used = n;
        if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE)
            used = (size_t)(llhttp_get_error_pos(&c->parser) - p);
        if (!had_headers && !c->headers_done)
            c->head_raw += used;
        evbuffer_drain(in, used);
        if (c->state == C_BODY && e != HPE_OK && e != HPE_PAUSED) {
            /* A streamed body broke. The handler's request is gone for it, as when its client
             * leaves (its close callback runs; without one, its answer will only free it);
             * the connection answers 400 on a request of its own, after what is queued. */
            struct cm_httpd_req *old = c->req, *fresh = calloc(1, sizeof(*fresh));
            if (!fresh || !(fresh->out = evbuffer_new())) {
                free(fresh);
                conn_free(c);
                break;
            }
            fresh->c = c;
            fresh->query = NO_OFF;
            c->req = fresh;
            old->c = NULL;
            if (old->close_cb) {
                cm_httpd_close_cb cb = old->close_cb;
                old->close_cb = NULL;
                cb(old->close_arg);
                req_free(old);
            }
            c->state = C_PENDING; /* for queue_answer: an answer of this request */
            refuse(c, 400, "bad_request", "the request body is malformed");
            break;
        }
        if (e != HPE_OK && e != HPE_PAUSED && e != HPE_PAUSED_UPGRADE && c->req->err_status) {
            refuse(c, c->req->err_status, c->req->err_code, c->req->err_msg);
            break;
        }
        if (e != HPE_OK && e != HPE_PAUSED && e != HPE_PAUSED_UPGRADE) {
            refuse(c, 400, "bad_request", llhttp_get_error_reason(&c->parser));
            break;
        }
        if (c->head_dispatch) { /* a streamed body's head: the handler gets it now */
            c->head_dispatch = 0;
            llhttp_resume(&c->parser);
            dispatch(c);
            continue;
        }
        if (c->state == C_BODY && c->message_done) { /* its end: now the answer is awaited */
            llhttp_resume(&c->parser);
            c->state = C_PENDING;
            evtimer_del(c->timer);
            break;
        }
        if (c->state == C_BODY && e == HPE_PAUSED) /* its body callback asked for a pause */
            break;
        if (c->message_done || e == HPE_PAUSED_UPGRADE) {
            if (e == HPE_PAUSED)
                llhttp_resume(&c->parser);
            else if (e == HPE_PAUSED_UPGRADE)
                c->close_after = 1;
            dispatch(c);
        }
    }
    c->processing = 0;
    if (c->dead)
        conn_free(c);
}

/* --- events ------------------------------------------------------------------------------- */

static void on_read(struct bufferevent *bev, void *arg)
{
    struct hconn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    if (c->state == C_LINGER || c->state == C_CLOSING) {
        evbuffer_drain(in, evbuffer_get_length(in));
        return;
    }
    if (c->state == C_BODY) {
        process(c);
        return;
    }
    if (c->state == C_PENDING || c->state == C_STREAMING)
        return; /* kept (up to the read watermark) until the answer: pipelining */
    process(c);
}

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    process(arg);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    struct hconn *c = arg;
    if (c->state == C_STREAMING) {
        /* the client took what was queued down to STREAM_LOW: progress (nothing queued: no
         * wait to bound, however long the handler has nothing to send) */
        if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
            evtimer_del(c->timer);
        else if (arm(c, c->h->lim.timeout) < 0)
            return;
        cm_httpd_drain_cb cb = c->req->drain_cb;
        c->req->drain_cb = NULL;
        if (cb)
            cb(c->req->drain_arg);
        return;
    }
    if (c->state == C_IDLE || c->state == C_READING) {
        /* an answer is out: an unheld connection's wait for its next request starts now */
        if (c->state == C_IDLE && !c->owner_q && arm(c, c->h->lim.header_timeout) < 0)
            return;
        process(c); /* parsing may have stopped at OUT_HIGH */
        return;
    }
    if (c->state != C_CLOSING)
        return;
    /* Everything is written: stop writing, read what is still coming for a while, close. */
    shutdown(bufferevent_getfd(bev), SHUT_WR);
    c->state = C_LINGER;
    bufferevent_enable(bev, EV_READ);
    cm_usec_t t = c->h->lim.timeout < LINGER_USEC ? c->h->lim.timeout : LINGER_USEC;
    (void)arm(c, t);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct hconn *c = arg;
    (void)bev;
    if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR) &&
        (c->state == C_IDLE || c->state == C_CLOSING) &&
        evbuffer_get_length(bufferevent_get_output(c->bev)) > 0) {
        /* The client shut down its side after its request was answered: the answer still
         * goes out. While its request is being handled, EOF means the client is gone (as
         * nginx takes it): a half-close cannot be told from a close before we write. */
        c->state = C_CLOSING;
        bufferevent_disable(c->bev, EV_READ);
        return;
    }
    conn_free(c);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct hconn *c = arg;
    (void)fd, (void)what;
    if (c->state == C_READING && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
        refuse(c, 408, "request_timeout",
               c->headers_done ? "the request was not complete in time"
                               : "the request head was not complete in time");
        /* A second expiry (the client reads nothing either) closes. */
        return;
    }
    conn_free(c);
}

/* Serves <fd>, counted against the client address <akey> (<alen> 0: none). */
static int adopt(struct cm_httpd *h, int fd, const unsigned char *akey, size_t alen)
{
    if (evutil_make_socket_nonblocking(fd) < 0) {
        close(fd);
        return -errno;
    }
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); /* not TCP: no matter */
    struct hconn *c = calloc(1, sizeof(*c));
    if (!c) {
        close(fd);
        return -ENOMEM;
    }
    c->h = h;
    c->next = h->conns;
    if (h->conns)
        h->conns->prev = c;
    h->conns = c;
    h->n_conns++;
    c->bev = bufferevent_socket_new(h->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!c->bev)
        close(fd);
    c->timer = evtimer_new(h->base, on_timer, c);
    c->resume = event_new(h->base, -1, 0, on_resume, c);
    c->req = calloc(1, sizeof(*c->req));
    if (c->req) {
        c->req->c = c;
        c->req->query = NO_OFF;
        c->req->out = evbuffer_new();
    }
    if (alen)
        c->addr_q = quota_take(h, akey, alen);
    if (!c->bev || !c->timer || !c->resume || !c->req || !c->req->out || (alen && !c->addr_q)) {
        conn_free(c);
        return -ENOMEM;
    }
    llhttp_init(&c->parser, HTTP_REQUEST, &h->settings);
    c->parser.data = c;
    c->state = C_IDLE;
    bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
    /* While the handler works, pipelined bytes wait; this bounds how many. */
    bufferevent_setwatermark(c->bev, EV_READ, 0, h->lim.max_header_bytes + FEED_MAX);
    if (bufferevent_enable(c->bev, EV_READ) < 0) {
        conn_free(c);
        return -ENOMEM;
    }
    return arm(c, h->lim.header_timeout) < 0 ? -ENOMEM : 0;
}

int cm_httpd_adopt(struct cm_httpd *h, int fd)
{
    return adopt(h, fd, NULL, 0);
}

/* --- listeners ---------------------------------------------------------------------------- */

/* Answers a connection refused at accept with the error JSON and closes it. */
static void refuse_fd(evutil_socket_t fd, int status, const char *code, const char *msg)
{
    char body[256], busy[512];
    int b =
        snprintf(body, sizeof(body), "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}", code, msg);
    int n = b > 0 && (size_t)b < sizeof(body)
                ? snprintf(busy, sizeof(busy),
                           "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                           "Content-Length: %d\r\nConnection: close\r\n\r\n%s",
                           status, cm_http_reason(status), b, body)
                : -1;
    /* Best effort on a fresh socket (its buffer is empty): then close. */
    if (n > 0 && (size_t)n < sizeof(busy))
        (void)send(fd, busy, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
    close(fd);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
    struct cm_httpd *h = arg;
    (void)l, (void)salen;
    if (h->n_conns >= h->lim.max_connections) {
        refuse_fd(fd, 503, "overloaded", "too many connections, retry later");
        return;
    }
    unsigned char key[17];
    size_t alen = addr_key(sa, key);
    const struct quota *q = alen && h->lim.max_per_address ? quota_find(h, key, alen) : NULL;
    if (q && q->n >= h->lim.max_per_address) {
        refuse_fd(fd, 429, "too_many_connections",
                  "too many connections from this address that are not authenticated yet");
        return;
    }
    (void)adopt(h, fd, key, h->lim.max_per_address ? alen : 0);
}

static void on_resume_accept(evutil_socket_t fd, short what, void *arg)
{
    struct lsn *s = arg;
    (void)fd, (void)what;
    evconnlistener_enable(s->l);
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
    struct cm_httpd *h = arg;
    struct lsn *s = h->listeners;
    while (s && s->l != l)
        s = s->next;
    struct timeval tv;
    cm_usec_to_tv(ACCEPT_PAUSE_USEC, &tv);
    if (s && evtimer_add(s->pause, &tv) == 0)
        evconnlistener_disable(l);
}

int cm_httpd_listen(struct cm_httpd *h, const char *host, uint16_t port, uint16_t *ret_port)
{
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char ps[8];
    snprintf(ps, sizeof(ps), "%u", port);
    if (getaddrinfo(host, ps, &hints, &ai) != 0 || !ai)
        return -EADDRNOTAVAIL;
    struct lsn *s = calloc(1, sizeof(*s));
    if (!s) {
        freeaddrinfo(ai);
        return -ENOMEM;
    }
    s->pause = evtimer_new(h->base, on_resume_accept, s);
    errno = 0;
    s->l = s->pause ? evconnlistener_new_bind(h->base, on_accept, h,
                                              LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC |
                                                  LEV_OPT_REUSEABLE,
                                              128, ai->ai_addr, (int)ai->ai_addrlen)
                    : NULL;
    int err = errno ? errno : ENOMEM;
    freeaddrinfo(ai);
    if (!s->l) {
        if (s->pause)
            event_free(s->pause);
        free(s);
        return -err;
    }
    evconnlistener_set_error_cb(s->l, on_accept_error);
    s->next = h->listeners;
    h->listeners = s;
    if (ret_port) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        *ret_port = port;
        if (getsockname(evconnlistener_get_fd(s->l), (struct sockaddr *)&ss, &sl) == 0) {
            if (ss.ss_family == AF_INET)
                *ret_port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
            else if (ss.ss_family == AF_INET6)
                *ret_port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        }
    }
    return 0;
}

struct cm_httpd *cm_httpd_create(struct event_base *base, const struct cm_httpd_limits *lim,
                                 cm_httpd_request_cb cb, void *arg)
{
    struct cm_httpd *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->base = base;
    h->lim = *lim;
    if (h->lim.max_header_bytes < 256)
        h->lim.max_header_bytes = 256;
    if (h->lim.max_connections == 0)
        h->lim.max_connections = 1;
    if (h->lim.header_timeout == 0 || h->lim.header_timeout > h->lim.timeout)
        h->lim.header_timeout = h->lim.timeout;
    h->cb = cb;
    h->arg = arg;
    llhttp_settings_init(&h->settings);
    h->settings.on_message_begin = on_message_begin;
    h->settings.on_url = on_url;
    h->settings.on_header_field = on_header_field;
    h->settings.on_header_value = on_header_value;
    h->settings.on_headers_complete = on_headers_complete;
    h->settings.on_body = on_body;
    h->settings.on_message_complete = on_message_complete;
    return h;
}

size_t cm_httpd_connections(const struct cm_httpd *h)
{
    return h->n_conns;
}

/* Writes what is queued for <c> as far as its socket takes it now (the bufferevent's own
 * buffer stays as it is: its front belongs to the bufferevent). */
static void flush_now(struct hconn *c)
{
    struct evbuffer_iovec v[16];
    struct iovec iov[16];
    int n = evbuffer_peek(bufferevent_get_output(c->bev), -1, NULL, v, 16);
    if (n <= 0)
        return;
    if (n > 16)
        n = 16;
    for (int i = 0; i < n; i++) {
        iov[i].iov_base = v[i].iov_base;
        iov[i].iov_len = v[i].iov_len;
    }
    struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)n};
    (void)sendmsg(bufferevent_getfd(c->bev), &m, MSG_NOSIGNAL | MSG_DONTWAIT);
}

void cm_httpd_destroy(struct cm_httpd *h)
{
    if (!h)
        return;
    while (h->listeners) {
        struct lsn *s = h->listeners;
        h->listeners = s->next;
        evconnlistener_free(s->l);
        event_free(s->pause);
        free(s);
    }
    while (h->conns) {
        /* Answers already queued (a 503 to what was waiting) go out as far as the socket
         * takes them now, without waiting. */
        struct hconn *c = h->conns;
        flush_now(c);
        conn_free(c);
    }
    free(h);
}

/* --- request accessors -------------------------------------------------------------------- */

enum cm_http_method cm_httpd_method(const struct cm_httpd_req *req)
{
    switch (req->method) {
    case HTTP_GET:
        return CM_HTTP_GET;
    case HTTP_HEAD:
        return CM_HTTP_HEAD;
    case HTTP_POST:
        return CM_HTTP_POST;
    case HTTP_PUT:
        return CM_HTTP_PUT;
    case HTTP_DELETE:
        return CM_HTTP_DELETE;
    case HTTP_PATCH:
        return CM_HTTP_PATCH;
    case HTTP_OPTIONS:
        return CM_HTTP_OPTIONS;
    default:
        return CM_HTTP_OTHER;
    }
}

const char *cm_httpd_method_name(const struct cm_httpd_req *req)
{
    return llhttp_method_name((llhttp_method_t)req->method);
}

const char *cm_httpd_target(const struct cm_httpd_req *req)
{
    return req->arena + req->url;
}

const char *cm_httpd_path(const struct cm_httpd_req *req)
{
    return req->arena + req->path;
}

const char *cm_httpd_query(const struct cm_httpd_req *req)
{
    return req->query == NO_OFF ? NULL : req->arena + req->query;
}

const char *cm_httpd_header(const struct cm_httpd_req *req, const char *name)
{
    for (size_t i = 0; i < req->n_hdrs; i++) {
        const struct hdr *hd = &req->hdrs[i];
        if (strcasecmp(req->arena + hd->name, name) == 0)
            return hd->value == NO_OFF ? "" : req->arena + hd->value;
    }
    return NULL;
}

const char *cm_httpd_body(const struct cm_httpd_req *req, size_t *ret_len)
{
    *ret_len = req->blen;
    return req->body ? req->body : "";
}

int cm_httpd_hold(struct cm_httpd_req *req, const char *owner, size_t len)
{
    struct hconn *c = req->c;
    if (len == 0 || len > 255)
        return -EINVAL;
    if (!c)
        return 0; /* its client went away: nothing left to count */
    struct cm_httpd *h = c->h;
    unsigned char key[256];
    key[0] = 'O';
    memcpy(key + 1, owner, len);
    const struct quota *q = quota_find(h, key, len + 1);
    if (q && q == c->owner_q)
        return 0;
    if (q && h->lim.max_per_owner && q->n >= h->lim.max_per_owner) {
        req->keep = 0; /* its answer (a refusal) closes the connection */
        return -EBUSY;
    }
    struct quota *nq = quota_take(h, key, len + 1);
    if (!nq)
        return -ENOMEM;
    quota_release(h, c->owner_q);
    quota_release(h, c->addr_q);
    c->owner_q = nq;
    c->addr_q = NULL;
    return 0;
}

void cm_httpd_set_close_cb(struct cm_httpd_req *req, cm_httpd_close_cb cb, void *arg)
{
    req->close_cb = cb;
    req->close_arg = arg;
}

static int is_tchar(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

int cm_httpd_add_header(struct cm_httpd_req *req, const char *name, const char *value)
{
    if (!*name)
        return -EINVAL;
    for (const char *p = name; *p; p++)
        if (!is_tchar((unsigned char)*p))
            return -EINVAL;
    for (const char *p = value; *p; p++)
        if (((unsigned char)*p < 0x20 && *p != '\t') || *p == 0x7f)
            return -EINVAL;
    if (evbuffer_add_printf(req->out, "%s: %s\r\n", name, value) < 0)
        return -ENOMEM;
    return 0;
}

const char *cm_http_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 507:
        return "Insufficient Storage";
    default:
        return "Unknown";
    }
}
