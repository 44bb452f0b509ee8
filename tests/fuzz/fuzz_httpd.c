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
};

static void on_req(struct cm_httpd_req *req, void *arg)
{
    struct st *s = arg;
    size_t blen;
    (void)cm_httpd_body(req, &blen);
    (void)cm_httpd_header(req, "content-type");
    (void)cm_httpd_query(req);
    if (strlen(cm_httpd_path(req)) == 0)
        abort(); /* never empty */
    if (s->n++ % 2 == 0 && !s->held) {
        s->held = req; /* answered on the next loop turn */
        return;
    }
    cm_httpd_reply(req, 200, "text/plain", cm_httpd_path(req), strlen(cm_httpd_path(req)));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 200000)
        return 0;
    struct event_base *base = event_base_new();
    struct st s = {0};
    const struct cm_httpd_limits lim = {.max_header_bytes = 2048,
                                        .max_body = 4096,
                                        .timeout = 5 * CM_USEC_PER_SEC,
                                        .max_connections = 4};
    struct cm_httpd *h = cm_httpd_create(base, &lim, on_req, &s);
    int fds[2];
    if (!base || !h || socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds) < 0)
        abort();
    if (cm_httpd_adopt(h, fds[0]) < 0)
        abort();
    size_t off = 0;
    char first[16];
    size_t got = 0;
    for (int i = 0; i < 2000; i++) {
        if (off < size) {
            ssize_t n = write(fds[1], data + off, size - off);
            if (n > 0)
                off += (size_t)n;
            if (off == size)
                shutdown(fds[1], SHUT_WR);
        } else if (size == 0 && i == 0) {
            shutdown(fds[1], SHUT_WR);
        }
        event_base_loop(base, EVLOOP_NONBLOCK);
        if (s.held) {
            struct cm_httpd_req *r = s.held;
            s.held = NULL;
            cm_httpd_reply_error(r, 503, "overloaded", "later");
        }
        char buf[65536];
        ssize_t n;
        while ((n = read(fds[1], buf, sizeof(buf))) > 0) {
            if (got < sizeof(first)) {
                size_t k = (size_t)n < sizeof(first) - got ? (size_t)n : sizeof(first) - got;
                memcpy(first + got, buf, k);
                got += k;
            }
        }
        if (cm_httpd_connections(h) == 0 && n == 0)
            break;
    }
    if (got >= 9 && memcmp(first, "HTTP/1.1 ", 9) != 0)
        abort(); /* something other than an answer was written */
    if (off == size && cm_httpd_connections(h) != 0)
        abort(); /* the input ended: the connection must have closed */
    cm_httpd_destroy(h);
    if (s.held)
        cm_httpd_reply(s.held, 200, NULL, NULL, 0); /* owed after destroy(): only frees */
    close(fds[1]);
    event_base_free(base);
    return 0;
}
