/* berth-bench-upstream: the HTTP/1.1 upstream every proxy in bench/run is measured against.
 *
 * One process serves several listeners, each with its own id, which it sends back in the
 * "x-upstream-id" response header so the load generator can check stickiness behind proxies
 * that add no header of their own. Small and fast on purpose: requests are parsed by llhttp
 * straight out of one per-thread read buffer, responses are prebuilt, so the upstream is never
 * what a benchmark measures.
 *
 *   GET  /                   200, a 13-byte body ("hello, agent\n")
 *   GET  /bytes/N            200, N bytes (N <= 64 GiB) streamed from a pattern buffer
 *   GET  /sse?every=MS       200 text/event-stream (chunked): "event: open" at once, then
 *                            "event: tick" every MS ms (first one at a random phase); each
 *                            event's data is CLOCK_MONOTONIC in ns when it was written, so a
 *                            client on the same host measures the time the event took to cross
 *   POST|PUT any             the body is read and dropped; 200 {"received":N}
 *   anything else            404 JSON error; malformed requests get 400 and the connection closes
 *
 * Usage: berth-bench-upstream --listen 127.0.0.1:PORT=ID [--listen ...] [--threads N]
 * PORT 0 picks a free port. When every listener is bound, one line goes to stdout:
 *   "ready ID=127.0.0.1:PORT ID=127.0.0.1:PORT ...". SIGTERM or SIGINT stops it. */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define MAX_LISTENERS 64
#define MAX_THREADS 64
#define READ_BUF (256 * 1024)
#define PATTERN_SIZE (256 * 1024)
#define URL_MAX 256
#define SSE_BACKLOG_MAX (64 * 1024) /* an event is skipped while this much is unsent */
#define MAX_BYTES_BODY (64ull << 30)

struct listen_spec {
    char host[64];
    int port;
    char id[64];
};

struct thread;

struct listener {
    int fd;
    struct event *ev;
    struct thread *t;
    const struct listen_spec *spec;
};

enum conn_state {
    CS_READING,  /* waiting for (more of) a request */
    CS_WRITING,  /* a response is being written; reading paused */
    CS_SSE,      /* an open event stream; reading only to see the client go */
};

struct conn {
    struct thread *t;
    const struct listen_spec *spec;
    int fd;
    enum conn_state state;
    struct event *rev, *wev, *timer;
    llhttp_t parser;
    char url[URL_MAX];
    size_t url_len;
    uint64_t body_bytes;
    int close_after;
    int complete;
    /* pending output: out[out_off..out_len) then stream_left pattern bytes */
    char *out;
    size_t out_len, out_off, out_cap;
    uint64_t stream_left;
    /* unparsed input left over when a request completed mid-buffer (pipelining) */
    char *rest;
    size_t rest_len;
    uint32_t every_ms;
    uint64_t skipped_events;
};

struct thread {
    int index;
    struct event_base *base;
    struct listener ls[MAX_LISTENERS];
    size_t n_ls;
    pthread_t tid;
    char rbuf[READ_BUF];
    unsigned seed;
};

static struct listen_spec specs[MAX_LISTENERS];
static size_t n_specs;
static struct thread *threads[MAX_THREADS];
static int n_threads = 1;
static char pattern[PATTERN_SIZE];
static llhttp_settings_t settings;
static const char small_body[] = "hello, agent\n";

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void conn_close(struct conn *c)
{
    if (!c)
        return;
    if (c->rev)
        event_free(c->rev);
    if (c->wev)
        event_free(c->wev);
    if (c->timer)
        event_free(c->timer);
    if (c->fd >= 0)
        close(c->fd);
    free(c->out);
    free(c->rest);
    free(c);
}

static int out_append(struct conn *c, const char *p, size_t n)
{
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (c->out_len + n > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 1024;
        while (cap < c->out_len + n)
            cap *= 2;
        char *o = realloc(c->out, cap);
        if (!o)
            return -ENOMEM;
        c->out = o;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
    return 0;
}

static size_t pending(const struct conn *c)
{
    return (c->out_len - c->out_off) + (size_t)c->stream_left;
}

static void process_input(struct conn *c, const char *data, size_t len);

/* Writes what is pending. Returns 0 (all written, or the rest waits for EV_WRITE) or -1 when
 * the connection was closed. */
static int flush_out(struct conn *c)
{
    while (pending(c)) {
        struct iovec iov[2];
        int n = 0;
        if (c->out_len > c->out_off) {
            iov[n].iov_base = c->out + c->out_off;
            iov[n].iov_len = c->out_len - c->out_off;
            n++;
        }
        if (c->stream_left) {
            iov[n].iov_base = pattern;
            iov[n].iov_len = c->stream_left < PATTERN_SIZE ? (size_t)c->stream_left : PATTERN_SIZE;
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
            conn_close(c);
            return -1;
        }
        size_t left = (size_t)w;
        size_t head = c->out_len - c->out_off;
        size_t h = left < head ? left : head;
        c->out_off += h;
        left -= h;
        c->stream_left -= left;
    }
    event_del(c->wev);
    if (c->state == CS_WRITING) {
        if (c->close_after) {
            conn_close(c);
            return -1;
        }
        c->state = CS_READING;
        event_add(c->rev, NULL);
        if (c->rest_len) {
            char *r = c->rest;
            size_t rl = c->rest_len;
            c->rest = NULL;
            c->rest_len = 0;
            process_input(c, r, rl);
            free(r);
            /* c may be gone now: the caller must not touch it. */
            return -1;
        }
    }
    return 0;
}

static int respond(struct conn *c, int status, const char *reason, const char *ctype,
                   const char *body, size_t body_len, uint64_t stream_len)
{
    char head[512];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nx-upstream-id: %s\r\ncontent-type: %s\r\n"
                     "content-length: %" PRIu64 "\r\n%s\r\n",
                     status, reason, c->spec->id, ctype, (uint64_t)body_len + stream_len,
                     c->close_after ? "connection: close\r\n" : "");
    if (out_append(c, head, (size_t)n) || (body_len && out_append(c, body, body_len)))
        return -ENOMEM;
    c->stream_left = stream_len;
    return 0;
}

static void sse_event(struct conn *c, const char *name)
{
    char ev[128], chunk[160];
    int n = snprintf(ev, sizeof(ev), "event: %s\ndata: %" PRIu64 "\n\n", name, now_ns());
    int m = snprintf(chunk, sizeof(chunk), "%x\r\n%s\r\n", n, ev);
    if (out_append(c, chunk, (size_t)m) == 0)
        flush_out(c);
}

static void on_sse_timer(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    (void)fd, (void)what;
    struct timeval period = {(time_t)(c->every_ms / 1000), (suseconds_t)(c->every_ms % 1000) * 1000};
    event_add(c->timer, &period);
    if (pending(c) > SSE_BACKLOG_MAX)
        c->skipped_events++; /* the client does not read: do not queue without bound */
    else
        sse_event(c, "tick"); /* may close c on a write error: nothing after this */
}

static int start_sse(struct conn *c, const char *query)
{
    uint32_t every = 1000;
    const char *e = query ? strstr(query, "every=") : NULL;
    if (e)
        every = (uint32_t)strtoul(e + 6, NULL, 10);
    c->every_ms = every;
    char head[512];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 200 OK\r\nx-upstream-id: %s\r\ncontent-type: text/event-stream\r\n"
                     "cache-control: no-cache\r\nx-accel-buffering: no\r\n"
                     "transfer-encoding: chunked\r\n\r\n",
                     c->spec->id);
    if (out_append(c, head, (size_t)n))
        return -ENOMEM;
    c->state = CS_SSE;
    if (every) {
        c->timer = evtimer_new(c->t->base, on_sse_timer, c);
        if (!c->timer)
            return -ENOMEM;
        /* A random phase spreads the events of many streams opened together. */
        uint64_t phase_us = (uint64_t)rand_r(&c->t->seed) % ((uint64_t)every * 1000);
        struct timeval first = {(time_t)(phase_us / 1000000), (suseconds_t)(phase_us % 1000000)};
        event_add(c->timer, &first);
    }
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    struct conn *c = p->data;
    c->url_len = 0;
    c->body_bytes = 0;
    c->complete = 0;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    if (c->url_len + len >= URL_MAX)
        return -1;
    memcpy(c->url + c->url_len, at, len);
    c->url_len += len;
    c->url[c->url_len] = '\0';
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    (void)at;
    c->body_bytes += len;
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    c->complete = 1;
    c->close_after = !llhttp_should_keep_alive(p);
    return HPE_PAUSED;
}

/* Builds the response to the request just parsed. Returns 0 or -1 on a bad request. */
static int route(struct conn *c)
{
    uint8_t method = llhttp_get_method(&c->parser);
    char *q = strchr(c->url, '?');
    if (q)
        *q++ = '\0';
    if (method == HTTP_POST || method == HTTP_PUT) {
        char b[64];
        int n = snprintf(b, sizeof(b), "{\"received\":%" PRIu64 "}\n", c->body_bytes);
        return respond(c, 200, "OK", "application/json", b, (size_t)n, 0);
    }
    if (method != HTTP_GET)
        goto not_found;
    if (strcmp(c->url, "/") == 0)
        return respond(c, 200, "OK", "text/plain", small_body, sizeof(small_body) - 1, 0);
    if (strncmp(c->url, "/bytes/", 7) == 0) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(c->url + 7, &end, 10);
        if (errno || *end || end == c->url + 7 || n > MAX_BYTES_BODY) {
            static const char bad[] =
                "{\"error\":{\"code\":\"bad_request\",\"message\":\"/bytes/N: N is 0..64GiB\"}}\n";
            c->close_after = 1;
            return respond(c, 400, "Bad Request", "application/json", bad, sizeof(bad) - 1, 0);
        }
        return respond(c, 200, "OK", "application/octet-stream", NULL, 0, n);
    }
    if (strcmp(c->url, "/sse") == 0)
        return start_sse(c, q);
not_found:;
    static const char nf[] = "{\"error\":{\"code\":\"not_found\",\"message\":\"no such path\"}}\n";
    return respond(c, 404, "Not Found", "application/json", nf, sizeof(nf) - 1, 0);
}

static void bad_request(struct conn *c)
{
    static const char bad[] =
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n"
        "content-length: 62\r\n\r\n"
        "{\"error\":{\"code\":\"bad_request\",\"message\":\"malformed HTTP\"}}\n";
    c->close_after = 1;
    c->state = CS_WRITING;
    event_del(c->rev);
    if (out_append(c, bad, sizeof(bad) - 1)) {
        conn_close(c);
        return;
    }
    flush_out(c);
}

/* Parses <data>; answers each complete request in turn. May close (free) c. */
static void process_input(struct conn *c, const char *data, size_t len)
{
    while (len) {
        if (c->state == CS_SSE)
            return; /* bytes after an SSE request are ignored */
        llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
        size_t used = len;
        if (err == HPE_PAUSED) {
            used = (size_t)(llhttp_get_error_pos(&c->parser) - data);
            llhttp_resume(&c->parser);
        } else if (err != HPE_OK) {
            bad_request(c);
            return;
        }
        data += used;
        len -= used;
        if (!c->complete)
            return;
        c->complete = 0;
        if (route(c) < 0) {
            conn_close(c);
            return;
        }
        if (c->state == CS_SSE) {
            if (flush_out(c) == 0) /* still open: show the stream is open at once */
                sse_event(c, "open");
            return;
        }
        if (len) {
            /* Keep the rest until this response is out (pipelined requests stay ordered). */
            free(c->rest);
            c->rest = malloc(len);
            if (!c->rest) {
                conn_close(c);
                return;
            }
            memcpy(c->rest, data, len);
            c->rest_len = len;
        }
        c->state = CS_WRITING;
        event_del(c->rev);
        flush_out(c); /* continues with c->rest when everything is written */
        return;
    }
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    (void)what;
    ssize_t n = read(fd, c->t->rbuf, READ_BUF);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        conn_close(c);
        return;
    }
    if (n < 0)
        return;
    process_input(c, c->t->rbuf, (size_t)n);
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    flush_out(arg);
}

static void on_accept(evutil_socket_t fd, short what, void *arg)
{
    struct listener *l = arg;
    (void)what;
    for (int i = 0; i < 64; i++) {
        int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0)
            return; /* EAGAIN, or EMFILE: the listener stays readable and is retried */
        int one = 1;
        setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        struct conn *c = calloc(1, sizeof(*c));
        if (!c) {
            close(cfd);
            continue;
        }
        c->t = l->t;
        c->spec = l->spec;
        c->fd = cfd;
        c->rev = event_new(l->t->base, cfd, EV_READ | EV_PERSIST, on_read, c);
        c->wev = event_new(l->t->base, cfd, EV_WRITE | EV_PERSIST, on_write, c);
        if (!c->rev || !c->wev) {
            conn_close(c);
            continue;
        }
        llhttp_init(&c->parser, HTTP_REQUEST, &settings);
        c->parser.data = c;
        event_add(c->rev, NULL);
    }
}

static int open_listener(const char *host, int port, int *ret_port)
{
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        return -EINVAL;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 4096) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    socklen_t sl = sizeof(sa);
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    *ret_port = ntohs(sa.sin_port);
    return fd;
}

static void *thread_main(void *arg)
{
    struct thread *t = arg;
    event_base_dispatch(t->base);
    return NULL;
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)sig, (void)what, (void)arg;
    for (int i = 0; i < n_threads; i++)
        event_base_loopbreak(threads[i]->base);
}

static int parse_listen(const char *s, struct listen_spec *ls)
{
    const char *eq = strchr(s, '=');
    const char *colon = strrchr(s, ':');
    if (!eq || !colon || colon > eq || (size_t)(colon - s) >= sizeof(ls->host) ||
        strlen(eq + 1) == 0 || strlen(eq + 1) >= sizeof(ls->id))
        return -EINVAL;
    memcpy(ls->host, s, (size_t)(colon - s));
    ls->host[colon - s] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (end != eq || port < 0 || port > 65535)
        return -EINVAL;
    ls->port = (int)port;
    snprintf(ls->id, sizeof(ls->id), "%s", eq + 1);
    for (const char *p = ls->id; *p; p++)
        if (*p <= 0x20 || *p >= 0x7f)
            return -EINVAL;
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: berth-bench-upstream --listen HOST:PORT=ID [--listen ...] [--threads N]\n"
               "  PORT 0 picks a free port; the bound addresses are printed on one line:\n"
               "  \"ready ID=HOST:PORT ...\". Endpoints: GET / (small), GET /bytes/N,\n"
               "  GET /sse?every=MS, POST|PUT (body read and dropped).\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"listen", required_argument, NULL, 'l'},
                                         {"threads", required_argument, NULL, 't'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "l:t:h", opts, NULL)) != -1) {
        switch (o) {
        case 'l':
            if (n_specs == MAX_LISTENERS || parse_listen(optarg, &specs[n_specs]) < 0) {
                fprintf(stderr, "berth-bench-upstream: bad --listen '%s' (HOST:PORT=ID, at most "
                                "%d)\n", optarg, MAX_LISTENERS);
                return 2;
            }
            n_specs++;
            break;
        case 't':
            n_threads = atoi(optarg);
            if (n_threads < 1 || n_threads > MAX_THREADS) {
                fprintf(stderr, "berth-bench-upstream: --threads is 1..%d\n", MAX_THREADS);
                return 2;
            }
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!n_specs || optind != argc) {
        usage(stderr);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    evthread_use_pthreads();
    for (size_t i = 0; i < PATTERN_SIZE; i++)
        pattern[i] = (char)('a' + i % 26);
    llhttp_settings_init(&settings);
    settings.on_message_begin = on_message_begin;
    settings.on_url = on_url;
    settings.on_body = on_body;
    settings.on_message_complete = on_message_complete;

    for (int i = 0; i < n_threads; i++) {
        struct thread *t = calloc(1, sizeof(*t));
        if (!t || !(t->base = event_base_new())) {
            fprintf(stderr, "berth-bench-upstream: out of memory\n");
            return 1;
        }
        t->index = i;
        t->seed = (unsigned)(now_ns() ^ (uint64_t)i * 2654435761u);
        threads[i] = t;
        for (size_t s = 0; s < n_specs; s++) {
            int port = 0;
            int fd = open_listener(specs[s].host, specs[s].port, &port);
            if (fd < 0) {
                fprintf(stderr, "berth-bench-upstream: cannot listen on %s:%d: %s\n",
                        specs[s].host, specs[s].port, strerror(-fd));
                return 1;
            }
            specs[s].port = port; /* later threads share the port (SO_REUSEPORT) */
            struct listener *l = &t->ls[t->n_ls++];
            l->fd = fd;
            l->t = t;
            l->spec = &specs[s];
            l->ev = event_new(t->base, fd, EV_READ | EV_PERSIST, on_accept, l);
            if (!l->ev || event_add(l->ev, NULL) < 0) {
                fprintf(stderr, "berth-bench-upstream: out of memory\n");
                return 1;
            }
        }
    }
    struct event *sigint = evsignal_new(threads[0]->base, SIGINT, on_signal, NULL);
    struct event *sigterm = evsignal_new(threads[0]->base, SIGTERM, on_signal, NULL);
    if (!sigint || !sigterm || event_add(sigint, NULL) < 0 || event_add(sigterm, NULL) < 0) {
        fprintf(stderr, "berth-bench-upstream: cannot handle signals\n");
        return 1;
    }
    printf("ready");
    for (size_t s = 0; s < n_specs; s++)
        printf(" %s=%s:%d", specs[s].id, specs[s].host, specs[s].port);
    printf("\n");
    fflush(stdout);
    for (int i = 1; i < n_threads; i++)
        if (pthread_create(&threads[i]->tid, NULL, thread_main, threads[i]) != 0) {
            fprintf(stderr, "berth-bench-upstream: cannot start thread %d\n", i);
            return 1;
        }
    event_base_dispatch(threads[0]->base);
    for (int i = 1; i < n_threads; i++)
        pthread_join(threads[i]->tid, NULL);
    return 0;
}
