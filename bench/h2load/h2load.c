/* berth-h2load: HTTP/2 load with many sessions. h2load (nghttp2-client) sends the same
 * header fields on every request, so one process is one session key; this sends each request
 * with the next of --sessions keys in turn, over --connections connections with --streams
 * requests in flight on each (closed loop), over TLS (ALPN h2) or cleartext with prior
 * knowledge, for --duration seconds. It checks stickiness (every response of a session from
 * the instance its first named in --instance-header) and prints one JSON object.
 *
 * One thread, raw libevent events, OpenSSL on a non-blocking socket, nghttp2's client session
 * fed from and drained into plain buffers (no bufferevents). */
#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define WBUF_MAX (256 * 1024)
#define RBUF_SIZE (64 * 1024)
#define INST_MAX 64

struct opts {
    const char *host, *port, *path, *session_header, *session_prefix, *instance_header;
    int tls;
    unsigned connections, streams, sessions;
    double duration, timeout;
};

struct session {
    char inst[INST_MAX];
    uint8_t inst_len, violated;
};

struct stats {
    uint64_t started, done, ok, status_2xx, status_other, reset, data_bytes;
    uint64_t sticky_checked, sticky_violated, conn_errors;
};

/* A request in flight: its session, and the instance its response named. */
struct req {
    uint32_t sess;
    int status;
    char inst[INST_MAX];
    uint8_t inst_len;
};

struct conn {
    struct ctx *x;
    int fd;
    SSL *ssl;
    nghttp2_session *s;
    struct event *rev, *wev;
    unsigned char wbuf[WBUF_MAX];
    size_t wlen, woff;
    unsigned inflight;
    struct req *reqs;  /* --streams slots */
    struct req **free; /* the free ones, a stack */
    unsigned n_free;
    int handshaking, dead;
};

struct ctx {
    struct opts o;
    struct event_base *base;
    SSL_CTX *sslctx;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    struct conn *conns;
    struct session *sess;
    uint32_t next_sess;
    struct stats st;
    int stopping;
    unsigned live;
    char authority[300];
    unsigned char rbuf[RBUF_SIZE];
};

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "berth-h2load: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    exit(2);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void conn_kill(struct conn *c);
static void conn_flush(struct conn *c);

/* ------------------------------------------------------------------ requests */

static int submit_one(struct conn *c)
{
    struct ctx *x = c->x;
    if (c->n_free == 0)
        return -1;
    struct req *r = c->free[--c->n_free];
    memset(r, 0, sizeof(*r));
    r->sess = x->next_sess;
    x->next_sess = (x->next_sess + 1) % x->o.sessions;
    char sid[96];
    int sl = snprintf(sid, sizeof(sid), "%s-%" PRIu32, x->o.session_prefix, r->sess);
#define NV(n, v, vl) {(uint8_t *)(n), (uint8_t *)(v), strlen(n), (vl), NGHTTP2_NV_FLAG_NONE}
    nghttp2_nv nv[] = {
        NV(":method", "GET", 3), NV(":scheme", x->o.tls ? "https" : "http", x->o.tls ? 5u : 4u),
        NV(":authority", x->authority, strlen(x->authority)),
        NV(":path", x->o.path, strlen(x->o.path)), NV(x->o.session_header, sid, (size_t)sl)};
#undef NV
    int32_t id = nghttp2_submit_request(c->s, NULL, nv, sizeof(nv) / sizeof(nv[0]), NULL, r);
    if (id < 0) {
        c->free[c->n_free++] = r;
        return -1;
    }
    c->inflight++;
    x->st.started++;
    return 0;
}

/* Requests until the connection has --streams in flight. None once the server sent GOAWAY
 * (nghttp2 would refuse each at once, and its close would ask for the next, without end). */
static void fill(struct conn *c)
{
    struct ctx *x = c->x;
    while (!x->stopping && !c->dead && c->inflight < x->o.streams &&
           nghttp2_session_check_request_allowed(c->s))
        if (submit_one(c) < 0)
            break;
}

static void check_sticky(struct ctx *x, struct req *r)
{
    struct session *s = &x->sess[r->sess];
    if (!r->inst_len)
        return;
    x->st.sticky_checked++;
    if (!s->inst_len) {
        memcpy(s->inst, r->inst, r->inst_len);
        s->inst_len = r->inst_len;
    } else if (s->inst_len != r->inst_len || memcmp(s->inst, r->inst, r->inst_len) != 0) {
        x->st.sticky_violated++;
        s->violated = 1;
    }
}

/* ------------------------------------------------------------------ nghttp2 callbacks */

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *arg)
{
    struct ctx *x = ((struct conn *)arg)->x;
    (void)flags;
    if (f->hd.type != NGHTTP2_HEADERS)
        return 0;
    struct req *r = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (!r)
        return 0;
    if (namelen == 7 && memcmp(name, ":status", 7) == 0 && valuelen == 3) {
        int st = (value[0] - '0') * 100 + (value[1] - '0') * 10 + (value[2] - '0');
        if (st >= 200) /* interim heads do not decide it */
            r->status = st;
    } else if (x->o.instance_header && namelen == strlen(x->o.instance_header) &&
               memcmp(name, x->o.instance_header, namelen) == 0 && valuelen < INST_MAX) {
        memcpy(r->inst, value, valuelen);
        r->inst_len = (uint8_t)valuelen;
    }
    return 0;
}

static int on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                   void *arg)
{
    (void)s, (void)flags, (void)id, (void)data;
    ((struct conn *)arg)->x->st.data_bytes += len;
    return 0;
}

static int on_close(nghttp2_session *s, int32_t id, uint32_t code, void *arg)
{
    struct conn *c = arg;
    struct ctx *x = c->x;
    struct req *r = nghttp2_session_get_stream_user_data(s, id);
    if (!r)
        return 0;
    nghttp2_session_set_stream_user_data(s, id, NULL);
    x->st.done++;
    if (code != NGHTTP2_NO_ERROR || r->status == 0) {
        x->st.reset++;
    } else {
        x->st.ok++;
        if (r->status < 300)
            x->st.status_2xx++;
        else
            x->st.status_other++;
        check_sticky(x, r);
    }
    c->free[c->n_free++] = r;
    c->inflight--;
    fill(c);
    return 0;
}

static nghttp2_session_callbacks *callbacks(void)
{
    static nghttp2_session_callbacks *cbs;
    if (!cbs) {
        if (nghttp2_session_callbacks_new(&cbs) != 0)
            die("%s", "out of memory");
        nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data);
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_close);
    }
    return cbs;
}

/* ------------------------------------------------------------------ the socket */

static ssize_t raw_write(struct conn *c, const void *p, size_t n)
{
    if (!c->ssl)
        return write(c->fd, p, n);
    int w = SSL_write(c->ssl, p, (int)n);
    if (w > 0)
        return w;
    int e = SSL_get_error(c->ssl, w);
    /* WANT_READ: the next read event goes on with it (on_io() flushes after reading) */
    errno = e == SSL_ERROR_WANT_WRITE ? EAGAIN : e == SSL_ERROR_WANT_READ ? EINPROGRESS : EIO;
    return -1;
}

static ssize_t raw_read(struct conn *c, void *p, size_t n)
{
    if (!c->ssl)
        return read(c->fd, p, n);
    int r = SSL_read(c->ssl, p, (int)n);
    if (r > 0)
        return r;
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_ZERO_RETURN)
        return 0;
    errno = e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ ? EAGAIN : EIO;
    return -1;
}

/* Moves nghttp2's output into wbuf and wbuf to the socket, as far as it takes. */
static void conn_flush(struct conn *c)
{
    for (;;) {
        while (c->wlen < WBUF_MAX) {
            const uint8_t *p;
            ssize_t n = nghttp2_session_mem_send(c->s, &p);
            if (n < 0) {
                conn_kill(c);
                return;
            }
            if (n == 0)
                break;
            if ((size_t)n > WBUF_MAX - c->wlen) { /* cannot happen: frames are small */
                conn_kill(c);
                return;
            }
            memcpy(c->wbuf + c->wlen, p, (size_t)n);
            c->wlen += (size_t)n;
        }
        if (c->woff == c->wlen)
            break;
        ssize_t w = raw_write(c, c->wbuf + c->woff, c->wlen - c->woff);
        if (w < 0) {
            if (errno == EAGAIN) {
                event_add(c->wev, NULL);
                return;
            }
            if (errno == EINPROGRESS)
                return;
            conn_kill(c);
            return;
        }
        c->woff += (size_t)w;
        if (c->woff == c->wlen)
            c->woff = c->wlen = 0;
    }
    if (!nghttp2_session_want_read(c->s) && !nghttp2_session_want_write(c->s))
        conn_kill(c);
}

static int handshake(struct conn *c)
{
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        const unsigned char *alpn;
        unsigned alen;
        SSL_get0_alpn_selected(c->ssl, &alpn, &alen);
        if (alen != 2 || memcmp(alpn, "h2", 2) != 0) {
            fprintf(stderr, "berth-h2load: the server did not select h2\n");
            conn_kill(c);
            return -1;
        }
        c->handshaking = 0;
        return 0;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_WRITE) {
        event_add(c->wev, NULL);
        return 1;
    }
    if (e == SSL_ERROR_WANT_READ)
        return 1;
    fprintf(stderr, "berth-h2load: TLS handshake failed\n");
    conn_kill(c);
    return -1;
}

static void start_session(struct conn *c)
{
    if (nghttp2_session_client_new(&c->s, callbacks(), c) != 0)
        die("%s", "out of memory");
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 100},
                                   {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20}};
    nghttp2_submit_settings(c->s, NGHTTP2_FLAG_NONE, iv, 2);
    nghttp2_session_set_local_window_size(c->s, NGHTTP2_FLAG_NONE, 0, 16 << 20);
    fill(c);
    conn_flush(c);
}

static void on_io(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    struct ctx *x = c->x;
    (void)fd, (void)what;
    if (c->dead)
        return;
    if (c->handshaking) {
        int r = handshake(c);
        if (r != 0)
            return;
        start_session(c);
        if (c->dead)
            return;
    }
    for (int i = 0; i < 16; i++) { /* a bounded number of reads per wake-up */
        ssize_t n = raw_read(c, x->rbuf, sizeof(x->rbuf));
        if (n == 0 || (n < 0 && errno != EAGAIN)) {
            conn_kill(c);
            return;
        }
        if (n < 0)
            break;
        if (nghttp2_session_mem_recv(c->s, x->rbuf, (size_t)n) < 0) {
            conn_kill(c);
            return;
        }
        if (c->dead)
            return;
        if (!c->ssl && (size_t)n < sizeof(x->rbuf))
            break; /* TLS reads a record at a time: on until it wants more */
    }
    conn_flush(c);
}

static void conn_kill(struct conn *c)
{
    if (c->dead)
        return;
    c->dead = 1;
    struct ctx *x = c->x;
    if (!x->stopping)
        x->st.conn_errors++;
    event_del(c->rev);
    event_del(c->wev);
    if (c->s) {
        x->st.reset += c->inflight;
        x->st.done += c->inflight;
        c->inflight = 0;
        nghttp2_session_del(c->s);
        c->s = NULL;
    }
    if (c->ssl)
        SSL_free(c->ssl);
    c->ssl = NULL;
    close(c->fd);
    if (--x->live == 0)
        event_base_loopbreak(x->base);
}

static void conn_open(struct ctx *x, struct conn *c)
{
    c->x = x;
    c->reqs = calloc(x->o.streams, sizeof(*c->reqs));
    c->free = calloc(x->o.streams, sizeof(*c->free));
    if (!c->reqs || !c->free)
        die("%s", "out of memory");
    for (unsigned i = 0; i < x->o.streams; i++)
        c->free[c->n_free++] = &c->reqs[i];
    c->fd = socket(x->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        die("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c->fd, (struct sockaddr *)&x->addr, x->addrlen) < 0 && errno != EINPROGRESS)
        die("connect: %s", strerror(errno));
    c->rev = event_new(x->base, c->fd, EV_READ | EV_PERSIST, on_io, c);
    c->wev = event_new(x->base, c->fd, EV_WRITE, on_io, c);
    event_add(c->rev, NULL);
    x->live++;
    if (x->o.tls) {
        c->ssl = SSL_new(x->sslctx);
        if (!c->ssl)
            die("%s", "SSL_new failed");
        SSL_set_fd(c->ssl, c->fd);
        SSL_set_tlsext_host_name(c->ssl, x->o.host);
        SSL_set_connect_state(c->ssl);
        c->handshaking = 1;
        event_add(c->wev, NULL); /* the handshake starts once connected */
    } else {
        start_session(c);
    }
}

/* ------------------------------------------------------------------ main */

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    struct ctx *x = arg;
    (void)fd, (void)what;
    x->stopping = 1; /* what is in flight ends; nothing new starts */
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    event_base_loopbreak(((struct ctx *)arg)->base);
}

static void usage(void)
{
    fputs("usage: berth-h2load --target HOST:PORT [--tls] [--connections N] [--streams N]\n"
          "         [--sessions N] [--duration SECS] [--path P] [--session-header H]\n"
          "         [--session-prefix S] [--instance-header H] [--timeout SECS]\n"
          "HTTP/2 requests (GET), each with the next of N session keys in its session header,\n"
          "N streams in flight on each connection, for SECS seconds; prints a JSON object.\n",
          stderr);
    exit(2);
}

static unsigned num(const char *s, const char *what, unsigned max)
{
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (*s == '\0' || *end || v == 0 || v > max)
        die("bad %s", what);
    return (unsigned)v;
}

static double secs(const char *s, const char *what)
{
    char *end;
    double v = strtod(s, &end);
    if (*s == '\0' || *end || !(v > 0) || v > 86400)
        die("bad %s", what);
    return v;
}

static void parse(struct opts *o, int argc, char **argv)
{
    static const struct option lo[] = {{"target", required_argument, NULL, 't'},
                                       {"tls", no_argument, NULL, 'T'},
                                       {"connections", required_argument, NULL, 'c'},
                                       {"streams", required_argument, NULL, 'm'},
                                       {"sessions", required_argument, NULL, 's'},
                                       {"duration", required_argument, NULL, 'D'},
                                       {"path", required_argument, NULL, 'p'},
                                       {"session-header", required_argument, NULL, 'H'},
                                       {"session-prefix", required_argument, NULL, 'P'},
                                       {"instance-header", required_argument, NULL, 'I'},
                                       {"timeout", required_argument, NULL, 'o'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
    *o = (struct opts){.path = "/",
                       .session_header = "x-fc-session-id",
                       .session_prefix = "h2",
                       .connections = 16,
                       .streams = 16,
                       .sessions = 1000,
                       .duration = 5,
                       .timeout = 30};
    static char hostbuf[256];
    int ch;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 't': {
            const char *colon = strrchr(optarg, ':');
            if (!colon || colon == optarg || (size_t)(colon - optarg) >= sizeof(hostbuf))
                die("bad --target %s (HOST:PORT)", optarg);
            memcpy(hostbuf, optarg, (size_t)(colon - optarg));
            hostbuf[colon - optarg] = '\0';
            o->host = hostbuf;
            o->port = colon + 1;
            num(o->port, "--target port", 65535);
            break;
        }
        case 'T':
            o->tls = 1;
            break;
        case 'c':
            o->connections = num(optarg, "--connections", 100000);
            break;
        case 'm':
            o->streams = num(optarg, "--streams", 100);
            break;
        case 's':
            o->sessions = num(optarg, "--sessions", 10000000);
            break;
        case 'D':
            o->duration = secs(optarg, "--duration");
            break;
        case 'o':
            o->timeout = secs(optarg, "--timeout");
            break;
        case 'p':
            if (optarg[0] != '/')
                die("bad --path %s (it starts with /)", optarg);
            o->path = optarg;
            break;
        case 'H':
            o->session_header = optarg;
            break;
        case 'P':
            o->session_prefix = optarg;
            break;
        case 'I':
            o->instance_header = optarg;
            break;
        default:
            usage();
        }
    }
    if (!o->host || optind != argc)
        usage();
    for (const char *p = o->session_header; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            die("--session-header %s: HTTP/2 field names are lower case", o->session_header);
}

int main(int argc, char **argv)
{
    static struct ctx x;
    parse(&x.o, argc, argv);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai;
    if (getaddrinfo(x.o.host, x.o.port, &hints, &ai) != 0)
        die("cannot resolve %s", x.o.host);
    memcpy(&x.addr, ai->ai_addr, ai->ai_addrlen);
    x.addrlen = ai->ai_addrlen;
    freeaddrinfo(ai);
    snprintf(x.authority, sizeof(x.authority), "%s:%s", x.o.host, x.o.port);
    if (x.o.tls) {
        x.sslctx = SSL_CTX_new(TLS_client_method());
        if (!x.sslctx)
            die("%s", "SSL_CTX_new failed");
        SSL_CTX_set_verify(x.sslctx, SSL_VERIFY_NONE, NULL); /* a bench certificate */
        static const unsigned char alpn[] = {2, 'h', '2'};
        SSL_CTX_set_alpn_protos(x.sslctx, alpn, sizeof(alpn));
        SSL_CTX_set_mode(x.sslctx,
                         SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    }
    x.sess = calloc(x.o.sessions, sizeof(*x.sess));
    x.conns = calloc(x.o.connections, sizeof(*x.conns));
    x.base = event_base_new();
    if (!x.sess || !x.conns || !x.base)
        die("%s", "out of memory");
    double t0 = now_s();
    for (unsigned i = 0; i < x.o.connections; i++)
        conn_open(&x, &x.conns[i]);
    struct timeval dur = {(time_t)x.o.duration,
                          (suseconds_t)((x.o.duration - (double)(time_t)x.o.duration) * 1e6)};
    struct timeval lim = {(time_t)(x.o.duration + x.o.timeout), 0};
    struct event *stop = evtimer_new(x.base, on_stop, &x);
    struct event *deadline = evtimer_new(x.base, on_deadline, &x);
    evtimer_add(stop, &dur);
    evtimer_add(deadline, &lim);
    /* Runs until every connection is idle after the stop (closed then), or the deadline. */
    while (!event_base_got_break(x.base)) {
        event_base_loop(x.base, EVLOOP_ONCE);
        if (x.stopping) {
            unsigned busy = 0;
            for (unsigned i = 0; i < x.o.connections; i++)
                if (!x.conns[i].dead && x.conns[i].inflight)
                    busy++;
            if (busy == 0)
                break;
        }
    }
    double elapsed = now_s() - t0;
    unsigned inflight = 0;
    for (unsigned i = 0; i < x.o.connections; i++)
        if (!x.conns[i].dead)
            inflight += x.conns[i].inflight;
    uint64_t violated_sessions = 0, used = 0;
    for (unsigned i = 0; i < x.o.sessions; i++) {
        violated_sessions += x.sess[i].violated;
        used += x.sess[i].inst_len != 0;
    }
    printf("{\"started\": %" PRIu64 ", \"done\": %" PRIu64 ", \"succeeded\": %" PRIu64
           ", \"status_2xx\": %" PRIu64 ", \"status_other\": %" PRIu64 ", \"reset\": %" PRIu64
           ", \"unfinished\": %u, \"data_bytes\": %" PRIu64 ", \"conn_errors\": %" PRIu64
           ", \"sessions\": %u, \"sessions_seen\": %" PRIu64 ", \"sticky_checked\": %" PRIu64
           ", \"sticky_violated\": %" PRIu64 ", \"sessions_violated\": %" PRIu64
           ", \"elapsed_s\": %.3f}\n",
           x.st.started, x.st.done, x.st.ok, x.st.status_2xx, x.st.status_other, x.st.reset,
           inflight, x.st.data_bytes, x.st.conn_errors, x.o.sessions, used, x.st.sticky_checked,
           x.st.sticky_violated, violated_sessions, elapsed);
    /* 0 only when every request was answered with a 2xx by its session's one instance */
    int rc = x.st.status_2xx > 0 && x.st.status_2xx == x.st.started && inflight == 0 &&
                     x.st.sticky_violated == 0 && x.st.conn_errors == 0
                 ? 0
                 : 1;
    x.stopping = 1;
    for (unsigned i = 0; i < x.o.connections; i++) {
        struct conn *c = &x.conns[i];
        conn_kill(c);
        event_free(c->rev);
        event_free(c->wev);
        free(c->reqs);
        free(c->free);
    }
    event_free(stop);
    event_free(deadline);
    event_base_free(x.base);
    SSL_CTX_free(x.sslctx);
    nghttp2_session_callbacks_del(callbacks());
    free(x.sess);
    free(x.conns);
    return rc;
}
