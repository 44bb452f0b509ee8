/* Fuzz target: the control planes' HTTP server (common/httpd.c) on a real event loop. The
 * input is what a client sends on one connection (then it shuts down its side); the handler
 * answers each request, every other one later than at once, so pipelining, deferred answers,
 * the limits' refusals and the parser's errors all run. Beyond "no crash, no leak": whatever
 * the server wrote must start with a status line, and the connection must be closed by the
 * end (nothing left open for an input that ended). */
#include <event2/event.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/httpd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct st {
    struct cm_httpd_req *held;
    int n;
    struct cm_httpd_req *streamed; /* a PUT whose body streams (the head callback's) */
    int paused, ended, chunks;
};

static int head_cb(struct cm_httpd_req *req, void *arg)
{
    (void)arg;
    return cm_httpd_method(req) == CM_HTTP_PUT;
}

static void on_streamed_gone(void *arg)
{
    struct st *s = arg;
    s->streamed = NULL;
}

/* Pauses every third chunk (resumed by the loop), answers after the end (by the loop). */
static int on_chunk(void *arg, const char *data, size_t len)
{
    struct st *s = arg;
    (void)data;
    if (!len) {
        s->ended = 1;
        return 0;
    }
    if (++s->chunks % 3 == 0) {
        s->paused = 1;
        return 1;
    }
    return 0;
}

static void on_req(struct cm_httpd_req *req, void *arg)
{
    struct st *s = arg;
    size_t blen;
    (void)cm_httpd_body(req, &blen);
    (void)cm_httpd_header(req, "content-type");
    (void)cm_httpd_query(req);
    if (strlen(cm_httpd_path(req)) == 0)
        abort(); /* never empty */
    if (cm_httpd_method(req) == CM_HTTP_PUT) {
        if (s->streamed)
            abort();       /* one request at a time per connection */
        s->streamed = req; /* counted in n once answered: a broken body gets no answer */
        s->paused = s->ended = 0;
        cm_httpd_set_close_cb(req, on_streamed_gone, s);
        cm_httpd_body_stream(req, on_chunk, s);
        return;
    }
    if (s->n++ % 2 == 0 && !s->held) {
        s->held = req; /* answered on the next loop turn */
        return;
    }
    cm_httpd_reply(req, 200, "text/plain", cm_httpd_path(req), strlen(cm_httpd_path(req)));
}

/* Answers in <out>: status lines other than interim 100s. The handler's bodies (a path,
 * an error JSON) cannot hold "HTTP/1.1 " (no space in a request target). */
static int count_answers(const char *out, size_t len)
{
    int n = 0;
    for (size_t i = 0; i + 12 <= len; i++)
        if (memcmp(out + i, "HTTP/1.1 ", 9) == 0 && memcmp(out + i + 9, "100", 3) != 0)
            n++;
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 200000)
        return 0;
    /* The first byte picks how the client ends: at once (a half-close right after its last
     * byte) or only once every answer came (so each request must have been answered). */
    int patient = data[0] & 1;
    data++, size--;
    struct event_base *base = event_base_new();
    struct st s = {0};
    const struct cm_httpd_limits lim = {.max_header_bytes = 2048,
                                        .max_body = 4096,
                                        .timeout = 5 * CM_USEC_PER_SEC,
                                        .max_connections = 4};
    struct cm_httpd *h = cm_httpd_create(base, &lim, on_req, &s);
    if (h)
        cm_httpd_set_head_cb(h, head_cb);
    int fds[2];
    if (!base || !h || socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds) < 0)
        abort();
    if (cm_httpd_adopt(h, fds[0]) < 0)
        abort();
    size_t off = 0;
    static char out[1 << 20];
    size_t got = 0;
    int shut = 0, quiet = 0;
    for (int i = 0; i < 3000; i++) {
        if (off < size) {
            ssize_t n = write(fds[1], data + off, size - off);
            if (n > 0)
                off += (size_t)n;
        }
        if (off == size && !shut && (!patient || quiet > 20)) {
            shutdown(fds[1], SHUT_WR);
            shut = 1;
        }
        event_base_loop(base, EVLOOP_NONBLOCK);
        int progress = 0;
        if (s.held) {
            struct cm_httpd_req *r = s.held;
            s.held = NULL;
            cm_httpd_reply_error(r, 503, "overloaded", "later");
            progress = 1;
        }
        if (s.streamed && s.paused) {
            s.paused = 0;
            cm_httpd_body_resume(s.streamed);
            progress = 1;
        } else if (s.streamed && (s.ended || s.chunks > 50)) { /* answered at its end, or early */
            struct cm_httpd_req *r = s.streamed;
            s.streamed = NULL;
            cm_httpd_set_close_cb(r, NULL, NULL);
            cm_httpd_reply(r, 200, "text/plain", "stored", 6);
            s.n++;
            progress = 1;
        }
        ssize_t n;
        while ((n = read(fds[1], out + got, sizeof(out) - got)) > 0) {
            got += (size_t)n;
            progress = 1;
        }
        quiet = progress ? 0 : quiet + 1;
        if (cm_httpd_connections(h) == 0 && n == 0)
            break;
    }
    if (got >= 9 && memcmp(out, "HTTP/1.1 ", 9) != 0)
        abort(); /* something other than an answer was written */
    if (cm_httpd_connections(h) != 0)
        abort(); /* the input ended: the connection must have closed */
    int answers = count_answers(out, got);
    if (answers > s.n + 1)
        abort(); /* one answer per request, plus at most one refusal of our own */
    if (patient && answers < s.n)
        abort(); /* a request handled and never answered */
    cm_httpd_destroy(h);
    if (s.streamed) /* destroy() ran its close callback */
        abort();
    if (s.held)
        cm_httpd_reply(s.held, 200, NULL, NULL, 0); /* owed after destroy(): only frees */
    close(fds[1]);
    event_base_free(base);
    return 0;
}
