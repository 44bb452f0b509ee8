/* The load generator's event loop: see client.h. Sockets are driven with raw libevent events
 * (no bufferevents: the generator must stay cheaper than what it measures); responses are
 * parsed by llhttp straight out of one per-thread read buffer. */
#include "bench/loadgen/client.h"

#include <errno.h>
#include <event2/event.h>
#include <inttypes.h>
#include <llhttp.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define RBUF_SIZE (256 * 1024)
#define BODY_CHUNK (256 * 1024)
#define BACKOFF_NS 50000000ull         /* before re-connecting after a connect error */
#define PREPARE_SLACK_NS 120000000000ull /* stage 1 gives up after timeout + this */
#define RUN_SLACK_NS 2000000000ull     /* stage 2 ends at the latest this after the last timeout */
#define INST_MAX 96
#define LINE_MAX_LEN 160

const char *const lg_err_names[LG_ERR_COUNT] = {
    [LG_ERR_CONNECT] = "connect",         [LG_ERR_READ] = "read",
    [LG_ERR_WRITE] = "write",             [LG_ERR_TIMEOUT] = "timeout",
    [LG_ERR_EOF] = "eof",                 [LG_ERR_PARSE] = "parse",
    [LG_ERR_NO_INSTANCE] = "no_instance_header", [LG_ERR_STATUS] = "status",
    [LG_ERR_STICKY] = "sticky",           [LG_ERR_STREAM_CLOSED] = "stream_closed",
};

enum cstate {
    C_CLOSED,
    C_CONNECTING,
    C_BACKOFF,
    C_IDLE,
    C_SENDING,
    C_WAITING,
    C_STREAM, /* SSE response head received */
};

enum stage { ST_PREPARE, ST_RUN, ST_DONE };

struct session {
    uint64_t num;
    char inst[INST_MAX];
    uint8_t inst_len;
    uint8_t known, violated;
};

struct conn {
    struct lg_client *cl;
    int fd;
    enum cstate state;
    struct event *rev, *wev, *timer;
    llhttp_t parser;
    /* the request in flight */
    uint64_t sched_ns, start_ns;
    int measured;
    size_t slot;
    uint64_t sess_num;
    char req[512];
    size_t req_len, req_off;
    uint64_t body_left;
    /* its response */
    int status;
    int complete, keep_alive;
    uint64_t body_in;
    int cur_hdr;
    char field[64];
    size_t field_len;
    char inst[LG_MAX_INSTANCE_HEADERS][INST_MAX / 2];
    size_t inst_len[LG_MAX_INSTANCE_HEADERS];
    /* SSE */
    int opened;
    char line[LINE_MAX_LEN];
    size_t line_len;
    int line_overflow;
    char ev_name[16];
    uint64_t ev_ts;
};

struct lg_client {
    const struct lg_opts *o;
    uint32_t index;
    struct event_base *base;
    struct conn *conns;
    size_t n_conns;
    struct session *sess;
    size_t n_sess;
    size_t cursor;
    uint64_t next_num;
    double churn_acc;
    size_t prime_next;
    enum stage stage;
    uint64_t t_prepare, t_run, t_meas_start, t_meas_end;
    /* open loop */
    double interval_ns;
    uint64_t k_next, k_meas_start, k_end;
    struct conn **idle;
    size_t n_idle;
    struct event *tick, *deadline;
    size_t n_busy;
    int timed_out;
    /* SSE */
    size_t sse_total, sse_next, sse_pending;
    uint32_t sse_conc;
    struct lg_stats st;
    char rbuf[RBUF_SIZE];
};

static char body_pattern[BODY_CHUNK];
static llhttp_settings_t settings;
static pthread_once_t once = PTHREAD_ONCE_INIT;

uint64_t lg_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static struct timeval tv_of(uint64_t ns)
{
    struct timeval tv = {(time_t)(ns / 1000000000ull), (suseconds_t)((ns % 1000000000ull) / 1000)};
    return tv;
}

static void add_timer(struct event *ev, uint64_t rel_ns)
{
    struct timeval tv = tv_of(rel_ns);
    event_add(ev, &tv);
}

static int busy_state(enum cstate s)
{
    return s == C_CONNECTING || s == C_BACKOFF || s == C_SENDING || s == C_WAITING;
}

static void set_state(struct conn *c, enum cstate s)
{
    int was = busy_state(c->state), is = busy_state(s);
    c->state = s;
    if (was && !is)
        c->cl->n_busy--;
    else if (!was && is)
        c->cl->n_busy++;
}

static int is_sse(const struct lg_client *cl)
{
    return cl->o->mode == LG_MODE_SSE;
}

/* ------------------------------------------------------------------ stage ends */

static void maybe_done(struct lg_client *cl)
{
    if (cl->n_busy)
        return;
    if (cl->stage == ST_PREPARE && !is_sse(cl)) {
        if (cl->o->prime && cl->prime_next < cl->n_sess)
            return;
        event_base_loopbreak(cl->base);
    } else if (cl->stage == ST_RUN && !is_sse(cl)) {
        int over = cl->o->mode == LG_MODE_RATE ? cl->k_next >= cl->k_end
                                                 : lg_now_ns() >= cl->t_meas_end;
        if (over) {
            cl->stage = ST_DONE;
            event_base_loopbreak(cl->base);
        }
    }
}

static void sse_check_prepared(struct lg_client *cl)
{
    if (cl->stage == ST_PREPARE && cl->st.sse_opened + cl->st.sse_failed == cl->sse_total)
        event_base_loopbreak(cl->base);
}

/* ------------------------------------------------------------------ connections */

static void conn_open(struct conn *c);
static void conn_ready(struct conn *c);
static void sse_launch(struct lg_client *cl);

static void conn_shut(struct conn *c)
{
    if (c->rev)
        event_free(c->rev);
    if (c->wev)
        event_free(c->wev);
    c->rev = c->wev = NULL;
    if (c->timer)
        event_del(c->timer);
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

static int work_left(const struct lg_client *cl)
{
    if (cl->stage == ST_PREPARE)
        return !cl->timed_out;
    if (cl->stage != ST_RUN)
        return 0;
    if (cl->o->mode == LG_MODE_RATE)
        return cl->k_next < cl->k_end;
    return lg_now_ns() < cl->t_meas_end;
}

static void count_error(struct conn *c, enum lg_err e)
{
    /* Request errors count when their request belongs to the measured window; connection
     * errors between requests count from the measured window's start on. */
    struct lg_client *cl = c->cl;
    uint64_t now = lg_now_ns();
    int in_window = c->measured ||
                    (cl->stage == ST_RUN && now >= cl->t_meas_start && now < cl->t_meas_end);
    if (in_window || is_sse(cl) || e == LG_ERR_STICKY || e == LG_ERR_NO_INSTANCE)
        cl->st.errors[e]++;
    else
        cl->st.errors_unmeasured++;
}

/* Closes c after error <e>; opens it again if work is left (request modes), or accounts for
 * the lost stream (SSE). */
static void conn_fail(struct conn *c, enum lg_err e)
{
    struct lg_client *cl = c->cl;
    count_error(c, e);
    conn_shut(c);
    if (is_sse(cl)) {
        int was_open = c->opened;
        set_state(c, C_CLOSED);
        if (!was_open) {
            cl->st.sse_failed++;
            cl->sse_pending--;
            sse_launch(cl);
            sse_check_prepared(cl);
        }
        return;
    }
    c->measured = 0;
    if (cl->stage == ST_PREPARE && e == LG_ERR_CONNECT &&
        lg_now_ns() - cl->t_prepare >= cl->o->timeout_ns) {
        /* The target is not there: give up instead of retrying until the deadline. */
        set_state(c, C_CLOSED);
        cl->timed_out = 1;
        event_base_loopbreak(cl->base);
        return;
    }
    if (!work_left(cl)) {
        set_state(c, C_CLOSED);
        maybe_done(cl);
        return;
    }
    cl->st.reconnects++;
    if (e == LG_ERR_CONNECT) {
        set_state(c, C_BACKOFF);
        add_timer(c->timer, BACKOFF_NS);
        return;
    }
    conn_open(c);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    (void)fd, (void)what;
    if (c->state == C_BACKOFF) {
        if (work_left(c->cl)) {
            conn_open(c);
        } else {
            set_state(c, C_CLOSED);
            maybe_done(c->cl);
        }
        return;
    }
    conn_fail(c, c->state == C_CONNECTING ? LG_ERR_CONNECT : LG_ERR_TIMEOUT);
}

static int conn_write(struct conn *c)
{
    while (c->req_off < c->req_len || c->body_left) {
        struct iovec iov[2];
        int n = 0;
        if (c->req_off < c->req_len) {
            iov[n].iov_base = c->req + c->req_off;
            iov[n].iov_len = c->req_len - c->req_off;
            n++;
        }
        if (c->body_left) {
            iov[n].iov_base = body_pattern;
            iov[n].iov_len = c->body_left < BODY_CHUNK ? (size_t)c->body_left : BODY_CHUNK;
            n++;
        }
        ssize_t w = writev(c->fd, iov, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                event_add(c->wev, NULL);
                return 0;
            }
            conn_fail(c, LG_ERR_WRITE);
            return -1;
        }
        size_t left = (size_t)w, head = c->req_len - c->req_off;
        size_t h = left < head ? left : head;
        c->req_off += h;
        c->body_left -= left - h;
    }
    if (c->state == C_SENDING)
        set_state(c, C_WAITING);
    return 0;
}

static void session_id(const struct lg_client *cl, uint64_t num, char *buf, size_t len)
{
    snprintf(buf, len, "%s-%" PRIu32 "-%" PRIu64, cl->o->session_prefix, cl->index, num);
}

/* Starts a request on idle connection c for session slot <slot>. */
static void send_request(struct conn *c, uint64_t sched, size_t slot, int measured)
{
    struct lg_client *cl = c->cl;
    const struct lg_opts *o = cl->o;
    char sid[128];
    c->slot = slot;
    c->sess_num = cl->sess[slot].num;
    session_id(cl, c->sess_num, sid, sizeof(sid));
    int n;
    if (is_sse(cl))
        n = snprintf(c->req, sizeof(c->req),
                     "GET %s%severy=%" PRIu32 " HTTP/1.1\r\nHost: %s\r\n%s: %s\r\n"
                     "Accept: text/event-stream\r\n\r\n",
                     o->path, strchr(o->path, '?') ? "&" : "?", o->sse_every_ms, o->target,
                     o->session_header, sid);
    else if (o->body_size)
        n = snprintf(c->req, sizeof(c->req),
                     "%s %s HTTP/1.1\r\nHost: %s\r\n%s: %s\r\n"
                     "Content-Type: application/octet-stream\r\nContent-Length: %" PRIu64
                     "\r\n\r\n",
                     o->method, o->path, o->target, o->session_header, sid, o->body_size);
    else
        n = snprintf(c->req, sizeof(c->req), "%s %s HTTP/1.1\r\nHost: %s\r\n%s: %s\r\n\r\n",
                     o->method, o->path, o->target, o->session_header, sid);
    c->req_len = (size_t)n < sizeof(c->req) ? (size_t)n : sizeof(c->req) - 1;
    c->req_off = 0;
    c->body_left = o->body_size;
    c->sched_ns = sched;
    c->start_ns = lg_now_ns();
    c->measured = measured;
    c->complete = 0;
    if (measured)
        cl->st.sent++;
    set_state(c, C_SENDING);
    add_timer(c->timer, o->timeout_ns);
    conn_write(c);
}

static size_t pick_slot(struct lg_client *cl)
{
    size_t slot = cl->cursor++ % cl->n_sess;
    if (cl->o->churn > 0) {
        cl->churn_acc += cl->o->churn;
        if (cl->churn_acc >= 1.0 - 1e-9) {
            cl->churn_acc -= 1.0;
            struct session *s = &cl->sess[slot];
            s->num = cl->next_num++;
            s->known = s->violated = 0;
            s->inst_len = 0;
            cl->st.sessions_new++;
        }
    }
    return slot;
}

static uint64_t sched_of(const struct lg_client *cl, uint64_t k)
{
    return cl->t_run + (uint64_t)((double)k * cl->interval_ns);
}

static void dispatch(struct lg_client *cl)
{
    uint64_t now = lg_now_ns();
    while (cl->n_idle && cl->k_next < cl->k_end && sched_of(cl, cl->k_next) <= now) {
        struct conn *c = cl->idle[--cl->n_idle];
        uint64_t k = cl->k_next++;
        send_request(c, sched_of(cl, k), pick_slot(cl), k >= cl->k_meas_start);
    }
    if (cl->k_next >= cl->k_end) {
        maybe_done(cl);
        return;
    }
    if (cl->n_idle) {
        uint64_t at = sched_of(cl, cl->k_next);
        add_timer(cl->tick, at > now ? at - now : 0);
    }
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    dispatch(arg);
}

/* c has nothing in flight: give it its next request, or park it. */
static void conn_ready(struct conn *c)
{
    struct lg_client *cl = c->cl;
    if (c->timer)
        event_del(c->timer);
    set_state(c, C_IDLE);
    if (cl->stage == ST_PREPARE) {
        if (cl->o->prime && cl->prime_next < cl->n_sess) {
            send_request(c, lg_now_ns(), cl->prime_next++, 0);
            return;
        }
        maybe_done(cl);
        return;
    }
    if (cl->stage != ST_RUN) {
        maybe_done(cl);
        return;
    }
    if (cl->o->mode == LG_MODE_RATE) {
        cl->idle[cl->n_idle++] = c;
        dispatch(cl);
        return;
    }
    uint64_t now = lg_now_ns();
    if (now < cl->t_meas_end)
        send_request(c, now, pick_slot(cl), now >= cl->t_meas_start);
    else
        maybe_done(cl);
}

static void on_read(evutil_socket_t fd, short what, void *arg);

static void connected(struct conn *c)
{
    struct lg_client *cl = c->cl;
    event_del(c->timer);
    if (is_sse(cl)) {
        size_t local = (size_t)(c - cl->conns);
        uint64_t connect_start = c->start_ns; /* sse_open counts from here */
        send_request(c, lg_now_ns(), local % cl->n_sess, 0);
        c->start_ns = connect_start;
        return;
    }
    conn_ready(c);
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    (void)what;
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) {
            conn_fail(c, LG_ERR_CONNECT);
            return;
        }
        event_add(c->rev, NULL);
        connected(c);
        return;
    }
    conn_write(c);
}

static void conn_open(struct conn *c)
{
    struct lg_client *cl = c->cl;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    set_state(c, C_CONNECTING);
    c->opened = 0;
    c->line_len = 0;
    c->line_overflow = 0;
    if (c->fd < 0) {
        conn_fail(c, LG_ERR_CONNECT);
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->rev = event_new(cl->base, c->fd, EV_READ | EV_PERSIST, on_read, c);
    c->wev = event_new(cl->base, c->fd, EV_WRITE, on_write, c);
    if (!c->rev || !c->wev) {
        conn_fail(c, LG_ERR_CONNECT);
        return;
    }
    llhttp_init(&c->parser, HTTP_RESPONSE, &settings);
    c->parser.data = c;
    c->start_ns = lg_now_ns();
    int r = connect(c->fd, (const struct sockaddr *)&cl->o->addr, sizeof(cl->o->addr));
    if (r == 0) {
        event_add(c->rev, NULL);
        connected(c);
        return;
    }
    if (errno != EINPROGRESS) {
        conn_fail(c, LG_ERR_CONNECT);
        return;
    }
    event_add(c->wev, NULL);
    add_timer(c->timer, cl->o->timeout_ns);
}

/* ------------------------------------------------------------------ responses */

static void count_instance(struct lg_stats *st, const char *id)
{
    for (size_t i = 0; i < st->n_inst; i++)
        if (strcmp(st->inst[i].name, id) == 0) {
            st->inst[i].responses++;
            return;
        }
    if (st->n_inst == LG_MAX_INSTANCES) {
        st->inst_overflow++;
        return;
    }
    snprintf(st->inst[st->n_inst].name, sizeof(st->inst[0].name), "%s", id);
    st->inst[st->n_inst++].responses = 1;
}

/* Checks the instance of c's 2xx response against its session's first one. */
static void check_sticky(struct conn *c)
{
    struct lg_client *cl = c->cl;
    const struct lg_opts *o = cl->o;
    if (!o->n_instance_headers)
        return;
    char id[INST_MAX];
    size_t len = 0;
    for (size_t i = 0; i < o->n_instance_headers; i++) {
        if (!c->inst_len[i]) {
            count_error(c, LG_ERR_NO_INSTANCE);
            return;
        }
        if (i)
            id[len++] = '|';
        memcpy(id + len, c->inst[i], c->inst_len[i]);
        len += c->inst_len[i];
    }
    id[len] = '\0';
    count_instance(&cl->st, id);
    struct session *s = &cl->sess[c->slot];
    if (s->num != c->sess_num)
        return; /* churned away while this request was in flight */
    cl->st.responses_checked++;
    if (!s->known) {
        memcpy(s->inst, id, len);
        s->inst_len = (uint8_t)len;
        s->known = 1;
        cl->st.sessions_checked++;
    } else if (s->inst_len != len || memcmp(s->inst, id, len) != 0) {
        count_error(c, LG_ERR_STICKY);
        if (!s->violated) {
            s->violated = 1;
            cl->st.sessions_violated++;
        }
    }
}

static void complete_request(struct conn *c)
{
    struct lg_client *cl = c->cl;
    uint64_t now = lg_now_ns();
    int ok = c->status >= 200 && c->status < 300;
    event_del(c->timer);
    cl->st.responses_all++;
    if (c->measured) {
        cl->st.requests++;
        if (c->status > 0 && c->status < 600)
            cl->st.status[c->status]++;
        if (ok)
            cl->st.ok++;
        lg_hist_record(&cl->st.lat, now > c->sched_ns ? now - c->sched_ns : 0);
        cl->st.body_in += c->body_in;
        cl->st.body_out += cl->o->body_size - c->body_left;
    }
    if (!ok)
        count_error(c, LG_ERR_STATUS);
    else
        check_sticky(c);
    c->measured = 0;
    if (!c->keep_alive || c->state == C_SENDING) {
        conn_shut(c);
        if (work_left(cl)) {
            cl->st.reconnects++;
            conn_open(c);
        } else {
            set_state(c, C_CLOSED);
            maybe_done(cl);
        }
        return;
    }
    conn_ready(c);
}

static void sse_event(struct conn *c)
{
    struct lg_client *cl = c->cl;
    uint64_t now = lg_now_ns();
    if (strcmp(c->ev_name, "open") == 0 && !c->opened) {
        c->opened = 1;
        event_del(c->timer);
        cl->st.sse_opened++;
        cl->sse_pending--;
        lg_hist_record(&cl->st.sse_open, now - c->start_ns);
        sse_launch(cl);
        sse_check_prepared(cl);
    } else if (strcmp(c->ev_name, "tick") == 0 && cl->stage == ST_RUN &&
               now < cl->t_run + cl->o->duration_ns) {
        cl->st.sse_events++;
        if (c->ev_ts && now > c->ev_ts)
            lg_hist_record(&cl->st.sse_cross, now - c->ev_ts);
    }
    c->ev_name[0] = '\0';
    c->ev_ts = 0;
}

static void sse_line(struct conn *c)
{
    const char *l = c->line;
    if (c->line_len == 0) {
        if (c->ev_name[0])
            sse_event(c);
    } else if (c->line_len > 7 && memcmp(l, "event: ", 7) == 0) {
        size_t n = c->line_len - 7 < sizeof(c->ev_name) - 1 ? c->line_len - 7
                                                             : sizeof(c->ev_name) - 1;
        memcpy(c->ev_name, l + 7, n);
        c->ev_name[n] = '\0';
    } else if (c->line_len > 6 && memcmp(l, "data: ", 6) == 0) {
        c->line[c->line_len] = '\0';
        c->ev_ts = strtoull(l + 6, NULL, 10);
    }
}

static int on_message_begin(llhttp_t *p)
{
    struct conn *c = p->data;
    c->status = 0;
    c->body_in = 0;
    c->cur_hdr = -1;
    c->field_len = 0;
    for (size_t i = 0; i < LG_MAX_INSTANCE_HEADERS; i++)
        c->inst_len[i] = 0;
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    for (size_t i = 0; i < len; i++) {
        if (c->field_len >= sizeof(c->field) - 1) {
            c->field_len = sizeof(c->field); /* too long to be one of ours */
            return 0;
        }
        char ch = at[i];
        c->field[c->field_len++] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
    }
    return 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    const struct lg_opts *o = c->cl->o;
    c->cur_hdr = -1;
    if (c->field_len < sizeof(c->field))
        for (size_t i = 0; i < o->n_instance_headers; i++)
            if (strlen(o->instance_headers[i]) == c->field_len &&
                memcmp(o->instance_headers[i], c->field, c->field_len) == 0)
                c->cur_hdr = (int)i;
    c->field_len = 0;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    if (c->cur_hdr < 0)
        return 0;
    size_t k = (size_t)c->cur_hdr;
    size_t room = sizeof(c->inst[0]) - 1 - c->inst_len[k];
    size_t n = len < room ? len : room;
    memcpy(c->inst[k] + c->inst_len[k], at, n);
    c->inst_len[k] += n;
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    c->cur_hdr = -1;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    c->status = llhttp_get_status_code(p);
    if (is_sse(c->cl) && c->status >= 200 && c->status < 300) {
        set_state(c, C_STREAM);
        check_sticky(c);
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    c->body_in += len;
    if (c->state != C_STREAM)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char ch = at[i];
        if (ch == '\n') {
            if (!c->line_overflow)
                sse_line(c);
            c->line_len = 0;
            c->line_overflow = 0;
        } else if (ch != '\r') {
            if (c->line_len < LINE_MAX_LEN - 1)
                c->line[c->line_len++] = ch;
            else
                c->line_overflow = 1;
        }
    }
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    c->complete = 1;
    c->keep_alive = llhttp_should_keep_alive(p);
    return HPE_PAUSED;
}

static void feed(struct conn *c, const char *data, size_t len)
{
    if (c->state != C_SENDING && c->state != C_WAITING && c->state != C_STREAM) {
        conn_fail(c, LG_ERR_PARSE); /* bytes nobody asked for */
        return;
    }
    llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
    if (err == HPE_OK)
        return;
    if (err != HPE_PAUSED) {
        conn_fail(c, LG_ERR_PARSE);
        return;
    }
    size_t used = (size_t)(llhttp_get_error_pos(&c->parser) - data);
    llhttp_resume(&c->parser);
    if (is_sse(c->cl)) {
        /* A stream's response ended: an error status, or the stream closed. */
        if (c->opened || c->state == C_STREAM)
            conn_fail(c, c->opened ? LG_ERR_STREAM_CLOSED : LG_ERR_EOF);
        else
            conn_fail(c, LG_ERR_STATUS);
        return;
    }
    if (used < len) {
        /* We never pipeline: bytes after a complete response are a protocol error. */
        complete_request(c);
        if (c->state == C_IDLE || c->state == C_SENDING || c->state == C_WAITING)
            conn_fail(c, LG_ERR_PARSE);
        return;
    }
    complete_request(c);
}

static void on_eof(struct conn *c)
{
    if (c->state == C_IDLE) {
        /* The server closed an idle keep-alive connection. */
        conn_shut(c);
        if (work_left(c->cl)) {
            c->cl->st.reconnects++;
            conn_open(c);
        } else {
            set_state(c, C_CLOSED);
        }
        return;
    }
    if ((c->state == C_WAITING || c->state == C_SENDING) && llhttp_message_needs_eof(&c->parser)) {
        llhttp_errno_t err = llhttp_finish(&c->parser);
        if (err == HPE_OK || err == HPE_PAUSED) {
            if (c->complete) {
                llhttp_resume(&c->parser);
                c->keep_alive = 0;
                complete_request(c);
                return;
            }
        }
    }
    conn_fail(c, c->state == C_STREAM && c->opened ? LG_ERR_STREAM_CLOSED : LG_ERR_EOF);
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    struct lg_client *cl = c->cl;
    (void)what;
    for (int i = 0; i < 8; i++) {
        ssize_t n = read(fd, cl->rbuf, RBUF_SIZE);
        if (n > 0) {
            int fd_before = c->fd;
            feed(c, cl->rbuf, (size_t)n);
            if (c->fd != fd_before || (size_t)n < RBUF_SIZE)
                return; /* closed or re-opened meanwhile, or drained */
            continue;
        }
        if (n == 0) {
            on_eof(c);
            return;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            conn_fail(c, LG_ERR_READ);
        return;
    }
}

/* ------------------------------------------------------------------ SSE */

static void sse_launch(struct lg_client *cl)
{
    if (cl->stage != ST_PREPARE)
        return;
    while (cl->sse_pending < cl->sse_conc && cl->sse_next < cl->sse_total) {
        struct conn *c = &cl->conns[cl->sse_next++];
        cl->sse_pending++;
        conn_open(c);
    }
}

/* ------------------------------------------------------------------ stages */

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct lg_client *cl = arg;
    (void)fd, (void)what;
    cl->timed_out = 1;
    event_base_loopbreak(cl->base);
}

static void init_settings(void)
{
    llhttp_settings_init(&settings);
    settings.on_message_begin = on_message_begin;
    settings.on_header_field = on_header_field;
    settings.on_header_field_complete = on_header_field_complete;
    settings.on_header_value = on_header_value;
    settings.on_header_value_complete = on_header_value_complete;
    settings.on_headers_complete = on_headers_complete;
    settings.on_body = on_body;
    settings.on_message_complete = on_message_complete;
    for (size_t i = 0; i < BODY_CHUNK; i++)
        body_pattern[i] = (char)('A' + i % 26);
}

static size_t share(uint64_t total, uint32_t parts, uint32_t index)
{
    return (size_t)(total / parts + (index < total % parts ? 1 : 0));
}

struct lg_client *lg_client_create(const struct lg_opts *o, uint32_t index)
{
    pthread_once(&once, init_settings);
    struct lg_client *cl = calloc(1, sizeof(*cl));
    if (!cl)
        return NULL;
    cl->o = o;
    cl->index = index;
    lg_stats_init(&cl->st);
    struct event_config *cfg = event_config_new();
    if (cfg) {
        event_config_set_flag(cfg, EVENT_BASE_FLAG_NOLOCK);
        event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
        cl->base = event_base_new_with_config(cfg);
        event_config_free(cfg);
    }
    cl->n_sess = share(o->sessions, o->threads, index);
    cl->n_conns = is_sse(cl) ? share(o->streams, o->threads, index)
                             : share(o->connections, o->threads, index);
    cl->sse_total = is_sse(cl) ? cl->n_conns : 0;
    cl->sse_conc = (uint32_t)share(o->connect_concurrency, o->threads, index);
    if (!cl->sse_conc)
        cl->sse_conc = 1;
    cl->sess = calloc(cl->n_sess ? cl->n_sess : 1, sizeof(*cl->sess));
    cl->conns = calloc(cl->n_conns ? cl->n_conns : 1, sizeof(*cl->conns));
    cl->idle = calloc(cl->n_conns ? cl->n_conns : 1, sizeof(*cl->idle));
    if (!cl->base || !cl->sess || !cl->conns || !cl->idle)
        goto fail;
    cl->tick = evtimer_new(cl->base, on_tick, cl);
    cl->deadline = evtimer_new(cl->base, on_deadline, cl);
    if (!cl->tick || !cl->deadline)
        goto fail;
    for (size_t i = 0; i < cl->n_sess; i++)
        cl->sess[i].num = i;
    cl->next_num = cl->n_sess;
    cl->st.sessions_new = cl->n_sess;
    cl->st.sse_streams = cl->sse_total;
    for (size_t i = 0; i < cl->n_conns; i++) {
        struct conn *c = &cl->conns[i];
        c->cl = cl;
        c->fd = -1;
        c->timer = evtimer_new(cl->base, on_timer, c);
        if (!c->timer)
            goto fail;
    }
    return cl;
fail:
    lg_client_destroy(cl);
    return NULL;
}

void lg_client_destroy(struct lg_client *cl)
{
    if (!cl)
        return;
    for (size_t i = 0; cl->conns && i < cl->n_conns; i++) {
        conn_shut(&cl->conns[i]);
        if (cl->conns[i].timer)
            event_free(cl->conns[i].timer);
    }
    if (cl->tick)
        event_free(cl->tick);
    if (cl->deadline)
        event_free(cl->deadline);
    if (cl->base)
        event_base_free(cl->base);
    free(cl->sess);
    free(cl->conns);
    free(cl->idle);
    free(cl);
}

int lg_client_prepare(struct lg_client *cl)
{
    cl->stage = ST_PREPARE;
    cl->t_prepare = lg_now_ns();
    add_timer(cl->deadline, cl->o->timeout_ns + PREPARE_SLACK_NS);
    if (is_sse(cl)) {
        if (!cl->sse_total)
            return 0;
        sse_launch(cl);
    } else {
        if (!cl->n_conns)
            return 0;
        for (size_t i = 0; i < cl->n_conns; i++)
            conn_open(&cl->conns[i]);
    }
    event_base_dispatch(cl->base);
    event_del(cl->deadline);
    if (cl->timed_out && !is_sse(cl))
        return -EIO;
    return 0;
}

int lg_client_run(struct lg_client *cl, uint64_t t_run)
{
    const struct lg_opts *o = cl->o;
    cl->stage = ST_RUN;
    cl->timed_out = 0;
    cl->t_run = t_run;
    cl->t_meas_start = t_run + o->warmup_ns;
    cl->t_meas_end = cl->t_meas_start + o->duration_ns;
    uint64_t now = lg_now_ns();
    if (is_sse(cl)) {
        cl->t_meas_start = t_run;
        add_timer(cl->deadline, t_run + o->duration_ns > now ? t_run + o->duration_ns - now : 0);
        event_base_dispatch(cl->base);
        cl->stage = ST_DONE;
        return 0;
    }
    add_timer(cl->deadline, cl->t_meas_end - now + o->timeout_ns + RUN_SLACK_NS);
    if (o->mode == LG_MODE_RATE) {
        cl->interval_ns = 1e9 * (double)o->threads / o->rate;
        /* threads are staggered so their arrivals interleave */
        cl->t_run += (uint64_t)(cl->interval_ns * cl->index / o->threads);
        cl->k_meas_start = (uint64_t)ceil((double)(cl->t_meas_start - cl->t_run) / cl->interval_ns);
        cl->k_end = (uint64_t)ceil((double)(cl->t_meas_end - cl->t_run) / cl->interval_ns);
        cl->k_next = 0;
        cl->n_idle = 0;
        for (size_t i = 0; i < cl->n_conns; i++)
            if (cl->conns[i].state == C_IDLE)
                cl->idle[cl->n_idle++] = &cl->conns[i];
        dispatch(cl);
    } else {
        for (size_t i = 0; i < cl->n_conns; i++)
            if (cl->conns[i].state == C_IDLE)
                conn_ready(&cl->conns[i]);
    }
    event_base_dispatch(cl->base);
    if (o->mode == LG_MODE_RATE) {
        uint64_t from = cl->k_next > cl->k_meas_start ? cl->k_next : cl->k_meas_start;
        if (cl->k_end > from)
            cl->st.unsent += cl->k_end - from;
    }
    cl->stage = ST_DONE;
    return 0;
}

const struct lg_stats *lg_client_stats(const struct lg_client *cl)
{
    return &cl->st;
}

void lg_stats_init(struct lg_stats *s)
{
    memset(s, 0, sizeof(*s));
    lg_hist_init(&s->lat);
    lg_hist_init(&s->sse_open);
    lg_hist_init(&s->sse_cross);
}

void lg_stats_merge(struct lg_stats *d, const struct lg_stats *s)
{
    lg_hist_merge(&d->lat, &s->lat);
    lg_hist_merge(&d->sse_open, &s->sse_open);
    lg_hist_merge(&d->sse_cross, &s->sse_cross);
    d->requests += s->requests;
    d->responses_all += s->responses_all;
    d->ok += s->ok;
    for (size_t i = 0; i < 600; i++)
        d->status[i] += s->status[i];
    for (size_t i = 0; i < LG_ERR_COUNT; i++)
        d->errors[i] += s->errors[i];
    d->body_in += s->body_in;
    d->body_out += s->body_out;
    d->unsent += s->unsent;
    d->errors_unmeasured += s->errors_unmeasured;
    d->sent += s->sent;
    d->reconnects += s->reconnects;
    d->sessions_new += s->sessions_new;
    d->sessions_checked += s->sessions_checked;
    d->sessions_violated += s->sessions_violated;
    d->responses_checked += s->responses_checked;
    d->sse_streams += s->sse_streams;
    d->sse_opened += s->sse_opened;
    d->sse_failed += s->sse_failed;
    d->sse_events += s->sse_events;
    d->inst_overflow += s->inst_overflow;
    for (size_t i = 0; i < s->n_inst; i++) {
        size_t j = 0;
        while (j < d->n_inst && strcmp(d->inst[j].name, s->inst[i].name) != 0)
            j++;
        if (j == d->n_inst) {
            if (d->n_inst == LG_MAX_INSTANCES) {
                d->inst_overflow += s->inst[i].responses;
                continue;
            }
            d->inst[d->n_inst++] = s->inst[i];
        } else {
            d->inst[j].responses += s->inst[i].responses;
        }
    }
}
